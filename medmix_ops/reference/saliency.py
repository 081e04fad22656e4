"""Reference saliency maps (DESIGN.md op 1). Each returns float32 [B, 1, H, W] in [0, 1],
min-max normalised per sample; a constant input (or an all-zero map) gives all zeros.

Semantics shared with the kernels:
- grey: 0.299 R + 0.587 G + 0.114 B for 3 channels (RGB order), the channel mean otherwise;
- resize: bilinear, half-pixel centres, no antialiasing (F.interpolate, align_corners=False),
  which is OpenCV's INTER_LINEAR;
- blur border: reflect without repeating the edge pixel (OpenCV's BORDER_DEFAULT), periodic
  beyond one reflection;
- uint8 images: the grey map and the working map (64 x 64 grid / smoothed intensity) are
  rounded half to even, as OpenCV's 8-bit intermediates are (it lifts the Pearson correlation
  on low-contrast images from ~0.98 to > 0.999).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .gaussian_blend import reflect_index

SPECTRAL_SIZE = 64                               # OpenCV's resImWidth / resImHeight
SPECTRAL_BLUR = (5, 8.0)                         # GaussianBlur(ksize=5, sigma=8) of the magnitude
FINE_GRAINED_SCALES = (12, 24, 48, 28, 56, 112)  # OpenCV's neighborhoods: 3*4*{1,2,4}, 7*4*{1,2,4}
FINE_GRAINED_SMOOTH = (1.0, 4.0, 6.0, 4.0, 1.0)  # two 3x3 [1, 2, 1]/4 blurs, as one 5-tap kernel
LOG_FLOOR = 1e-30                                # log-amplitude floor (log 0 = -inf otherwise)
AMPLITUDE_FLOOR = 1e-6                           # ... and relative to the largest amplitude
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def gaussian_taps_ksize(ksize: int, sigma: float) -> torch.Tensor:
    """OpenCV getGaussianKernel(ksize, sigma): exp(-t^2 / 2 sigma^2) over ksize taps, sum 1."""
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    w = torch.exp(-t * t / (2 * sigma * sigma))
    return (w / w.sum()).float()


def gaussian_taps_sigma(sigma: float) -> torch.Tensor:
    """Radius ceil(3 sigma) taps of exp(-t^2 / 2 sigma^2), sum 1 (sigma 0: the identity)."""
    if sigma <= 0:
        return torch.ones(1)
    r = math.ceil(3.0 * sigma)
    return gaussian_taps_ksize(2 * r + 1, sigma)


def smooth_taps() -> torch.Tensor:
    t = torch.tensor(FINE_GRAINED_SMOOTH, dtype=torch.float64)
    return (t / t.sum()).float()


def grey_weights(channels: int) -> torch.Tensor:
    if channels == 3:
        return torch.tensor(GREY_WEIGHTS, dtype=torch.float32)
    return torch.full((channels,), 1.0 / channels, dtype=torch.float32)


def separable_filter(m: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """[B, h, w] filtered by taps [T] (odd T) along both axes, reflect border."""
    T = taps.numel()
    if T == 1:
        return m * taps.to(m)[0]
    r = T // 2
    B, h, w = m.shape
    taps = taps.to(m)
    rows = reflect_index(torch.arange(-r, h + r, device=m.device), h)
    cols = reflect_index(torch.arange(-r, w + r, device=m.device), w)
    m = (m[:, :, cols].unfold(2, T, 1) * taps).sum(-1)
    return (m[:, rows, :].unfold(1, T, 1) * taps).sum(-1)


def resize_bilinear(m: torch.Tensor, size) -> torch.Tensor:
    """[B, h, w] -> [B, H, W], OpenCV INTER_LINEAR semantics (no antialias)."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=False)[:, 0]


