"""Reference patch_ratio_pool (DESIGN.md op 2, SPMix per-patch mixing ratios)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .saliency import normalize_min_max


def patch_ratio_pool(s_a: torch.Tensor, s_b: torch.Tensor, patch: int, alpha: float = 0.8,
                     pad: bool = False):
    """s_a, s_b: [B, 1, H, W] saliency maps. Per image: p = avg_pool(s, patch) (with pad, edge
    patches average only their pixels), p = (p - min) / (max - min) (0 for a flat map),
    p = p / 2 + 0.5 in [0.5, 1]; r = min(alpha, max(p_a, p_b)) [B, gh, gw]; mean_ratio [B]."""
    def pooled(s):
        p = F.avg_pool2d(s.float(), patch, stride=patch, ceil_mode=pad, count_include_pad=False)[:, 0]
        return normalize_min_max(p) / 2 + 0.5

    r = torch.clamp(torch.maximum(pooled(s_a), pooled(s_b)), max=alpha)
    return r, r.mean(dim=(1, 2))


def expand_ratios(r: torch.Tensor, patch: int, size) -> torch.Tensor:
    """[B, gh, gw] -> nearest-upsampled [B, 1, H, W] pixel map (cropped to size)."""
    H, W = size
    B, gh, gw = r.shape
    up = r[:, None, :, None, :, None].expand(B, 1, gh, patch, gw, patch)  # a view: one copy below
    return up.reshape(B, 1, gh * patch, gw * patch)[..., :H, :W].contiguous()
