"""CutMix (Yun et al. 2019): a box of the partner is pasted in; the label follows the area."""
from __future__ import annotations

import math

import numpy as np
import torch

from .._transfer import to_device
from ..ops.gaussian_blend import blend_trusted
from ._base import MixPolicy


def box_mask(boxes: torch.Tensor, H: int, W: int, device) -> torch.Tensor:
    """[B, 4] (y_lo, y_hi, x_lo, x_hi) boxes -> [B, 1, H, W] float mask, 1 inside."""
    b = to_device(boxes, device).view(-1, 4, 1, 1)
    yy = torch.arange(H, device=device).view(1, H, 1)
    xx = torch.arange(W, device=device).view(1, 1, W)
    inside = (yy >= b[:, 0]) & (yy < b[:, 1]) & (xx >= b[:, 2]) & (xx < b[:, 3])
    return inside[:, None].float()


def outside_box(box, H: int, W: int, device) -> torch.Tensor:
    """One (y_lo, y_hi, x_lo, x_hi) box -> [1, 1, H, W] float mask, 0 inside and 1 outside (the
    anchor's weight): two ops, where box_mask's comparisons take a dozen."""
    yl, yh, xl, xh = box
    if (device if isinstance(device, torch.device) else torch.device(device)).type == "cpu":
        # numpy: no dispatcher round trips on the host
        w = np.ones((1, 1, H, W), dtype=np.float32)
        w[..., yl:yh, xl:xh] = 0.0
        return torch.from_numpy(w)
    w = torch.ones(1, 1, H, W, device=device)
    w[..., yl:yh, xl:xh] = 0.0
    return w


def anchor_weight(boxes, B: int, H: int, W: int, device, box=None) -> torch.Tensor:
    """The anchor's per-pixel weight [B, 1, H, W], 0 inside each row's box: with ``box`` (one
    box for the whole batch, a list) a [1, 1, H, W] mask broadcast as a view; otherwise a mask
    per row from ``boxes`` [B, 4] (tensor or array)."""
    if box is not None:
        return outside_box(box, H, W, device).expand(B, 1, H, W)
    return 1.0 - box_mask(torch.as_tensor(boxes), H, W, device)


def boxes_around(cy: np.ndarray, cx: np.ndarray, lam: np.ndarray, H: int, W: int) -> np.ndarray:
    """timm's rand_bbox around given centres: side sqrt(1 - lam) of H and W, clipped.
    [n] int centres and float lam -> [n, 4] int64 (y_lo, y_hi, x_lo, x_hi)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (H * ratio).astype(np.int64), (W * ratio).astype(np.int64)
    # np.minimum / np.maximum: np.clip's Python wrapper costs ~6 us a call on small arrays
    return np.stack([np.maximum(cy - cut_h // 2, 0), np.minimum(cy + cut_h // 2, H),
                     np.maximum(cx - cut_w // 2, 0), np.minimum(cx + cut_w // 2, W)], axis=1)


def box_around(cy: int, cx: int, lam: float, H: int, W: int) -> list[int]:
    """boxes_around for one box in plain Python (the batch-mode path: numpy's per-call overhead
    on 1-element arrays costs more than the whole paste)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * ratio), int(W * ratio)
    return [max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H), max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)]


class CutMix(MixPolicy):
    """``CutMix(num_classes, alpha=1.0, correct_lam=True, ...)``: lam ~ Beta(alpha, alpha); a box
    of side sqrt(1 - lam) H x sqrt(1 - lam) W at a uniform centre (clipped) is taken from the
    partner; with ``correct_lam`` the label weight is the kept area. Per batch (one box, its
    mask a view broadcast over the batch) or per sample (``mode="elem"``: a box per sample);
    both run the fused blend, which selects at weights 0 / 1, so the paste is exact and a
    partner's NaN outside the box stays out. With ``partner="flip"`` and the same box its
    images and targets equal timm's ``Mixup(mixup_alpha=0, cutmix_alpha=alpha)``. ``policy(x, y, lam=..., box=(y_lo,
    y_hi, x_lo, x_hi))`` forces them.
    """

    name = "cutmix"

    def __init__(self, num_classes: int, *, correct_lam: bool = True, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.correct_lam = bool(correct_lam)

    def _sample(self, B, labels, rng, x, lam=None, box=None):
        H, W = x.shape[-2:]
        perm = self.sample_partners(B, labels, rng)
        if box is None and self.mode == "batch":
            # One box in plain Python (numpy's per-call cost on 1-element arrays exceeds the
            # work); a drawn lam is sample_lam's one Beta draw, without its [B] tensor.
            if lam is None:
                lam_t, lam0 = None, float(rng.beta(self.alpha, self.alpha))
            else:
                lam_t = self.sample_lam(B, rng, lam)
                lam0 = float(lam_t[0])
            cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
            yl, yh, xl, xh = box = box_around(cy, cx, lam0, H, W)
            uniform = self.correct_lam or lam_t is None
            if uniform:  # (numpy: `last` makes it a tensor when read)
                lam_t = np.full(B, 1.0 - (yh - yl) * (xh - xl) / (H * W) if self.correct_lam else lam0)
            rows = np.empty((B, 4), dtype=np.int64)
            rows[:] = box  # (torch.tensor(...).expand costs ~4x more)
            return dict(perm=perm, lam=lam_t, boxes=rows, one_box=True, _box=box, _uniform=uniform)
        lam_t = self.sample_lam(B, rng, lam)
        # boxes on the host in numpy: tensor ops here cost more than the paste
        if box is not None:
            boxes = np.asarray(torch.as_tensor(box, dtype=torch.long).reshape(-1, 4))
            one_box = bool((boxes == boxes[0]).all())
        else:  # mode "elem"
            cy, cx = rng.integers(0, H, size=B), rng.integers(0, W, size=B)
            boxes = boxes_around(cy, cx, lam_t, H, W)
            one_box = False
        boxes = np.broadcast_to(boxes, (B, 4))
        if self.correct_lam or box is not None:
            area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
            lam_t = 1.0 - area / (H * W)
        return dict(perm=perm, lam=lam_t, boxes=boxes.copy(), one_box=one_box)

    def _mix(self, x, targets, labels, p):
        B, _, H, W = x.shape
        perm = p["perm"]
        lam = p["lam"].astype(np.float32)  # float64 on the host
        boxes = p["boxes"]
        # (_box: the one box as a list, internal, not kept in `last`)
        box = (p.pop("_box", None) or boxes[0].tolist()) if p["one_box"] else None
        w = anchor_weight(boxes, B, H, W, x.device, box)
        # the fused blend selects at weights 0 / 1: an exact paste in one pass, partners
        # gathered in the kernel
        out = blend_trusted(x, x, w, 0.0, perm, self.backend)
        y = self.mix_targets(targets, None, perm, lam, uniform_lam=p.pop("_uniform", False))
        return dict(x=out, y=y, index_a=np.arange(B), index_b=perm, weight_a=w, lam=lam, hard=True)


