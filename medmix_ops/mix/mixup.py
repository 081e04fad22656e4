"""Mixup (Zhang et al. 2018): x = lam x_a + (1 - lam) x_b, the same lam for the targets."""
from __future__ import annotations

import numpy as np
import torch

from .._transfer import to_device
from ..ops.gaussian_blend import blend_trusted
from ._base import MixPolicy


class Mixup(MixPolicy):
    """``Mixup(num_classes, alpha=1.0, ...)``: lam ~ Beta(alpha, alpha) per batch (or per sample
    with ``mode="elem"``). With ``partner="flip"`` and the same lam its images and soft targets
    equal timm's ``Mixup(mixup_alpha=alpha, cutmix_alpha=0)``. ``policy(x, y, lam=0.3)`` forces
    lam.

    >>> mix = Mixup(num_classes=4, alpha=0.4)
    >>> x_mix, y_soft = mix(images, labels)
    """

    name = "mixup"

    def _sample(self, B, labels, rng, x, lam=None):
        # (_uniform: one drawn lam for the batch, internal, not kept in `last`)
        return dict(perm=self.sample_partners(B, labels, rng), lam=self.sample_lam(B, rng, lam),
                    _uniform=lam is None and self.mode == "batch")

    def _mix(self, x, targets, labels, p):
        B, _, H, W = x.shape
        perm = p["perm"]
        lam_np = np.asarray(p["lam"], dtype=np.float32)
        lam = torch.from_numpy(lam_np)
        # lam as a per-sample, broadcast (not materialised) mask of the fused blend
        w = to_device(lam, x.device).as_strided((B, 1, H, W), (1, 0, 0, 0))
        # partners are gathered inside the kernel (b_index): no copy of x[perm]
        out = blend_trusted(x, x, w, 0.0, perm, self.backend)
        y = self.mix_targets(targets, None, perm, lam_np, uniform_lam=p.pop("_uniform"))
        return dict(x=out, y=y, index_a=np.arange(B), index_b=perm, weight_a=w, lam=lam, hard=False)
