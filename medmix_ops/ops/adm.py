"""adm_mask / adm_mix: VariMix's absolute difference map, its thresholds and bidirectional mix."""
from __future__ import annotations

import torch

from .. import _backend
from ..reference import adm as _ref
from .._validation import IMAGE_DTYPES, check_image, check_out, check_perm, check_same, per_sample_values
from . import _recycle
from ._recycle import clear_output_cache  # noqa: F401 - public here since the recycling began here

OP = "adm"
MODES = ("lambda", "otsu", "quantile")


def _check_pair(op: str, x, x_hat) -> None:
    check_image(op, "x", x, IMAGE_DTYPES)
    check_image(op, "x_hat", x_hat, IMAGE_DTYPES)
    check_same(op, "x", x, "x_hat", x_hat)


def adm_mask(x: torch.Tensor, x_hat: torch.Tensor, lam=0.5, mode: str = "lambda", *,
             backend: str = "auto", validate: bool = True):
    """Binary mask of where a translation changed the image (VariMix ADM thresholding).

    ``D = |x_hat - x|``; per sample ``m, M`` = min, max of D over C*H*W;
    ``A = mean_c((D - m) / (M - m))`` in [0, 1]; the mask is ``A >= threshold``. ``M == m``
    (e.g. ``x_hat == x``) gives an empty mask, never NaN.

    Args:
        x, x_hat: ``Tensor[B, C, H, W]`` images and their translations (one dtype and shape).
        lam: ``mode="lambda"``: the threshold, a float or per sample ``[B]`` in [0, 1];
            ``mode="quantile"``: the fraction q in [0, 1] of pixels to keep (the top-q of A;
            ties at the threshold are kept); ignored by ``mode="otsu"``.
        mode: ``"lambda"``, ``"otsu"`` (per-sample Otsu threshold of A from a 256-bin
            histogram over [0, 1], computed on device) or ``"quantile"``.
        validate: check a CUDA ``lam`` tensor's values (one host sync); False skips it.

    Returns:
        ``(mask [B, 1, H, W] float32 in {0, 1}, area [B])``, area = mask fraction of H*W.
    """
    _check_pair("adm_mask", x, x_hat)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"adm_mask: mode must be one of {MODES}, got {mode!r}")
    B, _, H, W = x.shape
    lam_t, _ = per_sample_values("adm_mask", "lam", 0.0 if mode == "otsu" else lam, B, x.device,
                                 0.0, 1.0, validate=validate)
    x, x_hat = x.detach(), x_hat.detach()
    which = _backend.resolve(OP, backend, x.device)
    if which == "reference":
        return _ref.adm_mask(x, x_hat, lam_t, mode)
    ns = _backend.ops_namespace(which)
    minmax = ns.adm_minmax(x, x_hat)
    if mode == "lambda":
        thr = lam_t
    elif mode == "otsu":
        thr = _ref.otsu_from_histogram(ns.adm_histogram(x, x_hat, minmax))
    else:
        score, _ = ns.adm_apply(x, x_hat, minmax, lam_t, True)
        thr = quantile_threshold(score, lam_t)
    mask, count = ns.adm_apply(x, x_hat, minmax, thr.float().contiguous(), False)
    return mask, count.sum(dim=1).float() / (H * W)


