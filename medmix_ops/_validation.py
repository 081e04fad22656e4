"""Argument checks shared by the public ops: each error names the argument, what was expected
and what was received, and is a ValueError (bad value/shape) or TypeError (bad type/dtype)."""
from __future__ import annotations

import torch

IMAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(op: str, name: str, x, *, ndim: int | None = None, layout: str = "") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(
            f"{op}: {name} must be {ndim}-D {layout}".rstrip()
            + f", got a {x.dim()}-D tensor of shape {_shape(x)}"
        )


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


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32
