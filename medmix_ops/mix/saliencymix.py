"""SaliencyMix (Uddin et al. 2021): the CutMix box is centred on the partner's saliency peak."""
from __future__ import annotations

import torch

from ..ops import gaussian_blend, saliency
from ..ops.gaussian_blend import blend_trusted
from ._base import MixPolicy
from .cutmix import box_mask, outside_box


class SaliencyMix(MixPolicy):
    """``SaliencyMix(num_classes, alpha=1.0, method="fine_grained", per_sample=False, ...)``.

    lam ~ Beta(alpha, alpha); a box of side sqrt(1 - lam) H x sqrt(1 - lam) W centred at the
    argmax of the partner's saliency map (clipped) is pasted from the partner; the label weight
    of the anchor is the kept area.

    - ``per_sample=False`` reproduces the official code: one saliency map (of the first
      partner image) and one box for the whole batch.
    - ``per_sample=True`` computes every partner's map in one batched call and places one box
      per sample (lam per sample with ``mode="elem"``).

    ``method``: any saliency method for images (``"fine_grained"`` as the official code, or
    ``"spectral_residual"``). Everything after lam is drawn stays on the device.
    """

    name = "saliencymix"

    def __init__(self, num_classes: int, *, method: str = "fine_grained", per_sample: bool = False,
                 **kwargs):
        super().__init__(num_classes, **kwargs)
        if method not in ("fine_grained", "spectral_residual"):
            raise ValueError(f"SaliencyMix: method must be 'fine_grained' or 'spectral_residual', got {method!r}")
        self.method = method
        self.per_sample = bool(per_sample)

    def _sample(self, B, labels, rng, x, lam=None):
        return dict(perm=self.sample_partners(B, labels, rng), lam=self.sample_lam(B, rng, lam))

    def _mix(self, x, targets, labels, p):
        B, _, H, W = x.shape
        dev = x.device
        perm = p["perm"].to(dev)
        # the partners' maps: all images' maps indexed by perm (per_sample), or the first
        # partner's alone (the official code's single map)
        if self.per_sample:
            s = saliency(x, self.method, backend=self.backend).index_select(0, perm)
        else:
            s = saliency(x.index_select(0, perm[:1]), self.method, backend=self.backend)
        peak = s.flatten(1).argmax(dim=1)  # on the device: no sync
        cy, cx = (peak // W).expand(B), (peak % W).expand(B)
        ratio = torch.sqrt(1.0 - p["lam"]).to(dev)
        cut_h, cut_w = (H * ratio).long(), (W * ratio).long()
        boxes = torch.stack([(cy - cut_h // 2).clamp(0, H), (cy + cut_h // 2).clamp(0, H),
                             (cx - cut_w // 2).clamp(0, W), (cx + cut_w // 2).clamp(0, W)], dim=1)
        area = ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).float()
        lam = 1.0 - area / (H * W)
        a = torch.arange(B)
        if self.per_sample:
            w = 1.0 - box_mask(boxes, H, W, dev)
            out, _ = gaussian_blend(x, x, w, 0.0, b_index=perm, backend=self.backend, validate=False)
        else:  # one box (the official code), broadcast over the batch (one small host read)
            w = outside_box(boxes[0].tolist(), H, W, dev).expand(B, 1, H, W)
            out = blend_trusted(x, x, w, 0.0, perm, self.backend)
        return dict(x=out, y=self.mix_targets(targets, a, p["perm"], lam), index_a=a,
                    index_b=p["perm"], weight_a=w, lam=lam, hard=True, boxes=boxes, saliency=s)
