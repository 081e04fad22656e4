"""Saliency kernels in Triton: saliency_map and fine_grained_saliency are a few launches over a
(sample, 1024-pixel chunk) grid, through per-sample scratch; per-sample min / max come from
per-chunk partials reduced by the next launch (no barriers, no atomics, the same result in any
schedule). spectral_residual_filter is elementwise over the spectrum. Contracts: csrc/ops.cpp."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._transfer import device_constant
from ..reference.saliency import AMPLITUDE_FLOOR as _AMPLITUDE_FLOOR, integral_image
from . import _common as cm

# log floor of a spectrum, relative to its largest amplitude (csrc/common/saliency.h)
AMPLITUDE_FLOOR = tl.constexpr(_AMPLITUDE_FLOOR)
CHUNK = 1024  # pixels a program per pass: a (sample, chunk) grid fills the GPU at small B


@triton.jit
def _source(p, sc, C, w_ptr, mask, MODE: tl.constexpr):
    """Source value at the pixels p (pointers to channel 0); see csrc/common/saliency.h."""
    if MODE == 4:  # |re + i im|
        re = tl.load(p, mask=mask, other=0.0).to(tl.float32)
        im = tl.load(p + sc, mask=mask, other=0.0).to(tl.float32)
        acc = tl.sqrt(re * re + im * im)
    else:
        acc = tl.zeros(p.shape, dtype=tl.float32)
        for c in range(C):
            v = tl.load(p + c * sc, mask=mask, other=0.0).to(tl.float32)
            if MODE == 2:
                acc = tl.maximum(acc, tl.abs(v))
            elif MODE == 3:
                acc += tl.abs(v)
            else:
                acc += tl.load(w_ptr + c) * v
        if MODE == 1:
            acc = tl.maximum(acc, 0.0)
    return acc


@triton.jit
def _bilinear_coord(o, in_size, out_size):
    """PyTorch's align_corners=False source coordinate in float32: (i0, i1, l1)."""
    scale = in_size.to(tl.float32) / out_size.to(tl.float32)
    src = tl.maximum(scale * (o.to(tl.float32) + 0.5) - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)
    i1 = i0 + tl.where(i0 < in_size - 1, 1, 0)
    return i0, i1, src - i0.to(tl.float32)


@triton.jit
def _sample(m_ptr, h, w, oy, ox, out_h, out_w, mask, RESIZE: tl.constexpr):
    """Value of the h x w map at output pixels (oy, ox) of the out_h x out_w grid."""
    if RESIZE:
        y0, y1, ly = _bilinear_coord(oy, h, out_h)
        x0, x1, lx = _bilinear_coord(ox, w, out_w)
        v00 = tl.load(m_ptr + y0 * w + x0, mask=mask, other=0.0)
        v01 = tl.load(m_ptr + y0 * w + x1, mask=mask, other=0.0)
        v10 = tl.load(m_ptr + y1 * w + x0, mask=mask, other=0.0)
        v11 = tl.load(m_ptr + y1 * w + x1, mask=mask, other=0.0)
        top = (1.0 - lx) * v00 + lx * v01
        bot = (1.0 - lx) * v10 + lx * v11
        return (1.0 - ly) * top + ly * bot
    return tl.load(m_ptr + oy * w + ox, mask=mask, other=0.0)


@triton.jit
def _source_tap(p0, y, x, s_i, s_j, s_c, C, w_ptr, m, MODE: tl.constexpr, QUANTIZE: tl.constexpr):
    v = _source(p0 + y * s_i + x * s_j, s_c, C, w_ptr, m, MODE)
    if QUANTIZE:
        v = cm.round_half_even(v)
    return v


