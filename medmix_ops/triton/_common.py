"""Triton helpers shared by every kernel: reflect indexing, Gaussian taps, rounding, launch sizes.

Interpreter-safe habits (TRITON_INTERPRET=1 on CPU): loop variables are plain ints there, so they
never get `.to()`; bf16 is loaded and converted to fp32 before any arithmetic; one launch config.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import _interpreter_compat  # noqa: F401  (triton 3.6's interpreter under numpy >= 2.4)

# Options of every launch. No fused multiply-adds: `acc += w * v` must round as the C++ kernels
# round it (the CPU build never uses FMA, nvcc builds with --fmad=false), or a .5 tie of a
# uint8 grey value or a blurred alpha goes the other way on the GPU than on the CPU. The
# kernels are memory-bound, so this costs nothing; the interpreter ignores the option.
LAUNCH_OPTIONS = {"enable_fp_fusion": False}


@triton.jit
def reflect_index(i, n):
    """Reflect border without repeating the edge pixel, periodic beyond one reflection
    (same as csrc/common/gaussian_taps.h). i: int32 tensor, n: int32 scalar >= 1."""
    period = tl.maximum(2 * n - 2, 1)
    m = i % period
    m = tl.where(m < 0, m + period, m)  # C-style % on GPU, floor-style in the interpreter
    return tl.where(m < n, m, period - m)


@triton.jit
def gaussian_radius(sigma):
    """ceil(3 sigma) computed in float64 from the float32 sigma, as the C++ kernels do."""
    r3 = 3.0 * sigma.to(tl.float64)
    r = r3.to(tl.int32)
    return tl.where(r.to(tl.float64) < r3, r + 1, r)


@triton.jit
def gaussian_inv_two_sigma_sq(sigma, COMPUTE: tl.constexpr):
    s = sigma.to(COMPUTE)
    return tl.where(s > 0, 1.0 / tl.maximum(2.0 * s * s, 1e-30), 0.0).to(COMPUTE)


@triton.jit
def gaussian_taps(r, inv, TAPS: tl.constexpr, COMPUTE: tl.constexpr):
    """Normalised taps as a [TAPS] vector: entry k is tap t = k - TAPS // 2, zero for |t| > r.
    TAPS is a power of two >= 2r + 1 (a compile-time bound from the host's max radius)."""
    t = tl.arange(0, TAPS) - TAPS // 2
    tf = t.to(COMPUTE)
    w = tl.where(tl.abs(t) <= r, tl.exp(-tf * tf * inv), 0.0).to(COMPUTE)
    return w / tl.sum(w, axis=0)


def taps_bound(max_radius: int) -> int:
    """The TAPS constexpr for a max radius: few distinct values, so few compiled variants."""
    return triton.next_power_of_2(2 * int(max_radius) + 1)


@triton.jit
def round_half_even(x):
    """torch.round semantics (ties to even) without libdevice, so the interpreter agrees."""
    f = tl.floor(x)
    d = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    return tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)


@triton.jit
def store_converted(ptr, value, mask, IS_UINT8: tl.constexpr):
    """Stores a compute-dtype value in ptr's dtype; uint8 rounds half to even and saturates."""
    if IS_UINT8:
        v = round_half_even(tl.minimum(tl.maximum(value, 0.0), 255.0))
        tl.store(ptr, v.to(tl.uint8), mask=mask)
    else:
        tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


@triton.jit
def sample_chunk(n, CHUNK: tl.constexpr):
    """This program's chunk of a (sample, CHUNK-pixel chunk) grid over n pixels a sample:
    (program id = partial index, sample, pixel indices, their mask, chunks a sample)."""
    pid = tl.program_id(0).to(tl.int64)
    T = tl.cdiv(n, CHUNK)
    b = pid // T
    k = (pid % T) * CHUNK + tl.arange(0, CHUNK)
    return pid, b, k, k < n, T


@triton.jit
def store_chunk_minmax(minmax_ptr, pid, v, m):
    """This chunk's (min, max) of v where m -> minmax[pid, 0 / 1] (read by sample_minmax)."""
    tl.store(minmax_ptr + pid * 2, tl.min(tl.where(m, v, float("inf")), axis=0))
    tl.store(minmax_ptr + pid * 2 + 1, tl.max(tl.where(m, v, float("-inf")), axis=0))


@triton.jit
def sample_minmax(minmax_ptr, b, T, BLOCK_T: tl.constexpr):
    """Sample b's (min, max) from its T chunk partials minmax[b, t, 0 / 1] (BLOCK_T >= T)."""
    t = tl.arange(0, BLOCK_T)
    m = t < T
    lo = tl.min(tl.load(minmax_ptr + (b * T + t) * 2, mask=m, other=float("inf")), axis=0)
    hi = tl.max(tl.load(minmax_ptr + (b * T + t) * 2 + 1, mask=m, other=float("-inf")), axis=0)
    return lo, hi


@triton.jit
def is_flat(lo, hi):
    """A map whose range is at most 1e-5 of its magnitude is flat (csrc/common/saliency.h)."""
    mag = tl.maximum(tl.abs(lo), tl.abs(hi))
    return not_(hi - lo > 1e-5 * mag)


@triton.jit
def not_(c):
    return c == 0


@triton.jit
def normalize(v, lo, hi):
    """(v - lo) / (hi - lo), 0 for a flat map."""
    flat = is_flat(lo, hi)
    return tl.where(flat, 0.0, (v - lo) / tl.where(flat, 1.0, hi - lo))
