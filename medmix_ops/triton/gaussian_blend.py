"""gaussian_blend in Triton: one program per BLOCK_H x BLOCK_W tile of one sample.

The blurred mask of the tile is built in registers: for each input row of the tile plus its
vertical halo, a horizontal pass (one [BLOCK_W, TAPS] gather) gives one row; it is added into
every output row with that row's vertical tap (zero outside the radius). Then all C channels are blended (forward) or the
two gradients written (backward). lam: one partial sum per tile, summed by torch afterwards.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as cm


@triton.jit
def _alpha_tile(mask_ptr, sigma_ptr, bi, h0, w0, H, W,
                BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TAPS: tl.constexpr,
                COMPUTE: tl.constexpr):
    """Blurred mask of rows h0..h0+BLOCK_H, cols w0..w0+BLOCK_W of sample bi: [BLOCK_H, BLOCK_W].
    Per input row: one [BLOCK_W, TAPS] gather does the horizontal taps; the row then adds into
    every output row with its vertical tap."""
    sigma = tl.load(sigma_ptr + bi)
    r = cm.gaussian_radius(sigma)
    taps = cm.gaussian_taps(r, cm.gaussian_inv_two_sigma_sq(sigma, COMPUTE), TAPS, COMPUTE)
    rows = h0 + tl.arange(0, BLOCK_H)
    cols = w0 + tl.arange(0, BLOCK_W)
    t = tl.arange(0, TAPS) - TAPS // 2
    in_radius = tl.abs(t) <= r
    # Source columns of every (output column, tap) pair; taps outside the radius load nothing.
    src_cols = cm.reflect_index(cols[:, None] + t[None, :], W)
    base = mask_ptr + bi * H * W
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=COMPUTE)
    for i in range(h0 - r, tl.minimum(h0 + BLOCK_H, H) + r):
        src_row = cm.reflect_index(t * 0 + i, H)[None, :]  # the row index, broadcastable
        m = tl.load(base + src_row * W + src_cols, mask=in_radius[None, :], other=0.0)
        hrow = tl.sum(m.to(COMPUTE) * taps[None, :], axis=1)
        # Vertical tap of input row i for each output row: taps[i - row + TAPS // 2], built by
        # comparison because register vectors cannot be indexed.
        dy = i - rows
        wy = tl.sum(tl.where(t[None, :] == dy[:, None], taps[None, :], 0.0), axis=1)
        acc += wy[:, None] * hrow[None, :]
    # A blurred alpha is at most 1, as in every backend (the rounded taps can sum to an ulp
    # above 1); NaN stays, and sigma = 0 leaves the mask as given.
    return tl.where((acc > 1.0) & (r > 0), 1.0, acc)


@triton.jit
def _tile_coords(H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles = tl.cdiv(H, BLOCK_H) * tiles_w
    bi = pid // tiles
    tile = pid % tiles
    h0 = ((tile // tiles_w) * BLOCK_H).to(tl.int32)
    w0 = ((tile % tiles_w) * BLOCK_W).to(tl.int32)
    return pid, bi, h0, w0


@triton.jit
def gaussian_blend_forward_kernel(
    a_ptr, b_ptr, mask_ptr, sigma_ptr, out_ptr, alpha_ptr, partial_ptr, rows_ptr, Bb,
    C, H, W,
    sa_n, sa_c, sa_h, sa_w, sb_n, sb_c, sb_h, sb_w, so_n, so_c, so_h, so_w,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TAPS: tl.constexpr, COMPUTE: tl.constexpr,
    IS_UINT8: tl.constexpr, WRITE_ALPHA: tl.constexpr, HAS_ROWS: tl.constexpr,
):
    pid, bi, h0, w0 = _tile_coords(H, W, BLOCK_H, BLOCK_W)
    if HAS_ROWS:  # the partner row, clamped so a bad index can never read outside b
        bj = tl.minimum(tl.maximum(tl.load(rows_ptr + bi), 0), Bb - 1)
    else:
        bj = bi
    alpha = _alpha_tile(mask_ptr, sigma_ptr, bi, h0, w0, H, W, BLOCK_H, BLOCK_W, TAPS, COMPUTE)
    rows = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)[:, None]
    cols = (w0 + tl.arange(0, BLOCK_W)).to(tl.int64)[None, :]
    valid = (rows < H) & (cols < W)
    for c in range(C):
        pa = a_ptr + bi * sa_n + c * sa_c + rows * sa_h + cols * sa_w
        pb = b_ptr + bj * sb_n + c * sb_c + rows * sb_h + cols * sb_w
        # only the image a weight of exactly 1 or 0 takes is read (as the CUDA kernel does): a
        # hard mask's tile reads one image where it lies wholly inside or outside the box
        va = tl.load(pa, mask=valid & (alpha != 0.0), other=0).to(COMPUTE)
        vb = tl.load(pb, mask=valid & (alpha != 1.0), other=0).to(COMPUTE)
        # a weight of exactly 1 or 0 selects (csrc/common/gaussian_blend.h): no 0 * inf = NaN
        out = tl.where(alpha == 1.0, va, tl.where(alpha == 0.0, vb, alpha * va + (1.0 - alpha) * vb))
        po = out_ptr + bi * so_n + c * so_c + rows * so_h + cols * so_w
        cm.store_converted(po, out, valid, IS_UINT8)
    if WRITE_ALPHA:
        tl.store(alpha_ptr + (bi * H + rows) * W + cols, alpha, mask=valid)
    tl.store(partial_ptr + pid, tl.sum(tl.sum(tl.where(valid, alpha, 0.0), axis=1), axis=0))


@triton.jit
def gaussian_blend_backward_kernel(
    g_ptr, mask_ptr, sigma_ptr, ga_ptr, gb_ptr,
    C, H, W,
    sg_n, sg_c, sg_h, sg_w, sa_n, sa_c, sa_h, sa_w, sb_n, sb_c, sb_h, sb_w,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TAPS: tl.constexpr, COMPUTE: tl.constexpr,
):
    pid, bi, h0, w0 = _tile_coords(H, W, BLOCK_H, BLOCK_W)
    alpha = _alpha_tile(mask_ptr, sigma_ptr, bi, h0, w0, H, W, BLOCK_H, BLOCK_W, TAPS, COMPUTE)
    rows = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)[:, None]
    cols = (w0 + tl.arange(0, BLOCK_W)).to(tl.int64)[None, :]
    valid = (rows < H) & (cols < W)
    for c in range(C):
        g = tl.load(g_ptr + bi * sg_n + c * sg_c + rows * sg_h + cols * sg_w, mask=valid,
                    other=0).to(COMPUTE)
        ga = alpha * g
        gb = (1.0 - alpha) * g
        pa = ga_ptr + bi * sa_n + c * sa_c + rows * sa_h + cols * sa_w
        pb = gb_ptr + bi * sb_n + c * sb_c + rows * sb_h + cols * sb_w
        tl.store(pa, ga.to(pa.dtype.element_ty), mask=valid)
        tl.store(pb, gb.to(pb.dtype.element_ty), mask=valid)


def _blocks(H: int, W: int) -> tuple[int, int]:
    """Tile shape. Interpreted programs are slow to start, so they get bigger tiles."""
    from .._backend import triton_interpreted

    cap_w, cap_h = (128, 64) if triton_interpreted() else (64, 16)
    return min(cap_h, triton.next_power_of_2(H)), min(cap_w, triton.next_power_of_2(W))


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def gaussian_blend(a, b, mask, sigma, max_radius: int, return_alpha: bool, b_index=None, out=None):
    """Host launcher. a, b: [B, C, H, W] (any strides); mask: contiguous [B, 1, H, W] float32
    (float64 for float64 images); sigma: float32 [B]; out: None (a new tensor like a) or a
    checked [B, C, H, W] of a's dtype, any strides. Returns (out, lam, alpha or empty).
    max_radius (>= every sample's ceil(3 sigma)) bounds the taps vector at compile time."""
    B, C, H, W = a.shape
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    if out is None:
        out = torch.empty_like(a)
    alpha = a.new_empty((B, 1, H, W) if return_alpha else (0,), dtype=acc)
    BH, BW = _blocks(H, W)
    tiles = triton.cdiv(H, BH) * triton.cdiv(W, BW)
    partial = torch.empty((B, tiles), device=a.device, dtype=acc)
    gaussian_blend_forward_kernel[(B * tiles,)](
        a, b, mask.contiguous(), sigma.contiguous(), out,
        alpha if return_alpha else partial,  # never written when WRITE_ALPHA is off
        partial, b_index.contiguous() if b_index is not None else partial, b.shape[0], C, H, W,
        *a.stride(), *b.stride(), *out.stride(),
        BLOCK_H=BH, BLOCK_W=BW, TAPS=cm.taps_bound(max_radius), COMPUTE=_compute_dtype(a.dtype),
        IS_UINT8=a.dtype == torch.uint8, WRITE_ALPHA=return_alpha, HAS_ROWS=b_index is not None,
        **cm.LAUNCH_OPTIONS,
    )
    return out, partial.sum(1) / (H * W), alpha


def gaussian_blend_backward(grad_out, mask, sigma, max_radius: int):
    """Host launcher of the fused backward: (alpha * grad_out, (1 - alpha) * grad_out)."""
    B, C, H, W = grad_out.shape
    grad_a = torch.empty_like(grad_out)
    grad_b = torch.empty_like(grad_out)
    BH, BW = _blocks(H, W)
    tiles = triton.cdiv(H, BH) * triton.cdiv(W, BW)
    gaussian_blend_backward_kernel[(B * tiles,)](
        grad_out, mask.contiguous(), sigma.contiguous(), grad_a, grad_b, C, H, W,
        *grad_out.stride(), *grad_a.stride(), *grad_b.stride(),
        BLOCK_H=BH, BLOCK_W=BW, TAPS=cm.taps_bound(max_radius), COMPUTE=_compute_dtype(grad_out.dtype),
        **cm.LAUNCH_OPTIONS,
    )
    return grad_a, grad_b