@triton.jit
def _bilinear_source(p0, s_i, s_j, s_c, C, w_ptr, h, w, oy, ox, out_h, out_w, m,
                     MODE: tl.constexpr, QUANTIZE: tl.constexpr):
    """The direct path: bilinear sample of the source itself (csrc/common/saliency.h)."""
    y0, y1, ly = _bilinear_coord(oy, h, out_h)
    x0, x1, lx = _bilinear_coord(ox, w, out_w)
    top = ((1.0 - lx) * _source_tap(p0, y0, x0, s_i, s_j, s_c, C, w_ptr, m, MODE, QUANTIZE)
           + lx * _source_tap(p0, y0, x1, s_i, s_j, s_c, C, w_ptr, m, MODE, QUANTIZE))
    bot = ((1.0 - lx) * _source_tap(p0, y1, x0, s_i, s_j, s_c, C, w_ptr, m, MODE, QUANTIZE)
           + lx * _source_tap(p0, y1, x1, s_i, s_j, s_c, C, w_ptr, m, MODE, QUANTIZE))
    return (1.0 - ly) * top + ly * bot


@triton.jit
def _gate_on(gate_ptr, b, HAS_GATE: tl.constexpr):
    if HAS_GATE:
        return tl.load(gate_ptr + b) != 0
    return b >= 0  # always true, but a tensor like the gated case


@triton.jit
def _store_map(dst_ptr, minmax_ptr, pid, b, n, k, m, on, v, TO_OUT: tl.constexpr,
               ROUND_OUT: tl.constexpr):
    """Store a map pass's values v at pixels k of sample b. Into scratch (gated-off samples
    skipped); or, TO_OUT (the last pass of a map kept at its own size), into the output itself,
    doing the output pass's work: rounded when ROUND_OUT, zeros for a gated-off sample, and the
    chunk's (min, max) -> minmax [B, T, 2]."""
    if TO_OUT:
        v = tl.where(on, v, 0.0)
        if ROUND_OUT:
            v = cm.round_half_even(v)
        tl.store(dst_ptr + b * n + k, v, mask=m)
        cm.store_chunk_minmax(minmax_ptr, pid, v, m)
    else:
        tl.store(dst_ptr + b * n + k, v, mask=m & on)


@triton.jit
def saliency_source_kernel(src_ptr, w_ptr, taps_ptr, gate_ptr, dst_ptr, minmax_ptr, C, h, w, T,
                           s_b, s_c, s_i, s_j, MODE: tl.constexpr, SQUARE: tl.constexpr,
                           QUANTIZE: tl.constexpr, HAS_GATE: tl.constexpr, TO_OUT: tl.constexpr,
                           ROUND_OUT: tl.constexpr, CHUNK: tl.constexpr):
    """saliency_map, pass 1 (not direct): source values (with the single tap, and the square,
    when there is no filter)."""
    pid, b, k, m, _ = cm.sample_chunk(h * w, CHUNK)
    on = _gate_on(gate_ptr, b, HAS_GATE)
    v = _source_tap(src_ptr + b * s_b, k // w, k % w, s_i, s_j, s_c, C, w_ptr + b * C, m & on,
                    MODE, QUANTIZE)
    if T == 1:
        v = v * tl.load(taps_ptr)
        if SQUARE:
            v = v * v
    _store_map(dst_ptr, minmax_ptr, pid, b, h * w, k, m, on, v, TO_OUT, ROUND_OUT)


@triton.jit
def saliency_blur_kernel(in_ptr, taps_ptr, gate_ptr, dst_ptr, minmax_ptr, h, w, T,
                         VERTICAL: tl.constexpr, SQUARE: tl.constexpr, HAS_GATE: tl.constexpr,
                         TO_OUT: tl.constexpr, ROUND_OUT: tl.constexpr, CHUNK: tl.constexpr):
    """saliency_map, passes 2 and 3: the taps along rows, or along columns (squared if asked)."""
    pid, b, k, m, _ = cm.sample_chunk(h * w, CHUNK)
    on = _gate_on(gate_ptr, b, HAS_GATE)
    src = in_ptr + b * h * w
    i = k // w
    j = k % w
    r = T // 2
    acc = tl.zeros([CHUNK], dtype=tl.float32)
    for t in range(T):
        if VERTICAL:
            at = cm.reflect_index(i + (t - r), h) * w + j
        else:
            at = i * w + cm.reflect_index(j + (t - r), w)
        acc += tl.load(taps_ptr + t) * tl.load(src + at, mask=m & on, other=0.0)
    if SQUARE:
        acc = acc * acc
    _store_map(dst_ptr, minmax_ptr, pid, b, h * w, k, m, on, acc, TO_OUT, ROUND_OUT)


