"""patch_ratio_pool: SPMix per-patch mixing ratios from two saliency maps."""
from __future__ import annotations

import math

import torch

from .. import _backend
from .. import reference as _ref
from .._validation import check_same, check_tensor, is_int, is_real
from . import _recycle

OP = "patch_ratio_pool"


def patch_ratio_pool(s_a: torch.Tensor, s_b: torch.Tensor, patch: int, alpha: float = 0.8, *,
                     pad: bool = False, expand: bool = False, backend: str = "auto"):
    """SPMix patch-wise mixing ratios (Wei et al.): r = min(alpha, max(level_a, level_b)).

    Per image, ``p = avg_pool(s, patch)``, ``p = (p - min) / (max - min)`` (0 for a constant map),
    ``level = p / 2 + 0.5`` in [0.5, 1]; the ratio of each patch is
    ``min(alpha, max(level_a, level_b))`` in [0.5, alpha].

    Args:
        s_a, s_b: saliency maps ``Tensor[B, 1, H, W]`` (float), e.g. of the tail and head images.
        patch: patch side in pixels (>= 1). H and W must be multiples of it unless ``pad``.
        alpha: the ratio cap, in (0, 1] (default 0.8, the paper's).
        pad: allow H, W not divisible by ``patch``: edge patches average only their pixels.
        expand: also return the nearest-upsampled pixel map ``Tensor[B, 1, H, W]``. On the
            CPU a map of 4 MB or more is written into a buffer kept from an earlier call once
            nothing references that one any more (see ``adm_mix``'s ``out``;
            ``medmix_ops.ops.clear_output_cache()`` drops the kept buffers).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``(ratios [B, ceil(H/patch), ceil(W/patch)], mean_ratio [B])`` float32, plus the pixel
        map with ``expand=True``.

    Example:
        >>> r, mean = patch_ratio_pool(s_tail, s_head, patch=16)          # [B, 14, 14], [B]
        >>> r, mean, pix = patch_ratio_pool(s_tail, s_head, 16, expand=True)
    """
    for name, s in (("s_a", s_a), ("s_b", s_b)):
        check_tensor(OP, name, s, ndim=4, layout="[B, 1, H, W]")
        if s.shape[1] != 1 or min(s.shape) < 1:
            raise ValueError(f"{OP}: {name} must be a saliency map [B, 1, H, W] with B, H, W >= 1, "
                             f"got shape {list(s.shape)}")
        if not s.dtype.is_floating_point:
            raise TypeError(f"{OP}: {name} must be floating, got {s.dtype}")
    check_same(OP, "s_a", s_a, "s_b", s_b, dtype=False)
    if not is_int(patch):
        raise TypeError(f"{OP}: patch must be an int, got {type(patch).__name__}")
    patch = int(patch)
    if patch < 1:
        raise ValueError(f"{OP}: patch must be >= 1, got {patch}")
    if not is_real(alpha):
        raise TypeError(f"{OP}: alpha must be a number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0 < alpha <= 1):
        raise ValueError(f"{OP}: alpha must be in (0, 1], got {alpha}")
    for name, flag in (("pad", pad), ("expand", expand)):
        if not isinstance(flag, bool):
            raise TypeError(f"{OP}: {name} must be a bool, got {type(flag).__name__}")
    H, W = s_a.shape[-2:]
    if not pad and (H % patch or W % patch):
        raise ValueError(f"{OP}: H, W = {H}, {W} must be multiples of patch = {patch} "
                         "(or pass pad=True to average partial edge patches)")

    which = _backend.resolve(OP, backend, s_a.device)
    if which == "reference":
        ratios, mean = _ref.patch_ratio_pool(s_a, s_b, patch, float(alpha), pad)
    else:
        ns = _backend.ops_namespace(which)
        pooled, minmax = ns.patch_pool(s_a.detach().float(), s_b.detach().float(), patch, pad)
        ratios, mean = ns.patch_ratio(pooled, minmax, float(alpha))
    if expand:
        return ratios, mean, expand_ratios(ratios, patch, H, W)
    return ratios, mean


def expand_ratios(ratios: torch.Tensor, patch: int, H: int, W: int) -> torch.Tensor:
    """``reference.expand_ratios``'s pixel map ``[B, 1, H, W]`` of ``ratios [B, gh, gw]``
    (gh = ceil(H / patch), gw = ceil(W / patch)), written once: each patch row's W values
    first (a [B, gh, W] band, 1/patch of the map), then the bands repeated down their rows
    into the output. The reference's one copy of a 6-d broadcast view, then a crop, ran at
    2/3 of a plain clone's speed on the CPU; a fresh 6.4 MB output (32 x 224^2) was faulted
    in page by page on top, which the recycled output avoids."""
    B, gh, gw = ratios.shape
    out = _recycle.recycled_empty((B, 1, H, W), ratios.dtype, torch.contiguous_format, ratios.device)
    if out is None:
        out = torch.empty((B, 1, H, W), dtype=ratios.dtype, device=ratios.device)
    bands = ratios[..., None].expand(B, gh, gw, patch).reshape(B, gh, gw * patch)[..., :W]
    o = out.view(B, H, W)
    full = H // patch  # patch rows wholly inside the map; a partial last one (pad) below
    o[:, :full * patch].view(B, full, patch, W).copy_(bands[:, :full, None].expand(B, full, patch, W))
    if full < gh:
        o[:, full * patch:].copy_(bands[:, full:, :].expand(B, H - full * patch, W))
    return out


@torch.library.custom_op("medmix_triton::patch_pool", mutates_args=())
def _patch_pool_triton(s_a: torch.Tensor, s_b: torch.Tensor, patch: int,
                       pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import patch_ratio_pool as tk

    return tk.patch_pool(s_a, s_b, patch, pad)


@torch.library.custom_op("medmix_triton::patch_ratio", mutates_args=())
def _patch_ratio_triton(pooled: torch.Tensor, minmax: torch.Tensor,
                        alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import patch_ratio_pool as tk

    return tk.patch_ratio(pooled, minmax, alpha)


def _fake_patch_pool(s_a, s_b, patch, pad):
    B, _, H, W = s_a.shape
    gh, gw = -(-H // patch), -(-W // patch)
    return s_a.new_empty((B, 2, gh, gw)), s_a.new_empty((B, gh, 4))


def _fake_patch_ratio(pooled, minmax, alpha):
    B, _, gh, gw = pooled.shape
    return pooled.new_empty((B, gh, gw)), pooled.new_empty((B,))


_backend.register_fake_both("patch_pool", _fake_patch_pool)
_backend.register_fake_both("patch_ratio", _fake_patch_ratio)
