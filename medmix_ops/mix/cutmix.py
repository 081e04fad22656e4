"""CutMix (Yun et al. 2019): a box of the partner is pasted in; the label follows the area."""
from __future__ import annotations


import numpy as np
import torch

from ..ops import gaussian_blend
from ._base import MixPolicy


def paste_box(x: torch.Tensor, perm: torch.Tensor, box) -> torch.Tensor:
    """One box for the whole batch: a copy of x with the partners' box region pasted in. Only
    the box region of the partners is gathered, which beats any full-image pass."""
    yl, yh, xl, xh = (int(v) for v in box)
    out = x.clone()
    if yh > yl and xh > xl:
        out[:, :, yl:yh, xl:xh] = x[:, :, yl:yh, xl:xh].index_select(0, perm)
    return out


def box_mask(boxes: torch.Tensor, H: int, W: int, device) -> torch.Tensor:
    """[B, 4] (y_lo, y_hi, x_lo, x_hi) boxes -> [B, 1, H, W] float mask, 1 inside."""
    b = boxes.to(device).view(-1, 4, 1, 1)
    yy = torch.arange(H, device=device).view(1, H, 1)
    xx = torch.arange(W, device=device).view(1, 1, W)
    inside = (yy >= b[:, 0]) & (yy < b[:, 1]) & (xx >= b[:, 2]) & (xx < b[:, 3])
    return inside[:, None].float()


def boxes_around(cy: np.ndarray, cx: np.ndarray, lam: np.ndarray, H: int, W: int) -> np.ndarray:
    """timm's rand_bbox around given centres: side sqrt(1 - lam) of H and W, clipped."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (H * ratio).astype(np.int64), (W * ratio).astype(np.int64)
    return np.stack([np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H),
                     np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)], axis=1)


class CutMix(MixPolicy):
    """``CutMix(num_classes, alpha=1.0, correct_lam=True, ...)``: lam ~ Beta(alpha, alpha); a box
    of side sqrt(1 - lam) H x sqrt(1 - lam) W at a uniform centre (clipped) is taken from the
    partner; with ``correct_lam`` the label weight is the kept area. Per batch (one box: a
    clone with the partners' box region pasted) or per sample (``mode="elem"``: the fused
    blend with the box masks). With ``partner="flip"`` and the same box its images and targets
    equal timm's ``Mixup(mixup_alpha=0, cutmix_alpha=alpha)``. ``policy(x, y, lam=..., box=(y_lo,
    y_hi, x_lo, x_hi))`` forces them.
    """

    name = "cutmix"

    def __init__(self, num_classes: int, *, correct_lam: bool = True, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.correct_lam = bool(correct_lam)

    def _sample(self, B, labels, rng, x, lam=None, box=None):
        H, W = x.shape[-2:]
        perm = self.sample_partners(B, labels, rng)
        lam_t = self.sample_lam(B, rng, lam)
        if box is not None:
            boxes = torch.as_tensor(box, dtype=torch.long).reshape(-1, 4).expand(B, 4).clone()
        else:
            n = B if self.mode == "elem" else 1
            cy, cx = rng.integers(0, H, size=n), rng.integers(0, W, size=n)
            boxes = torch.from_numpy(boxes_around(cy, cx, lam_t[:n].numpy(), H, W)).expand(B, 4).clone()
        if self.correct_lam or box is not None:
            area = ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).double()
            lam_t = 1.0 - area / (H * W)
        return dict(perm=perm, lam=lam_t, boxes=boxes)

    def _mix(self, x, targets, labels, p):
        B, _, H, W = x.shape
        perm, lam = p["perm"], p["lam"].float()
        a = torch.arange(B)
        boxes = p["boxes"]
        if bool((boxes == boxes[0]).all()):  # one box (batch mode): clone + paste the region
            w = (1.0 - box_mask(boxes[:1], H, W, x.device)).expand(B, 1, H, W)  # a view
            out = paste_box(x, perm.to(x.device), boxes[0].tolist())
        else:  # a box per sample: the fused blend, partners gathered in the kernel
            w = 1.0 - box_mask(boxes, H, W, x.device)  # the anchor outside the box
            out, _ = gaussian_blend(x, x, w, 0.0, b_index=perm.to(x.device), backend=self.backend,
                                    validate=False)
        return dict(x=out, y=self.mix_targets(targets, a, perm, lam), index_a=a, index_b=perm,
                    weight_a=w, lam=lam, hard=True)


