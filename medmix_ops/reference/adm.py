"""Reference absolute-difference-map ops (DESIGN.md op 3, VariMix ADM)."""
from __future__ import annotations

import torch

from .saliency import is_flat

OTSU_BINS = 256


def adm_score(x: torch.Tensor, x_hat: torch.Tensor):
    """A = mean_c((D - m) / (M - m)) with D = |x_hat - x|, m / M the per-sample min / max over
    C*H*W. Returns (A [B, 1, H, W] float32, valid [B] bool: False where D is flat, i.e.
    M - m <= 1e-5 M, as for x_hat == x or x_hat = x + c up to rounding)."""
    d = (x_hat.float() - x.float()).abs()
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    hi = d.amax(dim=(1, 2, 3), keepdim=True)
    valid = ~is_flat(lo, hi).view(-1)
    rng = torch.where(valid.view(-1, 1, 1, 1), hi - lo, torch.zeros_like(hi))
    a = ((d - lo) / torch.where(rng > 0, rng, 1)).mean(dim=1, keepdim=True)
    return torch.where(valid[:, None, None, None], a, torch.zeros_like(a)), valid


def otsu_threshold(a: torch.Tensor, bins: int = OTSU_BINS) -> torch.Tensor:
    """Per-sample Otsu threshold of A [B, 1, H, W] in [0, 1] from a `bins`-bin histogram over
    [0, 1]: the threshold is the upper edge (t + 1) / bins of the split bin t that maximises the
    between-class variance (first maximum); pixels with A >= threshold are foreground."""
    B = a.shape[0]
    idx = (a.reshape(B, -1).clamp(0, 1) * bins).long().clamp_(max=bins - 1)
    hist = torch.zeros(B, bins, dtype=torch.float64, device=a.device).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.float64))
    return otsu_from_histogram(hist)


def otsu_from_histogram(hist: torch.Tensor) -> torch.Tensor:
    """[B, bins] counts -> thresholds [B] float32 (see otsu_threshold)."""
    bins = hist.shape[1]
    hist = hist.double()
    centers = (torch.arange(bins, dtype=torch.float64, device=hist.device) + 0.5) / bins
    w0 = hist.cumsum(1)
    w1 = hist.sum(1, keepdim=True) - w0
    s0 = (hist * centers).cumsum(1)
    s1 = (hist * centers).sum(1, keepdim=True) - s0
    ok = (w0 > 0) & (w1 > 0)
    mu0 = s0 / torch.where(w0 > 0, w0, 1)
    mu1 = s1 / torch.where(w1 > 0, w1, 1)
    between = torch.where(ok, w0 * w1 * (mu0 - mu1) ** 2, torch.full_like(w0, -1.0))
    t = between.argmax(dim=1)
    thr = (t + 1).double() / bins
    # No valid split (a single occupied bin): nothing stands out, so nothing is foreground.
    return torch.where(ok.any(dim=1), thr, torch.full_like(thr, 2.0)).float()


def quantile_threshold(a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample threshold keeping the top-q fraction of A: the k-th largest value with
    k = round(q * H * W) (k = 0: nothing kept). q: [B] in [0, 1]."""
    B = a.shape[0]
    flat = a.reshape(B, -1)
    n = flat.shape[1]
    k = torch.round(q.double() * n).long().clamp(0, n)
    sorted_desc = flat.sort(dim=1, descending=True).values
    kth = sorted_desc.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0]
    return torch.where(k > 0, kth, torch.full_like(kth, 2.0))


def adm_mask(x: torch.Tensor, x_hat: torch.Tensor, lam: torch.Tensor, mode: str = "lambda"):
    """mask [B, 1, H, W] float32 in {0, 1} and area [B] (mask fraction). lam [B]: the threshold
    ("lambda"), or the kept fraction q ("quantile"); ignored by "otsu"."""
    a, valid = adm_score(x, x_hat)
    if mode == "lambda":
        thr = lam.float()
    elif mode == "otsu":
        thr = otsu_threshold(a)
    elif mode == "quantile":
        thr = quantile_threshold(a, lam)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    mask = ((a >= thr.view(-1, 1, 1, 1)) & valid.view(-1, 1, 1, 1)).float()
    return mask, mask.mean(dim=(1, 2, 3))


def adm_mix(x: torch.Tensor, x_hat: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor):
    """VariMix bidirectional mixing: K = adm_mask(x, x_hat, lam);
    x_src' = K x + (1 - K) x[perm], x_ref' = K x[perm] + (1 - K) x, lam' = 1 - mean(K).
    Returns (x_src', x_ref', lam', K)."""
    mask, area = adm_mask(x, x_hat, lam, "lambda")
    k = mask.to(torch.float32)
    xs = x.float()
    xr = x[perm].float()
    src = k * xs + (1 - k) * xr
    ref = k * xr + (1 - k) * xs
    if x.dtype == torch.uint8:  # a hard mask copies pixels: no rounding needed
        src, ref = src.round(), ref.round()
    return src.to(x.dtype), ref.to(x.dtype), 1 - area, mask


def varimix_public_loop(images, x_fake, ref_index, lam):
    """The public VariMix `variety_mix` after its generator call, rewritten as the parity
    target and benchmark baseline: per sample, min-max normalise |x_fake - x_src|, average over
    channels, threshold at one lam; fuse both ways; lam_i = 1 - mask area via .item().
    Returns (fusion_src, fusion_ref, lam [B]). A constant difference gives NaN there (0 / 0);
    adm_mix gives an empty mask."""
    x_src, x_ref = images, images[ref_index]
    masks = []
    for i in range(images.shape[0]):
        d = torch.abs(x_fake[i] - x_src[i])
        d = (d - d.min()) / (d.max() - d.min())
        d = d.mean(dim=0, keepdim=True)
        masks.append((d >= lam).float())
    k = torch.stack(masks)
    src = x_src * k + x_ref * (1.0 - k)
    ref = x_ref * k + x_src * (1.0 - k)
    lams = torch.tensor([1 - k[i].sum().item() / (images.shape[-1] * images.shape[-2])
                         for i in range(images.shape[0])], device=images.device)
    return src, ref, lams
