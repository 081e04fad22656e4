"""Absolute-difference-map kernels in Triton: one program per (sample, 4096-pixel chunk);
per-chunk partials, reduced by the consumers, so results do not depend on scheduling.
Contracts: csrc/ops.cpp."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import LAUNCH_OPTIONS, next_pow2
from ..ops.adm import mixed_output

CHUNK = 4096  # kAdmChunk in csrc/common/adm.h
BINS = 256


@triton.jit
def _sample_range(minmax_ptr, bi, T, BLOCK_T: tl.constexpr):
    """(lo, range) of sample bi from its T chunk partials; range 0 when the sample is flat."""
    lo, hi = cm.sample_minmax(minmax_ptr, bi, T, BLOCK_T)
    return lo, tl.where(cm.is_flat(lo, hi), 0.0, hi - lo)


@triton.jit
def _score(x_ptr, h_ptr, bi, y, x, m, C, sx_n, sx_c, sx_h, sx_w, sh_n, sh_c, sh_h, sh_w, lo, rng):
    """A = mean_c((|x_hat - x| - lo) / rng); 0 where the sample's range is 0."""
    acc = tl.zeros(y.shape, dtype=tl.float32)
    safe = tl.where(rng > 0, rng, 1.0)
    for c in range(C):
        xv = tl.load(x_ptr + bi * sx_n + c * sx_c + y * sx_h + x * sx_w, mask=m, other=0).to(tl.float32)
        hv = tl.load(h_ptr + bi * sh_n + c * sh_c + y * sh_h + x * sh_w, mask=m, other=0).to(tl.float32)
        acc += (tl.abs(hv - xv) - lo) / safe
    return tl.where(rng > 0, acc / C, 0.0)


@triton.jit
def adm_minmax_kernel(x_ptr, h_ptr, out_ptr, C, H, W, sx_n, sx_c, sx_h, sx_w,
                      sh_n, sh_c, sh_h, sh_w, CHUNK: tl.constexpr):
    pid, bi, k, m, T = cm.sample_chunk(H * W, CHUNK)
    y = k // W
    x = k % W
    lo = tl.full([CHUNK], float("inf"), tl.float32)
    hi = tl.full([CHUNK], float("-inf"), tl.float32)
    for c in range(C):
        xv = tl.load(x_ptr + bi * sx_n + c * sx_c + y * sx_h + x * sx_w, mask=m, other=0).to(tl.float32)
        hv = tl.load(h_ptr + bi * sh_n + c * sh_c + y * sh_h + x * sh_w, mask=m, other=0).to(tl.float32)
        d = tl.abs(hv - xv)
        lo = tl.minimum(lo, tl.where(m, d, float("inf")))
        hi = tl.maximum(hi, tl.where(m, d, float("-inf")))
    tl.store(out_ptr + pid * 2, tl.min(lo, axis=0))
    tl.store(out_ptr + pid * 2 + 1, tl.max(hi, axis=0))


@triton.jit
def adm_apply_kernel(x_ptr, h_ptr, minmax_ptr, thr_ptr, out_ptr, count_ptr, C, H, W,
                     sx_n, sx_c, sx_h, sx_w, sh_n, sh_c, sh_h, sh_w,
                     EMIT_SCORE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_T: tl.constexpr):
    pid, bi, k, m, T = cm.sample_chunk(H * W, CHUNK)
    lo, rng = _sample_range(minmax_ptr, bi, T, BLOCK_T)
    a = _score(x_ptr, h_ptr, bi, k // W, k % W, m, C, sx_n, sx_c, sx_h, sx_w,
               sh_n, sh_c, sh_h, sh_w, lo, rng)
    # A <= 1, so a threshold of 2 keeps nothing: a sample with M == m gets an empty mask.
    on = (a >= tl.where(rng > 0, tl.load(thr_ptr + bi), 2.0)) & m
    if EMIT_SCORE:
        tl.store(out_ptr + bi * H * W + k, a, mask=m)
    else:
        tl.store(out_ptr + bi * H * W + k, on.to(tl.float32), mask=m)
    tl.store(count_ptr + pid, tl.sum(on.to(tl.int32), axis=0))


@triton.jit
def adm_histogram_kernel(x_ptr, h_ptr, minmax_ptr, hist_ptr, C, H, W,
                         sx_n, sx_c, sx_h, sx_w, sh_n, sh_c, sh_h, sh_w,
                         CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BINS: tl.constexpr):
    pid, bi, k, m, T = cm.sample_chunk(H * W, CHUNK)
    lo, rng = _sample_range(minmax_ptr, bi, T, BLOCK_T)
    a = _score(x_ptr, h_ptr, bi, k // W, k % W, m, C, sx_n, sx_c, sx_h, sx_w,
               sh_n, sh_c, sh_h, sh_w, lo, rng)
    a = tl.where(a > 0.0, tl.minimum(a, 1.0), 0.0)  # NaN -> bin 0: a NaN cast to int indexes anywhere
    b = tl.minimum((a * BINS).to(tl.int32), BINS - 1)
    # Integer atomics: the histogram is exact whatever the order of the programs.
    tl.atomic_add(hist_ptr + bi * BINS + b, tl.full([CHUNK], 1, tl.int32), mask=m)


