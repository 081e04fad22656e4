"""Reference gaussian_blend (DESIGN.md op 4)."""
from __future__ import annotations

import torch


def reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect border without repeating the edge pixel (F.pad(mode="reflect")), extended
    periodically with period 2(n-1) so that indices any distance outside [0, n) are defined."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - i)


def gaussian_taps(sigma: torch.Tensor, max_radius: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 2R+1] normalised taps; sample b uses radius ceil(3 sigma_b) <= R, zeros beyond it.
    sigma: float32 [B]. The radius is computed in float64 from the float32 sigma, as the kernels do."""
    t = torch.arange(-max_radius, max_radius + 1, device=sigma.device, dtype=torch.float64)
    s = sigma.to(torch.float64)[:, None]
    radius = torch.ceil(3.0 * s)
    s_acc = sigma.to(dtype)[:, None]
    inv = torch.where(s_acc > 0, 1.0 / (2.0 * s_acc * s_acc), torch.zeros_like(s_acc))
    w = torch.exp(-(t.to(dtype) ** 2) * inv) * (t.abs() <= radius).to(dtype)
    return w / w.sum(dim=1, keepdim=True)


def gaussian_blur_mask(mask: torch.Tensor, sigma: torch.Tensor, max_radius: int,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Separable Gaussian blur of mask [B, 1, H, W] with per-sample sigma [B]; returns
    [B, 1, H, W] in dtype. Vertical pass, then horizontal, each over reflect-indexed windows."""
    B, _, H, W = mask.shape
    R = int(max_radius)
    taps = gaussian_taps(sigma, R, dtype)  # [B, 2R+1]
    m = mask[:, 0].to(dtype)
    rows = reflect_index(torch.arange(-R, H + R, device=mask.device), H)
    cols = reflect_index(torch.arange(-R, W + R, device=mask.device), W)
    v = (m[:, rows, :].unfold(1, 2 * R + 1, 1) * taps[:, None, None, :]).sum(-1)  # [B, H, W]
    h = (v[:, :, cols].unfold(2, 2 * R + 1, 1) * taps[:, None, None, :]).sum(-1)  # [B, H, W]
    # A blurred sample's alpha is at most 1: the rounded taps can sum to an ulp above 1. (A
    # sigma = 0 sample is its mask as given; torch.where keeps NaN.)
    blurred = (sigma > 0)[:, None, None]  # (radius ceil(3 sigma) > 0)
    return torch.where(blurred & (h > 1), torch.ones_like(h), h)[:, None]


def gaussian_blend(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor,
                   max_radius: int, return_alpha: bool = False, b_index=None):
    """out = alpha * a + (1 - alpha) * b with alpha = gaussian_blur_mask(mask, sigma) (a weight of
    exactly 1 or 0 selects a or b, so the other image's non-finite pixels never enter);
    lam = mean(alpha) over H, W. Returns (out, lam, alpha or an empty tensor).
    a, b: [B, C, H, W] (b: [B', C, H, W] rows picked by b_index [B] when given); mask:
    [B, 1, H, W]; sigma: float32 [B]. Differentiable in a and b."""
    if b_index is not None:
        b = b[b_index]
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    alpha = gaussian_blur_mask(mask, sigma, max_radius, acc)
    a_acc, b_acc = a.to(acc), b.to(acc)
    out = alpha * a_acc + (1.0 - alpha) * b_acc
    # a weight of exactly 1 or 0 selects one image, so a non-finite pixel under a zero weight
    # stays out (no 0 * inf = NaN); for finite inputs this changes no value
    out = torch.where(alpha == 1.0, a_acc, torch.where(alpha == 0.0, b_acc, out))
    if a.dtype == torch.uint8:
        out = torch.round(out).clamp_(0, 255)
    out = out.to(a.dtype)
    if a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)  # keep the caller's layout
    lam = alpha.mean(dim=(1, 2, 3))
    return out, lam, (alpha if return_alpha else alpha.new_empty(0))
