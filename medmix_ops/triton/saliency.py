"""Saliency kernels in Triton: saliency_map and fine_grained_saliency run one program per sample
(several passes over that sample, through per-sample scratch, separated by barriers);
spectral_residual_filter is elementwise over the spectrum. Contracts: csrc/ops.cpp."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.saliency import integral_image
from . import _common as cm

BLOCK = 1024  # pixels per step of a per-sample loop


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
def saliency_map_kernel(src_ptr, w_ptr, taps_ptr, gate_ptr, out_ptr, flat_ptr, s0_ptr, s1_ptr,
                        C, h, w, out_h, out_w, T, s_b, s_c, s_i, s_j,
                        MODE: tl.constexpr, SQUARE: tl.constexpr, NORMALIZE: tl.constexpr,
                        QUANTIZE: tl.constexpr, RESIZE: tl.constexpr, DIRECT: tl.constexpr,
                        HAS_GATE: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    hw = h * w
    n_out = out_h * out_w
    s0 = s0_ptr + b * hw
    s1 = s1_ptr + b * hw
    out = out_ptr + b * n_out
    p0 = src_ptr + b * s_b
    wb = w_ptr + b * C
    if HAS_GATE:
        gate_on = tl.load(gate_ptr + b) != 0
    else:
        gate_on = b >= 0  # always true, but a tensor like the gated case
    if gate_on:
        if not DIRECT:
            r = T // 2
            tap0 = tl.load(taps_ptr)
            # A0: source values -> s0 (with the single tap, and the square, when T == 1)
            for start in range(0, hw, BLOCK):
                k = start + tl.arange(0, BLOCK)
                m = k < hw
                v = _source_tap(p0, k // w, k % w, s_i, s_j, s_c, C, wb, m, MODE, QUANTIZE)
                if T == 1:
                    v = v * tap0
                    if SQUARE:
                        v = v * v
                tl.store(s0 + k, v, mask=m)
            tl.debug_barrier()
            if T > 1:
                # A1: horizontal taps s0 -> s1; A2: vertical taps s1 -> s0 (squared if asked)
                for start in range(0, hw, BLOCK):
                    k = start + tl.arange(0, BLOCK)
                    m = k < hw
                    i = k // w
                    j = k % w
                    acc = tl.zeros([BLOCK], dtype=tl.float32)
                    for t in range(T):
                        jj = cm.reflect_index(j + (t - r), w)
                        acc += tl.load(taps_ptr + t) * tl.load(s0 + i * w + jj, mask=m, other=0.0)
                    tl.store(s1 + k, acc, mask=m)
                tl.debug_barrier()
                for start in range(0, hw, BLOCK):
                    k = start + tl.arange(0, BLOCK)
                    m = k < hw
                    i = k // w
                    j = k % w
                    acc = tl.zeros([BLOCK], dtype=tl.float32)
                    for t in range(T):
                        ii = cm.reflect_index(i + (t - r), h)
                        acc += tl.load(taps_ptr + t) * tl.load(s1 + ii * w + j, mask=m, other=0.0)
                    if SQUARE:
                        acc = acc * acc
                    tl.store(s0 + k, acc, mask=m)
                tl.debug_barrier()
        # B: the map at (out_h, out_w) before normalisation, with its min / max
        lo = tl.full([BLOCK], float("inf"), tl.float32)
        hi = tl.full([BLOCK], float("-inf"), tl.float32)
        for start in range(0, n_out, BLOCK):
            k = start + tl.arange(0, BLOCK)
            m = k < n_out
            if DIRECT:
                v = _bilinear_source(p0, s_i, s_j, s_c, C, wb, h, w, k // out_w, k % out_w,
                                     out_h, out_w, m, MODE, QUANTIZE)
            else:
                v = _sample(s0, h, w, k // out_w, k % out_w, out_h, out_w, m, RESIZE)
            if QUANTIZE and not NORMALIZE:
                v = cm.round_half_even(v)
            tl.store(out + k, v, mask=m)
            lo = tl.minimum(lo, tl.where(m, v, float("inf")))
            hi = tl.maximum(hi, tl.where(m, v, float("-inf")))
        lo_s = tl.min(lo, axis=0)
        hi_s = tl.max(hi, axis=0)
        tl.store(flat_ptr + b, cm.is_flat(lo_s, hi_s))
        if NORMALIZE:
            tl.debug_barrier()
            for start in range(0, n_out, BLOCK):
                k = start + tl.arange(0, BLOCK)
                m = k < n_out
                tl.store(out + k, cm.normalize(tl.load(out + k, mask=m, other=0.0), lo_s, hi_s), mask=m)
    else:
        tl.store(flat_ptr + b, True)
        for start in range(0, n_out, BLOCK):
            k = start + tl.arange(0, BLOCK)
            tl.store(out + k, tl.zeros([BLOCK], dtype=tl.float32), mask=k < n_out)


@triton.jit
def _log_amplitude(spec, k, mask):
    re = tl.load(spec + 2 * k, mask=mask, other=1.0)
    im = tl.load(spec + 2 * k + 1, mask=mask, other=0.0)
    return tl.log(tl.maximum(tl.sqrt(re * re + im * im), 1e-30))


@triton.jit
def _reflect1(i, n):
    """One reflection (the 3x3 box never reaches further); n == 1 maps to 0."""
    i = tl.where(i < 0, -i, tl.where(i >= n, 2 * (n - 1) - i, i))
    return tl.where(n == 1, 0, i)


@triton.jit
def spectral_residual_kernel(spec_ptr, out_ptr, total, h, w, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = idx < total
    hw = h * w
    b = idx // hw
    k = idx % hw
    i = k // w
    j = k % w
    spec = spec_ptr + b * hw * 2
    box = tl.zeros([BLOCK], dtype=tl.float32)
    for di in range(-1, 2):
        for dj in range(-1, 2):
            box += _log_amplitude(spec, _reflect1(i + di, h) * w + _reflect1(j + dj, w), m)
    re = tl.load(spec + 2 * k, mask=m, other=1.0)
    im = tl.load(spec + 2 * k + 1, mask=m, other=0.0)
    amp = tl.sqrt(re * re + im * im)
    mag = tl.exp(_log_amplitude(spec, k, m) - box / 9.0)
    pos = amp > 0
    safe = tl.where(pos, amp, 1.0)
    tl.store(out_ptr + 2 * idx, tl.where(pos, mag * (re / safe), mag), mask=m)
    tl.store(out_ptr + 2 * idx + 1, tl.where(pos, mag * (im / safe), 0.0), mask=m)


@triton.jit
def fine_grained_kernel(grey_ptr, S_ptr, scales_ptr, out_ptr, on_ptr, off_ptr, H, W, NS,
                        BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    hw = H * W
    W1 = W + 1
    S = S_ptr + b * (H + 1) * W1
    on_s = on_ptr + b * hw
    off_s = off_ptr + b * hw
    out = out_ptr + b * hw
    on_max = tl.zeros([BLOCK], dtype=tl.float64)
    off_max = tl.zeros([BLOCK], dtype=tl.float64)
    # A: on / off contrast summed over the scales (float64, like the integral image)
    for start in range(0, hw, BLOCK):
        k = start + tl.arange(0, BLOCK)
        m = k < hw
        y = k // W
        x = k % W
        c = tl.load(grey_ptr + b * hw + k, mask=m, other=0.0).to(tl.float64)
        on = tl.zeros([BLOCK], dtype=tl.float64)
        off = tl.zeros([BLOCK], dtype=tl.float64)
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
        tl.store(on_s + k, on, mask=m)
        tl.store(off_s + k, off, mask=m)
        on_max = tl.maximum(on_max, tl.where(m, on, 0.0))
        off_max = tl.maximum(off_max, tl.where(m, off, 0.0))
    tl.debug_barrier()
    mon = tl.max(on_max, axis=0)
    moff = tl.max(off_max, axis=0)
    # B: intensity = on / max(on) + off / max(off), its min / max
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    hi = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, hw, BLOCK):
        k = start + tl.arange(0, BLOCK)
        m = k < hw
        on = tl.load(on_s + k, mask=m, other=0.0)
        off = tl.load(off_s + k, mask=m, other=0.0)
        v = (tl.where(mon > 0, on / tl.where(mon > 0, mon, 1.0), 0.0)
             + tl.where(moff > 0, off / tl.where(moff > 0, moff, 1.0), 0.0)).to(tl.float32)
        tl.store(out + k, v, mask=m)
        lo = tl.minimum(lo, tl.where(m, v, float("inf")))
        hi = tl.maximum(hi, tl.where(m, v, float("-inf")))
    tl.debug_barrier()
    lo_s = tl.min(lo, axis=0)
    hi_s = tl.max(hi, axis=0)
    # C: normalise in place
    for start in range(0, hw, BLOCK):
        k = start + tl.arange(0, BLOCK)
        m = k < hw
        v = tl.load(out + k, mask=m, other=0.0)
        tl.store(out + k, cm.normalize(v, lo_s, hi_s), mask=m)


def saliency_map(src, src_mode, weights, taps, square, out_h, out_w, normalize, quantize, gate):
    B = src.shape[0]
    if src_mode == 4:
        C, h, w = 1, src.shape[1], src.shape[2]
        s_b, s_i, s_j, s_c = src.stride(0), src.stride(1), src.stride(2), src.stride(3)
    else:
        C, h, w = src.shape[1], src.shape[2], src.shape[3]
        s_b, s_c, s_i, s_j = src.stride()
    out = torch.empty((B, 1, out_h, out_w), device=src.device, dtype=torch.float32)
    flat = torch.empty((B,), device=src.device, dtype=torch.bool)
    direct = taps.numel() == 1 and 4 * out_h * out_w <= h * w  # saliency_direct() in C++
    s0 = torch.empty((0 if direct else B, h * w), device=src.device, dtype=torch.float32)
    s1 = torch.empty((B, h * w), device=src.device, dtype=torch.float32) if taps.numel() > 1 else s0
    has_gate = gate.numel() > 0
    saliency_map_kernel[(B,)](
        src, weights if weights.numel() else out, taps.contiguous(), gate if has_gate else out,
        out, flat, s0, s1, C, h, w, out_h, out_w, taps.numel(), s_b, s_c, s_i, s_j,
        MODE=int(src_mode), SQUARE=bool(square), NORMALIZE=bool(normalize), QUANTIZE=bool(quantize),
        RESIZE=(out_h, out_w) != (h, w), DIRECT=direct, HAS_GATE=has_gate, BLOCK=BLOCK,
        **cm.LAUNCH_OPTIONS,
    )
    return out, flat


def spectral_residual_filter(spec):
    spec = spec.contiguous()
    B, h, w, _ = spec.shape
    out = torch.empty_like(spec)
    total = B * h * w
    spectral_residual_kernel[(triton.cdiv(total, BLOCK),)](spec, out, total, h, w, BLOCK=BLOCK,
                                                          **cm.LAUNCH_OPTIONS)
    return out


def fine_grained_saliency(grey, scales):
    grey = grey.contiguous()
    B, _, H, W = grey.shape
    # the float64 integral image [B, H + 1, W + 1]: the reference's (torch's cumsums, on the device)
    integral = integral_image(grey[:, 0]).contiguous()
    out = torch.empty_like(grey)
    on = torch.empty((B, H * W), device=grey.device, dtype=torch.float64)
    off = torch.empty_like(on)
    sc = torch.tensor(list(scales), device=grey.device, dtype=torch.int32)
    fine_grained_kernel[(B,)](grey, integral, sc, out, on, off, H, W, sc.numel(), BLOCK=BLOCK,
                              **cm.LAUNCH_OPTIONS)
    return out