@triton.jit
def saliency_output_kernel(src_ptr, w_ptr, gate_ptr, s0_ptr, out_ptr, minmax_ptr, C, h, w,
                           out_h, out_w, s_b, s_c, s_i, s_j, MODE: tl.constexpr,
                           QUANTIZE: tl.constexpr, ROUND_OUT: tl.constexpr, RESIZE: tl.constexpr,
                           DIRECT: tl.constexpr, HAS_GATE: tl.constexpr, CHUNK: tl.constexpr):
    """saliency_map, output pass: the map at (out_h, out_w) before normalisation (from s0, or
    from the source itself when DIRECT) and this chunk's (min, max) -> minmax [B, T, 2]."""
    n_out = out_h * out_w
    pid, b, k, m, _ = cm.sample_chunk(n_out, CHUNK)
    if _gate_on(gate_ptr, b, HAS_GATE):
        oy = k // out_w
        ox = k % out_w
        if DIRECT:
            v = _bilinear_source(src_ptr + b * s_b, s_i, s_j, s_c, C, w_ptr + b * C, h, w, oy, ox,
                                 out_h, out_w, m, MODE, QUANTIZE)
        else:
            v = _sample(s0_ptr + b * h * w, h, w, oy, ox, out_h, out_w, m, RESIZE)
        if ROUND_OUT:
            v = cm.round_half_even(v)
    else:
        v = tl.zeros([CHUNK], dtype=tl.float32)  # (its partials are not read: the finish skips it)
    tl.store(out_ptr + b * n_out + k, v, mask=m)
    cm.store_chunk_minmax(minmax_ptr, pid, v, m)


@triton.jit
def saliency_finish_kernel(minmax_ptr, gate_ptr, out_ptr, flat_ptr, n, NORMALIZE: tl.constexpr,
                           HAS_GATE: tl.constexpr, HAS_FLAT: tl.constexpr, CHUNK: tl.constexpr,
                           BLOCK_T: tl.constexpr):
    """Last pass of saliency_map and fine_grained_saliency: each sample's (min, max) from its
    chunk partials; flat[b] (HAS_FLAT) and, when NORMALIZE, the normalisation in place. Launched
    over every chunk when NORMALIZE, else once per sample. A gated-off sample stays zeros, flat."""
    T = tl.cdiv(n, CHUNK)
    if NORMALIZE:
        pid, b, k, m, _ = cm.sample_chunk(n, CHUNK)
        first = pid % T == 0
    else:
        b = tl.program_id(0).to(tl.int64)
        first = b >= 0
    lo, hi = cm.sample_minmax(minmax_ptr, b, T, BLOCK_T)
    on = _gate_on(gate_ptr, b, HAS_GATE)
    if HAS_FLAT:
        if first:
            tl.store(flat_ptr + b, cm.not_(on) | cm.is_flat(lo, hi))
    if NORMALIZE:
        if on:
            out = out_ptr + b * n
            tl.store(out + k, cm.normalize(tl.load(out + k, mask=m, other=0.0), lo, hi), mask=m)


@triton.jit
def _amplitude(spec, k, mask):
    re = tl.load(spec + 2 * k, mask=mask, other=0.0)
    im = tl.load(spec + 2 * k + 1, mask=mask, other=0.0)
    return tl.sqrt(re * re + im * im)


@triton.jit
def _log_amplitude(spec, k, mask, amp_floor):
    return tl.log(tl.maximum(_amplitude(spec, k, mask), amp_floor))


