"""patch_ratio_pool in Triton: patch_pool (one program per (sample, cell row)) and patch_ratio
(one program per sample). Contracts: csrc/ops.cpp."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import LAUNCH_OPTIONS, next_pow2


@triton.jit
def patch_pool_kernel(a_ptr, b_ptr, pooled_ptr, minmax_ptr, H, W, patch, gh, gw,
                      BLOCK_P: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // gh
    gi = pid % gh
    dy = tl.arange(0, BLOCK_P)[:, None]
    dx = tl.arange(0, BLOCK_P)[None, :]
    y = gi * patch + dy
    # [1]-vectors, not Python floats: loop-carried values keep one type when compiled
    lo_a = tl.full([1], float("inf"), tl.float32)
    hi_a = tl.full([1], float("-inf"), tl.float32)
    lo_b = tl.full([1], float("inf"), tl.float32)
    hi_b = tl.full([1], float("-inf"), tl.float32)
    for gj in range(gw):
        x = gj * patch + dx
        m = (dy < patch) & (dx < patch) & (y < H) & (x < W)
        off = (bi * H + y) * W + x
        sa = tl.sum(tl.sum(tl.load(a_ptr + off, mask=m, other=0.0), axis=1), axis=0)
        sb = tl.sum(tl.sum(tl.load(b_ptr + off, mask=m, other=0.0), axis=1), axis=0)
        n = (tl.minimum(gi * patch + patch, H) - gi * patch) * (tl.minimum(gj * patch + patch, W) - gj * patch)
        ma = sa / n.to(tl.float32)
        mb = sb / n.to(tl.float32)
        tl.store(pooled_ptr + ((bi * 2) * gh + gi) * gw + gj, ma)
        tl.store(pooled_ptr + ((bi * 2 + 1) * gh + gi) * gw + gj, mb)
        lo_a = tl.minimum(lo_a, ma)
        hi_a = tl.maximum(hi_a, ma)
        lo_b = tl.minimum(lo_b, mb)
        hi_b = tl.maximum(hi_b, mb)
    out = minmax_ptr + (bi * gh + gi) * 4
    tl.store(out, tl.min(lo_a, axis=0))
    tl.store(out + 1, tl.max(hi_a, axis=0))
    tl.store(out + 2, tl.min(lo_b, axis=0))
    tl.store(out + 3, tl.max(hi_b, axis=0))


@triton.jit
def _level(p, lo, hi):
    return cm.normalize(p, lo, hi) / 2.0 + 0.5


@triton.jit
def patch_ratio_kernel(pooled_ptr, minmax_ptr, ratio_ptr, mean_ptr, gh, gw, alpha,
                       BLOCK: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    lo_a = tl.full([BLOCK], float("inf"), tl.float32)
    hi_a = tl.full([BLOCK], float("-inf"), tl.float32)
    lo_b = tl.full([BLOCK], float("inf"), tl.float32)
    hi_b = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, gh, BLOCK):
        g = start + tl.arange(0, BLOCK)
        m = g < gh
        row = minmax_ptr + (bi * gh + g) * 4
        lo_a = tl.minimum(lo_a, tl.load(row, mask=m, other=float("inf")))
        hi_a = tl.maximum(hi_a, tl.load(row + 1, mask=m, other=float("-inf")))
        lo_b = tl.minimum(lo_b, tl.load(row + 2, mask=m, other=float("inf")))
        hi_b = tl.maximum(hi_b, tl.load(row + 3, mask=m, other=float("-inf")))
    la = tl.min(lo_a, axis=0)
    ha = tl.max(hi_a, axis=0)
    lb = tl.min(lo_b, axis=0)
    hb = tl.max(hi_b, axis=0)
    n = gh * gw
    # tl.full casts alpha to float32 in both modes (an fp64 scalar under torch.compile, a Python
    # float in the interpreter, where .to() does not exist).
    cap = tl.full([BLOCK], alpha, tl.float32)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        k = start + tl.arange(0, BLOCK)
        m = k < n
        pa = tl.load(pooled_ptr + (bi * 2) * n + k, mask=m, other=0.0)
        pb = tl.load(pooled_ptr + (bi * 2 + 1) * n + k, mask=m, other=0.0)
        r = tl.minimum(tl.maximum(_level(pa, la, ha), _level(pb, lb, hb)), cap)
        tl.store(ratio_ptr + bi * n + k, r, mask=m)
        total += tl.where(m, r, 0.0)
    tl.store(mean_ptr + bi, tl.sum(total, axis=0) / n.to(tl.float32))


def patch_pool(s_a, s_b, patch, pad):
    s_a = s_a.contiguous()
    s_b = s_b.contiguous()
    B, _, H, W = s_a.shape
    gh, gw = triton.cdiv(H, patch), triton.cdiv(W, patch)
    pooled = torch.empty((B, 2, gh, gw), device=s_a.device, dtype=torch.float32)
    minmax = torch.empty((B, gh, 4), device=s_a.device, dtype=torch.float32)
    patch_pool_kernel[(B * gh,)](s_a, s_b, pooled, minmax, H, W, patch, gh, gw,
                                 BLOCK_P=next_pow2(patch), **LAUNCH_OPTIONS)
    return pooled, minmax


def patch_ratio(pooled, minmax, alpha):
    pooled = pooled.contiguous()
    minmax = minmax.contiguous()
    B, _, gh, gw = pooled.shape
    ratios = torch.empty((B, gh, gw), device=pooled.device, dtype=torch.float32)
    mean = torch.empty((B,), device=pooled.device, dtype=torch.float32)
    patch_ratio_kernel[(B,)](pooled, minmax, ratios, mean, gh, gw, float(alpha), BLOCK=256,
                             **LAUNCH_OPTIONS)
    return ratios, mean
