"""Argument checks shared by the public ops: each error names the argument, what was expected
and what was received, and is a ValueError (bad value/shape) or TypeError (bad type/dtype)."""
from __future__ import annotations

import numbers

import numpy as np
import torch

from ._transfer import to_device

IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)


def is_real(v) -> bool:
    """A real number: int, float or a numpy scalar (``np.float32``, ``np.int64``: what indexing
    an array gives), never a bool."""
    return type(v) is float or type(v) is int or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def is_int(v) -> bool:
    """An integer: int or a numpy integer scalar, never a bool."""
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(op: str, name: str, x, *, ndim: int | None = None, layout: str = "") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(
            f"{op}: {name} must be {ndim}-D {layout}".rstrip()
            + f", got a {x.dim()}-D tensor of shape {_shape(x)}"
            + (VOLUME_HINT if ndim == 4 and x.dim() == 5 else "")
        )


# 3-D volumes are rejected, not guessed at: every op and policy works on 2-D images.
VOLUME_HINT = ("; 3-D volumes [B, C, D, H, W] are not supported: mix slice by slice by folding D into "
               "the batch, x.transpose(1, 2).flatten(0, 1)")


def check_image(op: str, name: str, x, dtypes=IMAGE_DTYPES) -> None:
    """A [B, C, H, W] image batch with B, C, H, W >= 1 and a supported dtype."""
    check_tensor(op, name, x, ndim=4, layout="[B, C, H, W]")
    if x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype in ({allowed}), got {x.dtype}")
    if min(x.shape) < 1:
        raise ValueError(f"{op}: {name} must have B, C, H, W >= 1, got shape {_shape(x)}")


def check_same(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor,
               *, shape: bool = True, dtype: bool = True) -> None:
    if a.device != b.device:
        raise ValueError(f"{op}: {name_a} and {name_b} must be on one device, got {a.device} and {b.device}")
    if shape and a.shape != b.shape:
        raise ValueError(f"{op}: {name_a} and {name_b} must have one shape, got {_shape(a)} and {_shape(b)}")
    if dtype and a.dtype != b.dtype:
        raise TypeError(f"{op}: {name_a} and {name_b} must have one dtype, got {a.dtype} and {b.dtype}")


