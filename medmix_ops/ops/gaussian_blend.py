"""gaussian_blend: Gaussian boundary blending of two image batches through a soft mask."""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import torch

from .. import _backend
from .. import reference as _ref
from .._transfer import to_device
from . import _recycle
from .._validation import (check_image, check_mask, check_mask_values, check_out, check_perm,
                           check_same, opmath_dtype, per_sample_values)

OP = "gaussian_blend"
SigmaLike = Union[float, int, Sequence[float], torch.Tensor]

# Bounds the work per pixel (O(radius)) and the CUDA kernel's shared memory.
MAX_SIGMA = 1000.0


def gaussian_blend(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, sigma: SigmaLike, *,
                   b_index: torch.Tensor | None = None, return_alpha: bool = False,
                   out: torch.Tensor | None = None, backend: str = "auto", validate: bool = True):
    """Blends ``a`` into ``b`` through a Gaussian-softened mask, in one fused pass.

    ``alpha = GaussianBlur(mask, sigma)``, ``out = alpha * a + (1 - alpha) * b``,
    ``lam = mean(alpha)`` per sample. The blur is separable with radius ``ceil(3 * sigma)``,
    weights ``exp(-t^2 / (2 sigma^2))`` normalised to 1 and a reflect border that does not repeat
    the edge pixel (as ``F.pad(mode="reflect")``, extended periodically when the radius exceeds
    the image). ``sigma = 0`` means the hard mask: pixels are copied bit for bit.

    Args:
        a, b: ``Tensor[B, C, H, W]``, float32/float16/bfloat16/float64 or uint8 (uint8 output is
            rounded half to even); contiguous, channels_last or any strides; one dtype and device.
        mask: ``Tensor[B, 1, H, W]``, floating or bool, values in [0, 1] (1 selects ``a``).
            Treated as a constant: no gradient flows to it.
        sigma: blur standard deviation in pixels, >= 0: a float for the batch, or per sample a
            ``[B]`` tensor or sequence. A CPU tensor or a sequence costs nothing; a CUDA tensor
            costs one host sync (its values size the kernel's halo and are validated).
        b_index: optional partner rows, integer ``[B]``: sample i is blended with
            ``b[b_index[i]]``, gathered inside the kernel (no ``b[index]`` copy). ``b`` may then
            have any number of rows, e.g. ``gaussian_blend(x, x, m, s, b_index=perm)`` mixes a
            batch with a permutation of itself. Gradients to ``b`` are summed per row.
        return_alpha: also return the blurred mask ``alpha`` as ``Tensor[B, 1, H, W]``.
        out: optional ``Tensor[B, C, H, W]`` of a's dtype and device (any strides) to write the
            blend into, e.g. one buffer reused across batches (a fresh large CPU output's
            first-touch page faults can cost as much as the blend), or a slice of a bigger
            batch. It must not share memory with a, b or mask, and records no gradient: with
            ``out``, a and b must not require grad while grad mode is on. The returned ``out``
            is this tensor.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.
        validate: check the values of ``mask`` (in [0, 1], no NaN: a min/max pass) and of
            ``b_index`` (in range); on a GPU each costs one host sync. False skips the mask
            check on any device and the ``b_index`` check on a GPU: for masks the caller built
            itself. The kernels clamp indices, so memory stays safe either way, but a mask
            outside [0, 1] then extrapolates the blend.

    Returns:
        ``(out, lam)``, or ``(out, lam, alpha)`` with ``return_alpha``: ``out`` like ``a``
        (same dtype and memory format), ``lam`` ``Tensor[B]`` and ``alpha`` in float32 (float64
        for float64 images). Math is in float32 (float64 for float64 images). Without
        ``out=``, a CPU ``out`` of 4 MB or more made without a gradient to record is a view of
        a buffer kept from an earlier call once nothing referenced that one any more (a fresh
        one is faulted in page by page on every call); ``medmix_ops.ops.clear_output_cache()``
        drops them.

    Differentiable in ``a`` and ``b`` with a fused backward; works under
    ``torch.compile(fullgraph=True)`` (give sigma as a float or a sequence there).

    Example:
        >>> a, b = torch.rand(8, 3, 64, 64), torch.rand(8, 3, 64, 64)
        >>> mask = torch.zeros(8, 1, 64, 64); mask[..., 16:48, 16:48] = 1
        >>> out, lam = gaussian_blend(a, b, mask, sigma=3.0)
        >>> out.shape, lam.shape
        (torch.Size([8, 3, 64, 64]), torch.Size([8]))
    """
    check_image(OP, "a", a)
    check_image(OP, "b", b)
    if b_index is None:
        check_same(OP, "a", a, "b", b)
    else:
        check_same(OP, "a", a, "b", b, shape=False)
        if b.shape[1:] != a.shape[1:]:
            raise ValueError(f"{OP}: b must have a's C, H, W {list(a.shape[1:])} (any number of rows "
                             f"with b_index), got {list(b.shape)}")
        b_index = check_perm(OP, b_index, a.shape[0], a.device, validate=validate,
                             name="b_index", upper=b.shape[0])
    check_mask(OP, "mask", mask, a)
    if validate:
        check_mask_values(OP, "mask", mask)
    if not isinstance(return_alpha, bool):
        raise TypeError(f"{OP}: return_alpha must be a bool, got {type(return_alpha).__name__}")
    if out is not None:
        check_out(OP, out, a.shape, a.dtype, a.device, {"a": a, "b": b, "mask": mask})
        if _records_grad(a, b):
            raise ValueError(f"{OP}: out= records no gradient, but a or b requires grad; call it "
                             f"under torch.no_grad() or leave out unset")
    sigma_t, max_radius = sigma_to_tensor(OP, sigma, a.shape[0], a.device)
    out, lam, alpha = _run(a, b, mask, sigma_t, max_radius, return_alpha, b_index, backend, out)
    return (out, lam, alpha) if return_alpha else (out, lam)