def is_flat(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """A map whose range is at most 1e-5 of its magnitude is flat: float32 rounding, not
    content, would decide its normalised values, so it normalises to zeros."""
    return ~(hi - lo > 1e-5 * torch.maximum(lo.abs(), hi.abs()))


def normalize_min_max(m: torch.Tensor) -> torch.Tensor:
    """Per-sample (m - min) / (max - min) over [B, H, W]; a flat sample -> zeros."""
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    flat = is_flat(lo, hi)
    return torch.where(flat, torch.zeros_like(m), (m - lo) / torch.where(flat, 1, hi - lo))


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] any dtype -> float32 [B, H, W] (the image's own value range)."""
    w = grey_weights(x.shape[1]).to(x.device)
    # Summed channel by channel in float32, in the kernels' order: uint8 images round the grey
    # value (OpenCV's 8-bit intermediates), and a sum in another order (einsum's) can fall on
    # the other side of a .5 tie; one flipped grey pixel moved a spectral residual map by 0.017.
    g = x[:, 0].float() * w[0]
    for c in range(1, x.shape[1]):
        g = g + x[:, c].float() * w[c]
    return g


def spectral_residual(x: torch.Tensor) -> torch.Tensor:
    """Hou & Zhang 2007 as OpenCV-contrib's StaticSaliencySpectralResidual."""
    out, constant = spectral_residual_map(x)
    out = normalize_min_max(out)
    return torch.where(constant[:, None, None], torch.zeros_like(out), out)[:, None]


def spectral_residual_map(x: torch.Tensor):
    """The map before min-max normalisation [B, H, W] and which samples are constant [B]."""
    mag, constant = spectral_residual_working_map(x)
    return resize_bilinear(mag, tuple(x.shape[-2:])), constant


def spectral_residual_working_map(x: torch.Tensor):
    """The smoothed, squared map on the 64 x 64 working grid [B, 64, 64], before the resize
    back, and which samples are constant [B]."""
    return spectral_residual_of_grid(spectral_residual_grid(x))


def spectral_residual_grid(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The grey image resized to the 64 x 64 working grid [B, 64, 64]. dtype: what the resize
    computes in after the float32 grey image; float64 gives the tests an exact yardstick for
    the float32 grid's rounding, which some spectra amplify (see the saliency property test)."""
    q = x.dtype == torch.uint8
    g = _round_if(to_grey(x).to(dtype), q)
    return _round_if(resize_bilinear(g, (SPECTRAL_SIZE, SPECTRAL_SIZE)), q)


def spectral_residual_of_grid(small: torch.Tensor):
    """spectral_residual_working_map from the working grid [B, 64, 64], in its dtype."""
    # a flat working grid (a constant image) gives zeros, not the spectrum of rounding noise
    constant = is_flat(small.amin(dim=(1, 2)), small.amax(dim=(1, 2)))
    spec = torch.fft.fft2(small)
    amp = spec.abs()
    # Amplitudes under 1e-6 of the sample's largest are the FFT's rounding noise or exact zeros
    # (an image constant along its rows or columns): floored there, so that neither noise nor
    # an overflowing exp() (next to a zero column, under the 1e-30 floor) decides the map.
    floor = (amp.amax(dim=(-2, -1), keepdim=True) * AMPLITUDE_FLOOR).clamp_min(LOG_FLOOR)
    log_amp = torch.log(torch.maximum(amp, floor))
    residual = log_amp - separable_filter(log_amp, torch.full((3,), 1.0 / 3.0))
    # at or under the floor, phase 0 (as an exact zero's): rounding noise would choose it
    phased = amp > floor
    phase = torch.where(phased, spec / torch.where(phased, amp, 1), torch.ones_like(spec))
    mag = torch.fft.ifft2(torch.exp(residual) * phase).abs()
    mag = separable_filter(mag, gaussian_taps_ksize(*SPECTRAL_BLUR)) ** 2
    return mag, constant


def _round_if(m: torch.Tensor, quantize: bool) -> torch.Tensor:
    return torch.round(m) if quantize else m


def integral_image(g: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> float64 [B, H + 1, W + 1] with S[y, x] = sum of g[:y, :x]."""
    return F.pad(g.double().cumsum(1).cumsum(2), (1, 0, 1, 0))


def fine_grained(x: torch.Tensor, scales=FINE_GRAINED_SCALES) -> torch.Tensor:
    """Montabone & Soto 2010 as OpenCV-contrib's StaticSaliencyFineGrained, without its 8-bit
    truncations: per scale n the surround mean over the 2n x 2n window (rows y-n+1 .. y+n,
    clipped to the image) without the centre pixel; on = max(c - mean, 0), off = max(mean - c, 0)
    summed over scales; intensity = on / max(on) + off / max(off); min-max normalised.
    A sample whose smoothed grey map is flat (is_flat) gives zeros: on / max(on) would
    otherwise rescale its rounding-level contrasts to a full-range map of noise."""
    g = fine_grained_grey(x)
    flat = is_flat(g.amin(dim=(1, 2)), g.amax(dim=(1, 2)))
    out = normalize_min_max(_fine_grained_map_of(g, scales))
    return torch.where(flat[:, None, None], torch.zeros_like(out), out)[:, None]


def fine_grained_grey(x: torch.Tensor) -> torch.Tensor:
    """The smoothed grey map the fine-grained contrasts are taken from, float32 [B, H, W]."""
    q = x.dtype == torch.uint8
    return _round_if(separable_filter(_round_if(to_grey(x), q), smooth_taps()), q)


def fine_grained_map(x: torch.Tensor, scales=FINE_GRAINED_SCALES) -> torch.Tensor:
    """The intensity map before min-max normalisation, float32 [B, H, W]."""
    return _fine_grained_map_of(fine_grained_grey(x), scales)


def _fine_grained_map_of(g: torch.Tensor, scales) -> torch.Tensor:
    """fine_grained_map from the smoothed grey map g [B, H, W]."""
    B, H, W = g.shape
    S = integral_image(g)
    ys = torch.arange(H, device=g.device)[:, None]
    xs = torch.arange(W, device=g.device)[None, :]
    c = g.double()
    on = torch.zeros_like(c)
    off = torch.zeros_like(c)
    for n in scales:
        y1, y2 = (ys - n + 1).clamp(0, H), (ys + n + 1).clamp(0, H)
        x1, x2 = (xs - n + 1).clamp(0, W), (xs + n + 1).clamp(0, W)
        box = S[:, y2, x2] + S[:, y1, x1] - S[:, y2, x1] - S[:, y1, x2]
        surround = ((x2 - x1) * (y2 - y1) - 1).double()
        mean = torch.where(surround > 0, (box - c) / surround.clamp_min(1), c)
        on += (c - mean).clamp_min(0)
        off += (mean - c).clamp_min(0)
    on_max = on.amax(dim=(1, 2), keepdim=True)
    off_max = off.amax(dim=(1, 2), keepdim=True)
    intensity = (torch.where(on_max > 0, on / torch.where(on_max > 0, on_max, 1), 0)
                 + torch.where(off_max > 0, off / torch.where(off_max > 0, off_max, 1), 0))
    return intensity.float()


def gradient(grad: torch.Tensor, reduce: str = "max", sigma: float = 3.0) -> torch.Tensor:
    """|grad| reduced over channels (max or sum), Gaussian smoothed, min-max normalised."""
    a = grad.float().abs()
    m = a.amax(dim=1) if reduce == "max" else a.sum(dim=1)
    return normalize_min_max(separable_filter(m, gaussian_taps_sigma(sigma)))[:, None]


def gradcam(acts: torch.Tensor, grads: torch.Tensor, size) -> torch.Tensor:
    """Grad-CAM: w_k = spatial mean of grads_k; cam = relu(sum_k w_k A_k); bilinear to size."""
    w = grads.float().mean(dim=(2, 3))
    cam = torch.relu(torch.einsum("bkhw,bk->bhw", acts.float(), w))
    return normalize_min_max(resize_bilinear(cam, size))[:, None]