def check_out(op: str, out, shape, dtype: torch.dtype, device, reads: dict, *, what: str = "") -> None:
    """``out=``: a tensor of ``shape``, ``dtype`` and ``device`` (any strides) that records no
    gradient, has no repeated elements (an expanded view) and shares no memory with any tensor
    in ``reads`` (name -> tensor): the kernels read those while they write ``out``."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{op}: out must be a tensor {list(shape)}, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != torch.device(device):
        raise ValueError(f"{op}: out must be {list(shape)} {dtype} on {device}{what}, got "
                         f"{list(out.shape)} {out.dtype} on {out.device}")
    if out.requires_grad:
        raise ValueError(f"{op}: out must not require grad (out= records no gradient)")
    if any(st == 0 and n > 1 for st, n in zip(out.stride(), out.shape)):
        raise ValueError(f"{op}: out must not be an expanded view (stride 0), got strides {list(out.stride())}")
    if torch.compiler.is_compiling():  # storage pointers are not traceable; the C++ ops check it too
        return
    ptr = out.untyped_storage().data_ptr()
    shared = [name for name, t in reads.items() if t is not None and t.untyped_storage().data_ptr() == ptr]
    if shared:
        names = list(reads)
        listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise ValueError(f"{op}: out must not share memory with {listed} (the kernel reads "
                         f"{' and '.join(shared)} while it writes out)")


def check_mask(op: str, name: str, mask, images: torch.Tensor) -> None:
    """A [B, 1, H, W] float or bool mask matching images [B, C, H, W] in B, H, W and device."""
    check_tensor(op, name, mask, ndim=4, layout="[B, 1, H, W]")
    B, _, H, W = images.shape
    if tuple(mask.shape) != (B, 1, H, W):
        raise ValueError(
            f"{op}: {name} must have shape [B, 1, H, W] = [{B}, 1, {H}, {W}], got {_shape(mask)}"
        )
    if not (mask.dtype.is_floating_point or mask.dtype == torch.bool):
        raise TypeError(f"{op}: {name} must be a floating or bool tensor, got {mask.dtype}")
    if mask.device != images.device:
        raise ValueError(f"{op}: {name} must be on {images.device} like the images, got {mask.device}")


def check_mask_values(op: str, name: str, mask: torch.Tensor) -> None:
    """A float mask's values lie in [0, 1] (no NaN): a mask of 3 would extrapolate the blend
    (3a - 2b) and a NaN would spread through the blur, both silently. One min/max pass (~25 us
    at 32 x 64^2 on 2 CPU cores); one host sync for a CUDA mask. Skipped inside torch.compile,
    where values are unknown at trace time; bool masks need no check."""
    if mask.dtype == torch.bool or mask.device.type == "meta" or torch.compiler.is_compiling():
        return
    lo, hi = torch.aminmax(mask.detach())  # NaN propagates into both, failing the test below
    if not bool((lo >= 0) & (hi <= 1)):
        nan = int(mask.detach().isnan().sum())
        got = (f"{nan} NaN value{'s' if nan > 1 else ''}" if nan
               else f"min {float(lo):g}, max {float(hi):g}")
        raise ValueError(f"{op}: {name} values must lie in [0, 1] (1 selects the first image), got {got}")


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_values(op: str, name: str, value, batch: int, device, lo: float, hi: float, *,
                      validate: bool = True) -> tuple[torch.Tensor, float]:
    """A float, a sequence of `batch` numbers, a numpy array or a 0-D / [batch] floating tensor -> (float32
    [batch] tensor on device, the largest value as a host float). Values must be finite and in
    [lo, hi]. Floats, sequences and CPU tensors are checked for free; a CUDA tensor costs one
    host sync, skipped with validate=False (its largest value is then reported as hi), and
    skipped inside torch.compile."""
    import math

    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a float, a sequence or a tensor, got bool")
    if isinstance(value, np.ndarray):  # a numpy array of numbers: as a CPU tensor (free to check)
        if value.dtype.kind not in "iuf":
            raise TypeError(f"{op}: {name} array must hold numbers, got dtype {value.dtype}")
        value = torch.from_numpy(np.asarray(value, dtype=np.float64))
    if is_real(value):
        v = float(value)
        _check_range(op, name, v, lo, hi)
        return torch.full((batch,), v, dtype=torch.float32, device=device), v
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ValueError(f"{op}: {name} must have one value per sample ({batch}), got {len(value)}")
        values = []
        for i, v in enumerate(value):
            if not is_real(v):
                raise TypeError(f"{op}: {name}[{i}] must be a number, got {type(v).__name__}")
            _check_range(op, f"{name}[{i}]", float(v), lo, hi)
            values.append(float(v))
        return to_device(torch.tensor(values, dtype=torch.float32), device), max(values)
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} tensor must be floating, got {value.dtype}")
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(f"{op}: {name} tensor must have shape [B] = [{batch}] (or be 0-D), "
                             f"got {list(value.shape)}")
        v32 = to_device(value.detach(), device, torch.float32).contiguous()
        # Inside torch.compile the values are not known at trace time: no host check there.
        if torch.compiler.is_compiling() or (not validate and value.device.type != "cpu"):
            return v32, hi
        host = value.detach().to(dtype=torch.float64).cpu()  # one sync for a GPU tensor
        bad = ~torch.isfinite(host) | (host < lo) | (host > hi)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{op}: {name} must be finite and in [{lo}, {hi}], got "
                             f"{name}[{i}] = {float(host[i])}")
        return v32, float(host.max())
    raise TypeError(f"{op}: {name} must be a float, a sequence or a tensor, got {type(value).__name__}")


def _check_range(op: str, name: str, v: float, lo: float, hi: float) -> None:
    import math

    if not math.isfinite(v) or v < lo or v > hi:
        raise ValueError(f"{op}: {name} must be finite and in [{lo}, {hi}], got {v}")


def check_perm(op: str, perm, batch: int, device, *, validate: bool = True, name: str = "perm",
               upper: int | None = None) -> torch.Tensor:
    """A partner permutation / index vector: integer [batch] with values in [0, upper) (upper
    defaults to batch) -> int64 on device. A CUDA tensor's values cost one host sync to check
    (validate=False skips it; the kernels still clamp indices, so memory stays safe)."""
    upper = batch if upper is None else upper
    if not isinstance(perm, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor of indices, got {type(perm).__name__}")
    if perm.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{op}: {name} must be an integer tensor, got {perm.dtype}")
    if perm.dim() != 1 or perm.shape[0] != batch:
        raise ValueError(f"{op}: {name} must have shape [B] = [{batch}], got {list(perm.shape)}")
    # Inside torch.compile the values are unknown at trace time; the kernels clamp indices.
    if not torch.compiler.is_compiling() and (validate or perm.device.type == "cpu"):
        host = perm.detach().cpu()
        bad = (host < 0) | (host >= upper)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{op}: {name} values must be in [0, {upper}), got {name}[{i}] = {int(host[i])}")
    return to_device(perm.detach(), device, torch.int64).contiguous()
