"""SaliencyMix (Uddin et al. 2021): the CutMix box is centred on the partner's saliency peak."""
from __future__ import annotations

import numpy as np
import torch

from .._transfer import to_device
from ..ops import gaussian_blend, saliency
from ..ops.gaussian_blend import blend_trusted
from ._base import Deferred, MixPolicy
from .cutmix import anchor_weight, boxes_around


class SaliencyMix(MixPolicy):
    """``SaliencyMix(num_classes, alpha=1.0, method="fine_grained", per_sample=False, ...)``.

    lam ~ Beta(alpha, alpha); a box of side sqrt(1 - lam) H x sqrt(1 - lam) W centred at the
    argmax of the partner's saliency map (clipped) is pasted from the partner; the label weight
    of the anchor is the kept area.

    - ``per_sample=False`` reproduces the official code: one saliency map (of the first
      partner image) and one box for the whole batch; with ``mode="elem"`` (lam per sample)
      each row's box has its own size around that one peak. Its peak is read to the host:
      one device sync per batch on a GPU.
    - ``per_sample=True`` computes every partner's map in one batched call and places one box
      per sample (lam per sample with ``mode="elem"``); everything after lam is drawn stays on
      the device, with no sync.

    ``method``: any saliency method for images (``"fine_grained"`` as the official code, or
    ``"spectral_residual"``).
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
        perm = to_device(p["perm"], dev)
        a = torch.arange(B)
        if not self.per_sample:
            return self._mix_one_map(x, targets, p, perm, a)
        # every partner's map in one batched call, a box per sample around its peak, all on
        # the device (no sync)
        s = saliency(x, self.method, backend=self.backend)
        # each map's peak, then the partners' peaks: a [B] gather instead of the maps' (a batch
        # of maps copied per call; `last` makes the partner-ordered maps when read)
        peak = s.flatten(1).argmax(dim=1).index_select(0, perm)
        cy, cx = peak // W, peak % W
        ratio = to_device(torch.from_numpy(np.sqrt(1.0 - p["lam"])), dev)
        cut_h, cut_w = (H * ratio).long(), (W * ratio).long()
        boxes = torch.stack([(cy - cut_h // 2).clamp(0, H), (cy + cut_h // 2).clamp(0, H),
                             (cx - cut_w // 2).clamp(0, W), (cx + cut_w // 2).clamp(0, W)], dim=1)
        area = ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).float()
        lam = 1.0 - area / (H * W)
        w = anchor_weight(boxes, B, H, W, dev)
        out, _ = gaussian_blend(x, x, w, 0.0, b_index=perm, backend=self.backend, validate=False)
        return dict(x=out, y=self.mix_targets(targets, a, p["perm"], lam), index_a=a,
                    index_b=p["perm"], weight_a=w, lam=lam, hard=True, boxes=boxes,
                    saliency=Deferred(torch.index_select, s, 0, perm))

    def _mix_one_map(self, x, targets, p, perm, a):
        """The official code: the first partner's map alone, its peak read to the host (the one
        sync of this path), the boxes around it in numpy: a few host operations instead of a
        dozen small tensor ops. One lam for the batch -> one box broadcast over the batch;
        lam per sample (mode="elem") -> a box per row around the same peak."""
        B, _, H, W = x.shape
        dev = x.device
        s = saliency(x.index_select(0, perm[:1]), self.method, backend=self.backend)
        peak = int(s.flatten().argmax())
        lam_host = p["lam"]
        boxes = boxes_around(np.full(B, peak // W), np.full(B, peak % W), lam_host, H, W)
        area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
        lam = torch.from_numpy((np.float32(1) - area.astype(np.float32) / np.float32(H * W)))
        one = bool((boxes == boxes[0]).all())  # one lam for the batch: one broadcast box
        w = anchor_weight(boxes, B, H, W, dev, boxes[0].tolist() if one else None)
        out = blend_trusted(x, x, w, 0.0, perm, self.backend)  # selects at 0 / 1: an exact paste
        boxes = torch.from_numpy(boxes)
        return dict(x=out, y=self.mix_targets(targets, None, p["perm"], lam), index_a=a,
                    index_b=p["perm"], weight_a=w, lam=lam, hard=True, boxes=to_device(boxes, dev), saliency=s)
