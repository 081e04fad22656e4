"""Pixel spaces: the generators work in [0, 1]; a caller's batch may be uint8 (0..255), float in
[0, 1], or float normalised per channel as ``(x01 - mean) / std`` (timm's data loaders, with
ImageNet's mean and std). ``PixelSpace`` maps a batch into [0, 1] and back, so a translator,
sampler or inpainter trained on [0, 1] images works on any of them."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ._transfer import device_constant
from ._validation import is_real


class PixelSpace:
    """``PixelSpace(mean=None, std=None)``: where a caller's float images live.

    mean, std: per-channel sequences (or one number for every channel) of a normalising loader,
    both or neither; std > 0. Without them float images are taken as [0, 1]. uint8 images are
    always 0..255 (mean / std do not apply to them).
    """

    def __init__(self, mean: float | Sequence[float] | None = None,
                 std: float | Sequence[float] | None = None, *, owner: str = "PixelSpace"):
        if (mean is None) != (std is None):
            raise ValueError(f"{owner}: give mean and std together (a normalising loader's), got "
                             f"mean={mean!r}, std={std!r}")
        self.mean = None if mean is None else self._values(owner, "mean", mean, positive=False)
        self.std = None if std is None else self._values(owner, "std", std, positive=True)
        if self.mean is not None and len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(f"{owner}: mean and std must have one value per channel, got "
                             f"{len(self.mean)} and {len(self.std)}")
        self.owner = owner

    @staticmethod
    def _values(owner, name, v, positive):
        vals = [v] if is_real(v) else v
        try:
            vals = [float(t) for t in vals]
        except (TypeError, ValueError):
            raise TypeError(f"{owner}: {name} must be a number or a sequence of numbers, got {v!r}") from None
        if not vals or any(not math.isfinite(t) or (positive and t <= 0) for t in vals):
            raise ValueError(f"{owner}: {name} must be finite{' and > 0' if positive else ''}, got {v!r}")
        return vals

    def _affine(self, x: torch.Tensor):
        C = x.shape[1]
        for name, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) not in (1, C):
                raise ValueError(f"{self.owner}: {name} has {len(vals)} values, the images have {C} channels")
        # copied to the device once (a per-call copy would be a host sync on a GPU)
        return tuple(device_constant(("pixel_space", name, tuple(vals)), x.device,
                                     lambda vals=vals: torch.tensor(vals, dtype=torch.float32).view(1, -1, 1, 1))
                     for name, vals in (("mean", self.mean), ("std", self.std)))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Images in this space -> float32 in [0, 1] (up to the data's own range)."""
        if x.dtype == torch.uint8:
            return x.float() / 255
        if self.mean is None:
            return x.float()
        mean, std = self._affine(x)
        return x.float() * std + mean

    def from_unit(self, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> this space, in ``like``'s dtype (uint8: rounded and clamped)."""
        if like.dtype == torch.uint8:
            return (u.float() * 255).round().clamp(0, 255).to(torch.uint8)
        if self.mean is not None:
            mean, std = self._affine(u)
            u = (u.float() - mean) / std
        return u.to(like.dtype)