def _run(a, b, mask, sigma_t, max_radius, return_alpha, b_index, backend, out=None):
    acc = opmath_dtype(a.dtype)
    if mask.dtype != acc:
        mask = mask.to(acc)
    which = _backend.resolve(OP, backend, a.device)
    if which == "reference":
        res = _ref.gaussian_blend(a, b, mask, sigma_t, max_radius, return_alpha, b_index)
        return res if out is None else (out.copy_(res[0]), *res[1:])
    ns = _backend.ops_namespace(which)
    if out is None and which == "cpu" and not _records_grad(a, b):
        out = _recycled_output(a)
    if out is not None:  # (the caller's: checked, no gradient recorded; or a recycled one)
        lam, alpha = ns.gaussian_blend_out(a, b, mask, sigma_t, max_radius, return_alpha, b_index, out)
        return out, lam, alpha
    # "cpu" / "cuda": the C++ op dispatches on the device itself
    return ns.gaussian_blend(a, b, mask, sigma_t, max_radius, return_alpha, b_index)


def _records_grad(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Autograd would record this blend: the output must then be a fresh tensor of the op."""
    return (a.requires_grad or b.requires_grad) and torch.is_grad_enabled()


def _recycled_output(a: torch.Tensor) -> torch.Tensor | None:
    """A kept large CPU output for a blend of ``a`` (``_recycle``: a fresh one of 4 MB or
    more is faulted in page by page on every call), or None where the op allocates. Only for
    contiguous and channels_last images: the op's own output follows any other dense
    layout of ``a``, which the kept buffers do not."""
    layout = _recycle.output_format(a)
    if not a.is_contiguous(memory_format=layout):
        return None
    return _recycle.recycled_empty(a.shape, a.dtype, layout, a.device)


def blend_trusted(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, sigma: float,
                  b_index: torch.Tensor | None, backend: str = "auto") -> torch.Tensor:
    """``gaussian_blend(...)[0]`` for arguments the caller built itself (the mixing policies):
    no validation, one sigma for the batch. Argument checks cost more than the fused kernel on
    a small batch (~0.1 ms at 32 x 3 x 64^2 on 2 CPU cores); user input goes through
    ``gaussian_blend``, and the C++ kernels keep their own memory-safety checks.

    Without a gradient to record, the call goes below the autograd key straight to the
    kernel: the Python autograd wrapper of the op costs ~25 us a call on 2 CPU cores."""
    max_radius = math.ceil(3.0 * sigma * (1.0 + 2.0 ** -20))
    if b_index is not None and (b_index.dtype != torch.int64
                                or not (b_index.is_cpu and a.is_cpu) and b_index.device != a.device):
        b_index = to_device(b_index, a.device, torch.int64)
    if not (_records_grad(a, b) or torch.compiler.is_compiling() or _BELOW_AUTOGRAD is None):
        device = a.device
        which = _backend.resolve(OP, backend, device)
        if which != "reference" and mask.dtype == opmath_dtype(a.dtype):
            op = _backend.ops_namespace(which)
            sigma_t = _constant_sigma(a.shape[0], float(sigma), device)
            out = _recycled_output(a) if which == "cpu" else None
            with _BELOW_AUTOGRAD():
                if out is not None:
                    op.gaussian_blend_out.default(a, b, mask, sigma_t, max_radius, False, b_index, out)
                    return out
                return op.gaussian_blend.default(a, b, mask, sigma_t, max_radius, False, b_index)[0]
    sigma_t = torch.full((a.shape[0],), float(sigma), dtype=torch.float32, device=a.device)
    return _run(a, b, mask, sigma_t, max_radius, False, b_index, backend)[0]


# A private torch guard (present in torch 2.11 to 2.14): should a later torch drop it,
# blend_trusted takes the public path, slower by the autograd wrapper but the same result.
_BELOW_AUTOGRAD = getattr(torch._C, "_AutoDispatchBelowAutograd", None)


@functools.lru_cache(maxsize=64)
def _constant_sigma(batch: int, sigma: float, device: torch.device) -> torch.Tensor:
    """One sigma for the whole batch, made once per (batch, sigma, device): the kernels only
    read it, and a fresh torch.full per call was one more op on a policy's hot path."""
    return torch.full((batch,), sigma, dtype=torch.float32, device=device)


def sigma_to_tensor(op: str, sigma: SigmaLike, batch: int, device: torch.device,
                    name: str = "sigma"):
    """Validates sigma and returns (float32 [batch] tensor on device, max radius). The radius
    bound comes from host values: free for floats, sequences and CPU tensors."""
    sigma_t, largest = per_sample_values(op, name, sigma, batch, device, 0.0, MAX_SIGMA)
    # Upper bound of ceil(3 s) for s rounded to float32 (the kernels compute the exact one).
    return sigma_t, math.ceil(3.0 * largest * (1.0 + 2.0 ** -20))


# ---- torch.library registration: the Triton op, fake kernels and autograd ---------------------

@torch.library.custom_op("medmix_triton::gaussian_blend", mutates_args=())
def _gaussian_blend_triton(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                           sigma: torch.Tensor, max_radius: int, return_alpha: bool,
                           b_index: Optional[torch.Tensor] = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..triton import gaussian_blend as tk

    return tk.gaussian_blend(a, b, mask, sigma, max_radius, return_alpha, b_index)


@torch.library.custom_op("medmix_triton::gaussian_blend_out", mutates_args=("out",))
def _gaussian_blend_out_triton(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                               sigma: torch.Tensor, max_radius: int, return_alpha: bool,
                               b_index: Optional[torch.Tensor], out: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import gaussian_blend as tk

    return tk.gaussian_blend(a, b, mask, sigma, max_radius, return_alpha, b_index, out)[1:]


@torch.library.custom_op("medmix_triton::gaussian_blend_backward", mutates_args=())
def _gaussian_blend_backward_triton(grad_out: torch.Tensor, mask: torch.Tensor,
                                    sigma: torch.Tensor,
                                    max_radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import gaussian_blend as tk

    return tk.gaussian_blend_backward(grad_out, mask, sigma, max_radius)


def _fake_forward(a, b, mask, sigma, max_radius, return_alpha, b_index=None):
    torch._check(a.dim() == 4 and a.shape[1:] == b.shape[1:], lambda: "a and b must be [B, C, H, W]")
    B, _, H, W = a.shape
    acc = opmath_dtype(a.dtype)
    alpha = a.new_empty((B, 1, H, W) if return_alpha else (0,), dtype=acc)
    return torch.empty_like(a), a.new_empty((B,), dtype=acc), alpha


def _fake_backward(grad_out, mask, sigma, max_radius):
    return torch.empty_like(grad_out), torch.empty_like(grad_out)


def _register(namespace: str) -> None:
    """Fake kernels and autograd for <namespace>::gaussian_blend(_backward). The backward of
    gaussian_blend_backward is gaussian_blend itself (it is linear in grad_out), so any order of
    derivative stays fused."""
    fwd = f"{namespace}::gaussian_blend"
    bwd = f"{namespace}::gaussian_blend_backward"
    ops = getattr(torch.ops, namespace)
    torch.library.register_fake(fwd, _fake_forward)
    torch.library.register_fake(bwd, _fake_backward)

    def setup_forward(ctx, inputs, output):
        _, b, mask, sigma, max_radius, _, b_index = inputs
        ctx.save_for_backward(mask, sigma, b_index)
        ctx.max_radius = max_radius
        ctx.b_rows = b.shape[0]

    def backward_forward(ctx, grad_out, grad_lam, grad_alpha):
        mask, sigma, b_index = ctx.saved_tensors
        grad_a, grad_b = ops.gaussian_blend_backward(grad_out, mask, sigma, ctx.max_radius)
        if b_index is not None:  # partner rows may repeat: their gradients add up
            grad_b = grad_b.new_zeros((ctx.b_rows, *grad_b.shape[1:])).index_add_(0, b_index, grad_b)
        return grad_a, grad_b, None, None, None, None, None

    def setup_backward(ctx, inputs, output):
        _, mask, sigma, max_radius = inputs
        ctx.save_for_backward(mask, sigma)
        ctx.max_radius = max_radius

    def backward_backward(ctx, grad_grad_a, grad_grad_b):
        mask, sigma = ctx.saved_tensors
        grad_grad_out, _, _ = ops.gaussian_blend(grad_grad_a, grad_grad_b, mask, sigma,
                                                 ctx.max_radius, False, None)
        return grad_grad_out, None, None, None

    torch.library.register_autograd(fwd, backward_forward, setup_context=setup_forward)
    torch.library.register_autograd(bwd, backward_backward, setup_context=setup_backward)


def _fake_out(a, b, mask, sigma, max_radius, return_alpha, b_index, out):
    _, lam, alpha = _fake_forward(a, b, mask, sigma, max_radius, return_alpha, b_index)
    return lam, alpha


_register("medmix_triton")
if _backend.extension_loaded():
    _register("medmix")
_backend.register_fake_both("gaussian_blend_out", _fake_out)