@triton.jit
def adm_mix_kernel(x_ptr, h_ptr, perm_ptr, minmax_ptr, lam_ptr, src_ptr, ref_ptr, count_ptr,
                   mask_ptr, B, C, H, W, sx_n, sx_c, sx_h, sx_w, sh_n, sh_c, sh_h, sh_w,
                   ss_n, ss_c, ss_h, ss_w, sr_n, sr_c, sr_h, sr_w,
                   CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, WRITE_MASK: tl.constexpr):
    pid, bi, k, m, T = cm.sample_chunk(H * W, CHUNK)
    y = k // W
    x = k % W
    # Clamped so that a bad index can never read outside x (the wrapper validates perm).
    pj = tl.minimum(tl.maximum(tl.load(perm_ptr + bi), 0), B - 1)
    lo, rng = _sample_range(minmax_ptr, bi, T, BLOCK_T)
    a = _score(x_ptr, h_ptr, bi, y, x, m, C, sx_n, sx_c, sx_h, sx_w, sh_n, sh_c, sh_h, sh_w, lo, rng)
    on = a >= tl.where(rng > 0, tl.load(lam_ptr + bi), 2.0)
    if WRITE_MASK:
        tl.store(mask_ptr + bi * H * W + k, on.to(tl.float32), mask=m)
    for c in range(C):
        own = tl.load(x_ptr + bi * sx_n + c * sx_c + y * sx_h + x * sx_w, mask=m, other=0)
        other = tl.load(x_ptr + pj * sx_n + c * sx_c + y * sx_h + x * sx_w, mask=m, other=0)
        tl.store(src_ptr + bi * ss_n + c * ss_c + y * ss_h + x * ss_w, tl.where(on, own, other), mask=m)
        tl.store(ref_ptr + bi * sr_n + c * sr_c + y * sr_h + x * sr_w, tl.where(on, other, own), mask=m)
    tl.store(count_ptr + pid, tl.sum((on & m).to(tl.int32), axis=0))


def _grid(x):
    B, _, H, W = x.shape
    T = triton.cdiv(H * W, CHUNK)
    return B, T


def adm_minmax(x, x_hat):
    B, T = _grid(x)
    out = torch.empty((B, T, 2), device=x.device, dtype=torch.float32)
    adm_minmax_kernel[(B * T,)](x, x_hat, out, x.shape[1], x.shape[2], x.shape[3],
                                *x.stride(), *x_hat.stride(), CHUNK=CHUNK, **LAUNCH_OPTIONS)
    return out


def adm_apply(x, x_hat, minmax, thr, emit_score):
    B, T = _grid(x)
    _, C, H, W = x.shape
    out = torch.empty((B, 1, H, W), device=x.device, dtype=torch.float32)
    count = torch.empty((B, T), device=x.device, dtype=torch.int32)
    adm_apply_kernel[(B * T,)](x, x_hat, minmax.contiguous(), thr.contiguous(), out, count, C, H, W,
                               *x.stride(), *x_hat.stride(), EMIT_SCORE=bool(emit_score),
                               CHUNK=CHUNK, BLOCK_T=next_pow2(T), **LAUNCH_OPTIONS)
    return out, count


def adm_histogram(x, x_hat, minmax):
    B, T = _grid(x)
    _, C, H, W = x.shape
    hist = torch.zeros((B, BINS), device=x.device, dtype=torch.int32)
    adm_histogram_kernel[(B * T,)](x, x_hat, minmax.contiguous(), hist, C, H, W,
                                   *x.stride(), *x_hat.stride(), CHUNK=CHUNK,
                                   BLOCK_T=next_pow2(T), BINS=BINS, **LAUNCH_OPTIONS)
    return hist


def adm_mix(x, x_hat, perm, lam, write_mask, mixed=None):
    """Writes into ``mixed`` ([2B, C, H, W], any strides) when given, else a new tensor. Two
    launches: the per-chunk ranges, then the mix."""
    B, T = _grid(x)
    _, C, H, W = x.shape
    minmax = adm_minmax(x, x_hat)
    mixed = mixed_output(x) if mixed is None else mixed
    x_src, x_ref = mixed[:B], mixed[B:]
    count = torch.empty((B, T), device=x.device, dtype=torch.int32)
    mask = torch.empty((B, 1, H, W) if write_mask else (0,), device=x.device, dtype=torch.float32)
    adm_mix_kernel[(B * T,)](x, x_hat, perm.contiguous(), minmax, lam.contiguous(),
                             x_src, x_ref, count, mask if write_mask else count, B, C, H, W,
                             *x.stride(), *x_hat.stride(), *x_src.stride(), *x_ref.stride(),
                             CHUNK=CHUNK, BLOCK_T=next_pow2(T), WRITE_MASK=bool(write_mask),
                             **LAUNCH_OPTIONS)
    return mixed, count, mask