def quantile_threshold(score: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``reference.adm.quantile_threshold``'s thresholds (the k-th largest score per sample,
    k = round(q H W); 2.0 for k = 0), found by selection on the CPU when every sample has the
    same k (one batched ``kthvalue``: ~12 ms against a full sort's ~60 ms at 32 x 224^2 on
    2 cores); otherwise, and on a GPU, the reference's batched sort. The k-th largest value is
    one value whichever way it is found (NaN counts as the largest, as in the sort)."""
    B = score.shape[0]
    flat = score.reshape(B, -1)
    n = flat.shape[1]
    if score.is_cpu and q.is_cpu and n > 0:
        k = torch.round(q.double() * n).long().clamp(0, n)
        k0 = int(k[0])
        if k0 > 0 and bool((k == k0).all()):
            return flat.kthvalue(n - k0 + 1, dim=1).values
    return _ref.quantile_threshold(score, q)


def adm_mix(x: torch.Tensor, x_hat: torch.Tensor, perm: torch.Tensor, lam, *,
            return_mask: bool = False, stacked: bool = False, out: torch.Tensor | None = None,
            backend: str = "auto", validate: bool = True):
    """VariMix bidirectional mixing through the ADM mask, fused (two kernels, no host sync).

    ``K = adm_mask(x, x_hat, lam)``; ``x_src' = K x + (1 - K) x[perm]``,
    ``x_ref' = K x[perm] + (1 - K) x``, ``lam' = 1 - sum(K) / (H W)`` per sample. ``x[perm]`` is
    gathered inside the kernel. Same results as the public VariMix ``variety_mix`` for the same
    x, x_hat, perm and lam, but per-sample lam' is kept (that code averages it away downstream).

    Args:
        x: images ``Tensor[B, C, H, W]``; x_hat: ``x`` translated toward the partners' style.
        perm: partner index per sample, integer ``[B]`` in [0, B).
        lam: threshold, a float or per sample ``[B]`` in [0, 1].
        return_mask: also return the mask K ``[B, 1, H, W]`` float32 (written by the same pass).
        stacked: return both directions as one ``Tensor[2B, C, H, W]`` (the x_src' rows, then
            the x_ref' rows: the batch VariMix trains on), which the kernels write directly;
            ``torch.cat`` of the two halves would copy them again.
        out: optional ``Tensor[2B, C, H, W]`` of x's dtype and device (any strides) to write
            into, e.g. one buffer reused across batches: a fresh output's first-touch page
            faults cost more than the kernel on a CPU. It must not share memory with x or
            x_hat; the results are views of it. Without ``out``, a CPU output of 4 MB or more
            goes into a buffer kept from an earlier call once nothing references that one any
            more (glibc would map and fault a new one in on every call, 4x the kernel's time at
            32 x 3 x 224^2); ``medmix_ops.ops.clear_output_cache()`` drops the kept buffers.
        validate: check CUDA ``perm`` / ``lam`` values (one host sync each); False skips it
            (the kernels clamp indices, so memory stays safe).

    Returns:
        ``(x_src', x_ref', lam')``: two ``Tensor[B, C, H, W]`` like ``x`` (the two halves of one
        buffer) and float32 ``[B]``; ``(mixed [2B, C, H, W], lam')`` with ``stacked``; the mask
        appended with ``return_mask``. Mask pixels are copied bit for bit. Not differentiable
        (inputs are detached).
    """
    _check_pair("adm_mix", x, x_hat)
    B, _, H, W = x.shape
    perm_t = check_perm("adm_mix", perm, B, x.device, validate=validate)
    lam_t, _ = per_sample_values("adm_mix", "lam", lam, B, x.device, 0.0, 1.0, validate=validate)
    x, x_hat = x.detach(), x_hat.detach()
    for name, flag in (("return_mask", return_mask), ("stacked", stacked)):
        if not isinstance(flag, bool):
            raise TypeError(f"adm_mix: {name} must be a bool, got {type(flag).__name__}")
    if out is not None:
        check_out("adm_mix", out, (2 * B, *x.shape[1:]), x.dtype, x.device, {"x": x, "x_hat": x_hat},
                  what=" (x_src' rows, then x_ref' rows)")
    which = _backend.resolve(OP, backend, x.device)
    if out is None and which == "cpu":
        out = _recycled_output(x)  # (None: the op allocates)
    if which == "reference":
        x_src, x_ref, lam2, mask = _ref.adm_mix(x, x_hat, perm_t, lam_t)
        mixed = torch.cat([x_src, x_ref]) if out is None else torch.cat([x_src, x_ref], out=out)
    else:
        ns = _backend.ops_namespace(which)
        if out is None:
            mixed, count, mask = ns.adm_mix(x, x_hat, perm_t, lam_t, return_mask)
        else:
            count, mask = ns.adm_mix_out(x, x_hat, perm_t, lam_t, return_mask, out)
            mixed = out
        lam2 = 1.0 - count.sum(dim=1).float() / (H * W)
    out = (mixed, lam2) if stacked else (mixed[:B], mixed[B:], lam2)
    return out + (mask,) if return_mask else out


def _recycled_output(x: torch.Tensor) -> torch.Tensor | None:
    """A [2B, C, H, W] output like ``mixed_output(x)`` for a CPU call without ``out=``, from
    the kept large outputs (``_recycle``); None where the op allocates itself."""
    return _recycle.recycled_empty((2 * x.shape[0], *x.shape[1:]), x.dtype, _output_format(x), x.device)


# ---- torch.library registration: Triton ops and fake kernels -----------------------------------

CHUNK = 4096  # pixels per partial result (kAdmChunk in csrc/common/adm.h)
BINS = 256


def _chunks(x):
    return -(-(x.shape[2] * x.shape[3]) // CHUNK)


@torch.library.custom_op("medmix_triton::adm_minmax", mutates_args=())
def _adm_minmax_triton(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    from ..triton import adm as tk

    return tk.adm_minmax(x, x_hat)


@torch.library.custom_op("medmix_triton::adm_apply", mutates_args=())
def _adm_apply_triton(x: torch.Tensor, x_hat: torch.Tensor, minmax: torch.Tensor, thr: torch.Tensor,
                      emit_score: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import adm as tk

    return tk.adm_apply(x, x_hat, minmax, thr, emit_score)


@torch.library.custom_op("medmix_triton::adm_histogram", mutates_args=())
def _adm_histogram_triton(x: torch.Tensor, x_hat: torch.Tensor, minmax: torch.Tensor) -> torch.Tensor:
    from ..triton import adm as tk

    return tk.adm_histogram(x, x_hat, minmax)


@torch.library.custom_op("medmix_triton::adm_mix", mutates_args=())
def _adm_mix_triton(x: torch.Tensor, x_hat: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor,
                    write_mask: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..triton import adm as tk

    return tk.adm_mix(x, x_hat, perm, lam, write_mask)


_backend.register_fake_both(
    "adm_minmax", lambda x, x_hat: x.new_empty((x.shape[0], _chunks(x), 2), dtype=torch.float32))
_backend.register_fake_both(
    "adm_apply", lambda x, x_hat, minmax, thr, emit_score: (
        x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]), dtype=torch.float32),
        x.new_empty((x.shape[0], _chunks(x)), dtype=torch.int32)))
_backend.register_fake_both(
    "adm_histogram", lambda x, x_hat, minmax: x.new_empty((x.shape[0], BINS), dtype=torch.int32))
@torch.library.custom_op("medmix_triton::adm_mix_out", mutates_args=("mixed",))
def _adm_mix_out_triton(x: torch.Tensor, x_hat: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor,
                        write_mask: bool, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import adm as tk

    return tk.adm_mix(x, x_hat, perm, lam, write_mask, mixed)[1:]


def mixed_output(x: torch.Tensor) -> torch.Tensor:
    """adm_mix's [2B, C, H, W] output (x_src' rows, then x_ref' rows), channels_last exactly when
    x is: the rule of adm_mixed_output in csrc/common/adm_args.h (used by the Triton kernel and
    the fake kernel, whose strides opcheck compares with the real ones)."""
    return torch.empty((2 * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device,
                       memory_format=_output_format(x))


_output_format = _recycle.output_format


_backend.register_fake_both(
    "adm_mix", lambda x, x_hat, perm, lam, write_mask: (
        mixed_output(x),
        x.new_empty((x.shape[0], _chunks(x)), dtype=torch.int32),
        x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]) if write_mask else (0,),
                    dtype=torch.float32)))
_backend.register_fake_both(
    "adm_mix_out", lambda x, x_hat, perm, lam, write_mask, mixed: (
        x.new_empty((x.shape[0], _chunks(x)), dtype=torch.int32),
        x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]) if write_mask else (0,),
                    dtype=torch.float32)))