@triton.jit
def _reflect1(i, n):
    """One reflection (the 3x3 box never reaches further); n == 1 maps to 0."""
    i = tl.where(i < 0, -i, tl.where(i >= n, 2 * (n - 1) - i, i))
    return tl.where(n == 1, 0, i)


@triton.jit
def spectral_residual_kernel(spec_ptr, out_ptr, h, w, BLOCK: tl.constexpr):
    """One program per spectrum: its largest amplitude (the log floor: csrc/common/saliency.h,
    amplitude_floor) first, then the residual of each frequency, BLOCK at a time."""
    b = tl.program_id(0).to(tl.int64)
    hw = h * w
    spec = spec_ptr + b * hw * 2
    out = out_ptr + b * hw * 2
    max_amp = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, hw, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        max_amp = tl.maximum(max_amp, _amplitude(spec, k, k < hw))
    amp_floor = tl.maximum(tl.max(max_amp, axis=0) * AMPLITUDE_FLOOR, 1e-30)
    for k0 in range(0, hw, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        m = k < hw
        i = k // w
        j = k % w
        box = tl.zeros([BLOCK], dtype=tl.float32)
        for di in range(-1, 2):
            for dj in range(-1, 2):
                box += _log_amplitude(spec, _reflect1(i + di, h) * w + _reflect1(j + dj, w), m, amp_floor)
        re = tl.load(spec + 2 * k, mask=m, other=1.0)
        im = tl.load(spec + 2 * k + 1, mask=m, other=0.0)
        amp = tl.sqrt(re * re + im * im)
        mag = tl.exp(tl.log(tl.maximum(amp, amp_floor)) - box / 9.0)
        phased = amp > amp_floor  # at or under the floor: phase 0 (csrc/common/saliency.h)
        safe = tl.where(phased, amp, 1.0)
        tl.store(out + 2 * k, tl.where(phased, mag * (re / safe), mag), mask=m)
        tl.store(out + 2 * k + 1, tl.where(phased, mag * (im / safe), 0.0), mask=m)


@triton.jit
def fine_grained_contrast_kernel(grey_ptr, S_ptr, scales_ptr, gate_ptr, on_ptr, off_ptr, max_ptr, H, W,
                                 NS, HAS_GATE: tl.constexpr, CHUNK: tl.constexpr):
    """fine_grained_saliency, pass 1: on / off contrast summed over the scales (float64, like the
    integral image) and this chunk's (max on, max off) -> max_ptr [B, T, 2]. Nothing for a
    gated-off sample: the intensity pass reads none of it."""
    pid, b, k, m, _ = cm.sample_chunk(H * W, CHUNK)
    m = m & _gate_on(gate_ptr, b, HAS_GATE)
    W1 = W + 1
    S = S_ptr + b * (H + 1) * W1
    y = k // W
    x = k % W
    c = tl.load(grey_ptr + b * H * W + k, mask=m, other=0.0).to(tl.float64)
    on = tl.zeros([CHUNK], dtype=tl.float64)
    off = tl.zeros([CHUNK], dtype=tl.float64)
    for s in range(NS):
        n = tl.load(scales_ptr + s).to(tl.int32)
        y1 = tl.minimum(tl.maximum(y - n + 1, 0), H)
        y2 = tl.minimum(y + n + 1, H)
        x1 = tl.minimum(tl.maximum(x - n + 1, 0), W)
        x2 = tl.minimum(x + n + 1, W)
        box = (tl.load(S + y2 * W1 + x2, mask=m, other=0.0) + tl.load(S + y1 * W1 + x1, mask=m, other=0.0)
               - tl.load(S + y2 * W1 + x1, mask=m, other=0.0) - tl.load(S + y1 * W1 + x2, mask=m, other=0.0))
        surround = ((x2 - x1) * (y2 - y1) - 1).to(tl.float64)
        mean = tl.where(surround > 0, (box - c) / tl.where(surround > 0, surround, 1.0), c)
        on += tl.maximum(c - mean, 0.0)
        off += tl.maximum(mean - c, 0.0)
    tl.store(on_ptr + b * H * W + k, on, mask=m)
    tl.store(off_ptr + b * H * W + k, off, mask=m)
    tl.store(max_ptr + pid * 2, tl.max(tl.where(m, on, 0.0), axis=0))
    tl.store(max_ptr + pid * 2 + 1, tl.max(tl.where(m, off, 0.0), axis=0))


@triton.jit
def fine_grained_intensity_kernel(on_ptr, off_ptr, max_ptr, gate_ptr, out_ptr, minmax_ptr, hw,
                                  HAS_GATE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_T: tl.constexpr):
    """fine_grained_saliency, pass 2: on / max(on) + off / max(off) -> out and this chunk's
    (min, max) -> minmax [B, T, 2] (saliency_finish_kernel normalises). A gated-off sample
    (whose contrast pass wrote nothing) gets zeros and partials (0, 0), which the finish keeps."""
    pid, b, k, m, T = cm.sample_chunk(hw, CHUNK)
    gated_on = _gate_on(gate_ptr, b, HAS_GATE)
    t = tl.arange(0, BLOCK_T)
    mt = (t < T) & gated_on
    mon = tl.max(tl.load(max_ptr + (b * T + t) * 2, mask=mt, other=0.0), axis=0)
    moff = tl.max(tl.load(max_ptr + (b * T + t) * 2 + 1, mask=mt, other=0.0), axis=0)
    # (a gated-off sample: both maxima 0, so v is 0 whatever on / off hold; they are not read)
    on = tl.load(on_ptr + b * hw + k, mask=m & gated_on, other=0.0)
    off = tl.load(off_ptr + b * hw + k, mask=m & gated_on, other=0.0)
    v = (tl.where(mon > 0, on / tl.where(mon > 0, mon, 1.0), 0.0)
         + tl.where(moff > 0, off / tl.where(moff > 0, moff, 1.0), 0.0)).to(tl.float32)
    tl.store(out_ptr + b * hw + k, v, mask=m)
    cm.store_chunk_minmax(minmax_ptr, pid, v, m)


def _finish(minmax, gate, out, flat, n, normalize):
    B, T = minmax.shape[0], minmax.shape[1]
    saliency_finish_kernel[(B * T if normalize else B,)](
        minmax, gate if gate is not None else minmax, out, flat if flat is not None else minmax, n,
        NORMALIZE=bool(normalize), HAS_GATE=gate is not None, HAS_FLAT=flat is not None,
        CHUNK=CHUNK, BLOCK_T=cm.next_pow2(T), **cm.LAUNCH_OPTIONS)


def saliency_map(src, src_mode, weights, taps, square, out_h, out_w, normalize, quantize, gate):
    B = src.shape[0]
    if src_mode == 4:
        C, h, w = 1, src.shape[1], src.shape[2]
        s_b, s_i, s_j, s_c = src.stride(0), src.stride(1), src.stride(2), src.stride(3)
    else:
        C, h, w = src.shape[1], src.shape[2], src.shape[3]
        s_b, s_c, s_i, s_j = src.stride()
    dev = src.device
    T_in, T_out = triton.cdiv(h * w, CHUNK), triton.cdiv(out_h * out_w, CHUNK)
    out = torch.empty((B, 1, out_h, out_w), device=dev, dtype=torch.float32)
    flat = torch.empty((B,), device=dev, dtype=torch.bool)
    minmax = torch.empty((B, T_out, 2), device=dev, dtype=torch.float32)
    n_taps = taps.numel()
    direct = n_taps == 1 and 4 * out_h * out_w <= h * w  # saliency_direct() in C++
    # a map kept at its size: its last pass writes the output itself, no output pass
    in_place = not direct and (out_h, out_w) == (h, w)
    s0 = torch.empty((0 if direct or (in_place and n_taps == 1) else B, h * w), device=dev,
                     dtype=torch.float32)
    taps = taps.contiguous()
    weights = weights if weights.numel() else out
    has_gate = gate.numel() > 0
    gate_arg = gate.contiguous() if has_gate else out
    round_out = bool(quantize and not normalize)
    if not direct:
        last = in_place and n_taps == 1
        saliency_source_kernel[(B * T_in,)](
            src, weights, taps, gate_arg, out if last else s0, minmax, C, h, w, n_taps, s_b, s_c,
            s_i, s_j, MODE=int(src_mode), SQUARE=bool(square), QUANTIZE=bool(quantize),
            HAS_GATE=has_gate, TO_OUT=last, ROUND_OUT=round_out, CHUNK=CHUNK, **cm.LAUNCH_OPTIONS)
        if n_taps > 1:
            s1 = torch.empty((B, h * w), device=dev, dtype=torch.float32)
            for vertical, a, z in ((False, s0, s1), (True, s1, out if in_place else s0)):
                saliency_blur_kernel[(B * T_in,)](
                    a, taps, gate_arg, z, minmax, h, w, n_taps, VERTICAL=vertical,
                    SQUARE=vertical and bool(square), HAS_GATE=has_gate,
                    TO_OUT=vertical and in_place, ROUND_OUT=round_out, CHUNK=CHUNK,
                    **cm.LAUNCH_OPTIONS)
    if not in_place:
        saliency_output_kernel[(B * T_out,)](
            src, weights, gate_arg, s0, out, minmax, C, h, w, out_h, out_w, s_b, s_c, s_i, s_j,
            MODE=int(src_mode), QUANTIZE=bool(quantize), ROUND_OUT=round_out,
            RESIZE=(out_h, out_w) != (h, w), DIRECT=direct, HAS_GATE=has_gate, CHUNK=CHUNK,
            **cm.LAUNCH_OPTIONS)
    _finish(minmax, gate_arg if has_gate else None, out, flat, out_h * out_w, normalize)
    return out, flat


def spectral_residual_filter(spec):
    spec = spec.contiguous()
    B, h, w, _ = spec.shape
    out = torch.empty_like(spec)
    if out.numel():
        spectral_residual_kernel[(B,)](spec, out, h, w, BLOCK=CHUNK, **cm.LAUNCH_OPTIONS)
    return out


def fine_grained_saliency(grey, scales, gate):
    grey = grey.contiguous()
    has_gate = gate.numel() > 0
    gate = gate.contiguous() if has_gate else None
    B, _, H, W = grey.shape
    T = triton.cdiv(H * W, CHUNK)
    # the float64 integral image [B, H + 1, W + 1]: the reference's (torch's cumsums, on the device)
    integral = integral_image(grey[:, 0]).contiguous()
    out = torch.empty_like(grey)
    on = torch.empty((B, H * W), device=grey.device, dtype=torch.float64)
    off = torch.empty_like(on)
    on_off_max = torch.empty((B, T, 2), device=grey.device, dtype=torch.float64)
    minmax = torch.empty((B, T, 2), device=grey.device, dtype=torch.float32)
    # on the device once per scale list: a torch.tensor(..., device=cuda) per call is a blocking
    # host-to-device copy, a host sync on every call
    sc = device_constant(("fine_grained_scales", tuple(scales)), grey.device,
                         lambda: torch.tensor(list(scales), dtype=torch.int32))
    gate_arg = gate if has_gate else out
    fine_grained_contrast_kernel[(B * T,)](grey, integral, sc, gate_arg, on, off, on_off_max, H, W,
                                           sc.numel(), HAS_GATE=has_gate, CHUNK=CHUNK,
                                           **cm.LAUNCH_OPTIONS)
    fine_grained_intensity_kernel[(B * T,)](on, off, on_off_max, gate_arg, out, minmax, H * W,
                                            HAS_GATE=has_gate, CHUNK=CHUNK,
                                            BLOCK_T=cm.next_pow2(T), **cm.LAUNCH_OPTIONS)
    _finish(minmax, gate, out, None, H * W, normalize=True)
    return out
