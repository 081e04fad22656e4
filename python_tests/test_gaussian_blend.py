"""gaussian_blend: every backend against an independent float64 reference, layouts, dtypes,
autograd, torch.library integration, determinism and bad input."""
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medmix_ops
from medmix_ops import gaussian_blend
from medmix_ops._validation import opmath_dtype
from medmix_ops import _backend

from conftest import HAS_CUDA
from helpers import TOLERANCES, assert_close, blend_f64, blur_f64, gaussian_kernel_1d

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8]

# (shape, sigma): odd sizes, 1x1, H and W below the radius, per-sample sigma with a zero, a row
# wider than one Triton tile (128), a column taller than one tile (64), sigma = 0.
CASES = [
    ((2, 3, 37, 53), 2.5),
    ((1, 1, 1, 1), 1.0),
    ((3, 2, 5, 4), 3.0),
    ((2, 3, 9, 7), [0.0, 1.3]),
    ((1, 3, 8, 130), 0.0),
    ((2, 1, 70, 3), 1.7),
]


def make_inputs(shape, dtype, device, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    if dtype == torch.uint8:
        a = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        b = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    else:
        a = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
        b = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    mask = (torch.rand((B, 1, H, W), generator=g) > 0.5).float()
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
        b = b.contiguous(memory_format=torch.channels_last)
    return a.to(device), b.to(device), mask.to(device)


# ---- the test reference itself, against third-party definitions ------------------------------

def test_reference_blur_matches_scipy_mirror_mode():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for (H, W), sigma in [((17, 23), 1.5), ((4, 3), 2.0), ((1, 9), 0.8), ((30, 2), 4.0)]:
        m = rng.random((H, W))
        r = math.ceil(3 * float(np.float32(sigma)))
        s = float(np.float32(sigma))
        want = ndimage.gaussian_filter1d(m, s, axis=0, mode="mirror", radius=r)
        want = ndimage.gaussian_filter1d(want, s, axis=1, mode="mirror", radius=r)
        np.testing.assert_allclose(blur_f64(m, sigma), want, atol=1e-12)


def test_reference_blur_matches_reflect_pad_conv():
    """Within one reflection the border is exactly F.pad(mode="reflect")."""
    torch.manual_seed(0)
    m = torch.rand(1, 1, 20, 31, dtype=torch.float64)
    w = torch.from_numpy(gaussian_kernel_1d(2.0))
    r = len(w) // 2
    padded = F.pad(m, (r, r, r, r), mode="reflect")
    want = F.conv2d(padded, (w[:, None] * w[None, :])[None, None])
    np.testing.assert_allclose(blur_f64(m[0, 0].numpy(), 2.0), want[0, 0].numpy(), atol=1e-12)


# ---- every backend against the float64 reference ----------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape,sigma", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_matches_float64_reference(device_backend, shape, sigma, dtype, channels_last):
    device, backend = device_backend
    a, b, mask = make_inputs(shape, dtype, device, channels_last=channels_last)
    out, lam, alpha = gaussian_blend(a, b, mask, sigma, return_alpha=True, backend=backend)
    want_out, want_lam, want_alpha = blend_f64(a, b, mask, sigma)

    assert out.dtype == dtype and out.shape == a.shape and out.device == a.device
    if channels_last and shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    acc_tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(alpha, want_alpha, acc_tol, acc_tol, "alpha")
    assert_close(lam, want_lam, acc_tol, acc_tol, "lam")
    atol, rtol = TOLERANCES[dtype]
    assert_close(out, want_out, atol, rtol, "out")
    if dtype == torch.uint8:  # rounding ties may differ by one, nothing else
        diff = (out.double().cpu().numpy() - want_out) != 0
        assert diff.mean() < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bfloat16])
def test_hard_mask_copies_pixels_exactly(device_backend, dtype):
    device, backend = device_backend
    a, b, mask = make_inputs((2, 3, 11, 13), dtype, device)
    out, lam = gaussian_blend(a, b, mask, 0.0, backend=backend)
    assert torch.equal(out, torch.where(mask.bool(), a, b))
    assert torch.allclose(lam, mask.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.float16, torch.float64])
@pytest.mark.parametrize("mask_kind", ["per_sample_constant", "hard", "soft"])
def test_sigma_zero_planes_path(device_backend, dtype, mask_kind):
    """sigma = 0 on NCHW images: the CPU kernel's whole-plane path (several chunks per plane at
    131 x 127, a per-sample constant mask as a stride-0 view that is never materialised),
    with partners gathered through b_index and alpha returned."""
    device, backend = device_backend
    B, C, H, W = 3, 2, 131, 127
    a, b, hard = make_inputs((B, C, H, W), dtype, device, seed=5)
    g = torch.Generator().manual_seed(6)
    if mask_kind == "per_sample_constant":
        mask = torch.tensor([0.0, 0.37, 1.0]).to(device).view(B, 1, 1, 1).expand(B, 1, H, W)
        assert mask.stride()[2:] == (0, 0)
    else:
        mask = hard if mask_kind == "hard" else torch.rand(B, 1, H, W, generator=g).to(device)
    perm = torch.tensor([2, 0, 0], device=device)
    out, lam, alpha = gaussian_blend(a, b, mask, 0.0, b_index=perm, return_alpha=True, backend=backend)
    want_out, want_lam, want_alpha = blend_f64(a, b[perm], mask.contiguous(), 0.0)
    atol, rtol = TOLERANCES[dtype]
    assert_close(out, want_out, atol, rtol, "out")
    acc_tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(lam, want_lam, acc_tol, acc_tol, "lam")
    assert_close(alpha, want_alpha, 0.0, 0.0, "alpha")
    if mask_kind == "per_sample_constant":  # weights 0 and 1 copy pixels bit for bit
        assert torch.equal(out[0], b[2]) and torch.equal(out[2], a[2])
    if mask_kind == "hard":
        assert torch.equal(out, torch.where(mask.bool(), a, b[perm]))


@pytest.mark.parametrize("layout", ["planes", "channels_last"])
@pytest.mark.parametrize("sigma", [0.0, 2.0], ids=["hard", "soft"])
def test_zero_weight_keeps_non_finite_pixels_out(device_backend, sigma, layout):
    """A weight of exactly 0 or 1 selects one image: inf / NaN in the other image there must
    not leak in as 0 * inf = NaN (a CutMix partner's bad pixel outside the box). Both the
    whole-plane (NCHW) and the pixel-major (channels_last) loops, hard and blurred masks: a
    blurred mask is exactly 0 beyond the radius from any 1 (its interior sums float taps and
    may stay just below 1, where the formula applies)."""
    device, backend = device_backend
    B, C, H, W = 2, 3, 29, 31
    g = torch.Generator().manual_seed(11)
    a, b = torch.rand(B, C, H, W, generator=g), torch.rand(B, C, H, W, generator=g)
    mask = torch.zeros(B, 1, H, W)
    mask[0, :, 3:20, 4:25] = 1
    mask[1, :, 10:, :] = 1
    # the kernel's own weights on clean images (a blurred interior may round to just below 1)
    alpha = gaussian_blend(a.to(device), b.to(device), mask.to(device), sigma, return_alpha=True,
                           backend=backend)[2].cpu()
    zero, one = (alpha == 0).expand(B, C, H, W), (alpha == 1).expand(B, C, H, W)
    assert zero.any() and (one.any() or sigma > 0)
    bad = torch.tensor([float("inf"), float("nan"), -float("inf")])
    pick = torch.randint(0, 3, (B, C, H, W), generator=g)
    a = torch.where(zero, bad[pick], a)  # the anchor is bad where it weighs nothing
    b = torch.where(one, bad[pick], b)   # the partner is bad where it weighs nothing
    if layout == "channels_last":
        a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    out, _ = gaussian_blend(a.to(device), b.to(device), mask.to(device), sigma, backend=backend)
    out = out.cpu()
    assert torch.equal(out[one], a[one]) and torch.equal(out[zero], b[zero])
    assert torch.isfinite(out).all()


def test_arbitrary_strides_and_expanded_mask(device_backend):
    """Sliced (non-dense) images, a and b in different layouts, a mask expanded over the batch."""
    device, backend = device_backend
    g = torch.Generator().manual_seed(3)
    big = torch.rand(3, 4, 20, 30, generator=g).to(device)
    a = big[:, 1:4, ::2, 3:26]                        # non-contiguous view
    b = torch.rand(3, 3, 10, 23, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(1, 1, 10, 23, generator=g) > 0.3).float().to(device).expand(3, 1, 10, 23)
    out, lam = gaussian_blend(a, b, mask, [0.5, 1.0, 2.0], backend=backend)
    want_out, want_lam, _ = blend_f64(a, b, mask, [0.5, 1.0, 2.0])
    assert_close(out, want_out, 2e-6, 2e-6, "out")
    assert_close(lam, want_lam, 1e-6, 1e-6, "lam")


def test_hard_mask_shared_by_the_batch(device_backend):
    """sigma = 0 with one mask broadcast over the batch (CutMix's box, batch stride 0) on an
    image of more than one 16384-pixel chunk: the CPU kernel sums the shared mask once, and
    lam and the images must equal those of the same mask materialised per sample, bit for bit."""
    device, backend = device_backend
    g = torch.Generator().manual_seed(5)
    B, C, H, W = 3, 2, 130, 131
    a = torch.rand(B, C, H, W, generator=g).to(device)
    b = torch.rand(B, C, H, W, generator=g).to(device)
    one = torch.rand(1, 1, H, W, generator=g)
    one = torch.where(one > 0.6, 1.0, torch.where(one < 0.3, 0.0, one)).to(device)
    perm = torch.tensor([2, 0, 1], device=device)
    out, lam = gaussian_blend(a, b, one.expand(B, 1, H, W), 0.0, b_index=perm, backend=backend)
    out_m, lam_m = gaussian_blend(a, b, one.expand(B, 1, H, W).contiguous(), 0.0, b_index=perm,
                                  backend=backend)
    assert torch.equal(out, out_m) and torch.equal(lam, lam_m)
    want_out, want_lam, _ = blend_f64(a, b[perm], one.expand(B, 1, H, W), 0.0)
    assert_close(out, want_out, 2e-6, 2e-6, "out")
    assert_close(lam, want_lam, 1e-6, 1e-6, "lam")


@pytest.mark.parametrize("shared", [False, True], ids=["per-sample", "shared"])
def test_hard_masks_binary_in_some_chunks_only(device_backend, shared):
    """sigma = 0 on a two-chunk image (16384-pixel chunks) where some chunks of the mask hold
    only 0 and 1 and others also soft values, one a hair below 1: the CPU kernel selects
    pixels in binary chunks and blends in the others, and both must match the float64
    reference; under weights of exactly 0 or 1 the kept image's non-finite pixels stay out."""
    device, backend = device_backend
    g = torch.Generator().manual_seed(11)
    B, C, H, W = 3, 3, 129, 130  # H * W = 16770: chunk 0 is 16384 pixels, chunk 1 is 386
    a = torch.rand(B, C, H, W, generator=g)
    b = torch.rand(B, C, H, W, generator=g)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.5).float()
    flat = mask.view(B, -1)
    flat[0, 16384 + 7] = 0.25                   # sample 0: chunk 0 binary, chunk 1 soft
    flat[2, 100] = float(np.nextafter(np.float32(1), np.float32(0)))  # sample 2: chunk 0 soft
    if shared:
        mask = mask[:1].expand(B, 1, H, W)
    # a partner's NaN / inf where its weight is exactly 0 (the anchor keeps the pixel)
    b.view(B, C, -1)[:, :, :16384].masked_fill_(mask.reshape(B, 1, -1)[:, :, :16384] == 1, float("nan"))
    a, b, mask = a.to(device), b.to(device), mask.to(device)
    out, lam = gaussian_blend(a, b, mask, 0.0, backend=backend)
    assert torch.isfinite(out).all()
    clean_b = torch.where(torch.isnan(b), torch.zeros_like(b), b)
    want_out, want_lam, _ = blend_f64(a, clean_b, mask, 0.0)
    assert_close(out, want_out, 2e-6, 2e-6, "out")
    assert_close(lam, want_lam, 1e-6, 1e-6, "lam")
    hard = (mask == 0) | (mask == 1)
    picked = torch.where(mask == 1, a, clean_b)
    assert torch.equal(out[hard.expand_as(out)], picked[hard.expand_as(out)])


def _every_pattern(dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, 128, 512]: every 16-bit pattern of a 16-bit float dtype (Inf, NaN, subnormals,
    -0.0 included), or every (a, b) byte pair's first byte for uint8 (the second: _partner)."""
    bits = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32)
    if dtype == torch.uint8:
        return (bits & 255).to(torch.uint8).view(1, 1, 128, 512)
    return bits.to(torch.int16).view(dtype).view(1, 1, 128, 512)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("path", ["per_sample_constant", "soft", "sigma", "channels_last"])
def test_cpu_stores_match_the_reference_bit_for_bit(dtype, path):
    """The C++ CPU kernel converts 16-bit floats and rounds uint8 with its own vector code
    (csrc/cpu/pixel_io.h), not c10's scalar conversions: on every 16-bit pattern (for uint8,
    every pair of bytes), under per-sample constant weights (0, 1, a 0.5 that makes uint8
    ties, weights outside [0, 1] that must saturate), soft per-pixel weights with exact 0s
    and 1s, a blurred mask and channels_last images, it must give the reference's bits
    (NaN for NaN)."""
    a1 = _every_pattern(dtype)
    b1 = a1.flatten().roll(12345).view_as(a1) if dtype != torch.uint8 else \
        (torch.arange(2 ** 16) // 256).to(torch.uint8).view_as(a1)  # every (a, b) byte pair
    B, H, W = 8, 128, 512
    a, b = a1.expand(B, 3, H, W).clone(), b1.expand(B, 3, H, W).clone()
    a[:, 1] = a[:, 1].flip(-1)  # channels differ
    g = torch.Generator().manual_seed(3)
    # 1.5 and -0.25 (validate=False) must saturate; weights next to 0 and 1 round 1 - w
    weights = torch.tensor([0.0, 1.0, 0.5, 0.3, 1.5, -0.25, 1 - 2 ** -24, 2 ** -25])
    sigma = 0.0
    if path == "per_sample_constant":
        mask = weights.view(B, 1, 1, 1).expand(B, 1, H, W)
    else:
        mask = torch.rand(B, 1, H, W, generator=g)
        mask[mask < 0.2] = 0.0
        mask[mask > 0.8] = 1.0
        mask[4] = mask[4] * 3 - 1  # outside [0, 1] here and there
        if path == "sigma":
            sigma = 1.5
        if path == "channels_last":
            a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    got, lam, alpha = gaussian_blend(a, b, mask, sigma, backend="cpu", validate=False, return_alpha=True)
    # (the blurred alpha is summed in another order than the reference's: the reference
    # blends with the kernel's own alpha, which is what the stores are tested on)
    want, want_lam = gaussian_blend(a, b, alpha, 0.0, backend="reference", validate=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(lam, want_lam, rtol=0, atol=1e-6)
    if dtype == torch.uint8 and path == "per_sample_constant":  # the ties are there
        mixed = 0.5 * a[2].float() + 0.5 * b[2].float()
        assert (mixed.frac() == 0.5).sum() > 10000


@pytest.mark.parametrize("C", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_channels_last_gives_the_bits_of_nchw(device_backend, dtype, C):
    """channels_last images blend exactly as their NCHW copies do (the CPU kernel repeats a
    row's weights per channel and blends the row's W * C elements in one run: C = 3 has its
    own compiled loop), at sigma = 0 and sigma > 0, with partners gathered by b_index."""
    device, backend = device_backend
    g = torch.Generator().manual_seed(21)
    B, H, W = 3, 19, 45
    a = (torch.rand(B, C, H, W, generator=g) * 255).to(dtype).to(device)
    b = (torch.rand(B, C, H, W, generator=g) * 255).to(dtype).to(device)
    mask = torch.rand(B, 1, H, W, generator=g).to(device)
    mask[:, :, :5] = 1.0  # exact weights too
    idx = torch.tensor([2, 0, 2], device=device)
    for sigma in (0.0, 1.5):
        want = gaussian_blend(a, b, mask, sigma, b_index=idx, backend=backend)
        cl = [t.contiguous(memory_format=torch.channels_last) for t in (a, b)]
        got = gaussian_blend(*cl, mask, sigma, b_index=idx, backend=backend)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float64])
def test_binary_masks_copy_pixels_in_every_dtype(device_backend, dtype):
    """A 0 / 1 mask (with a -0.0 among the zeros) at sigma = 0 copies each pixel of the
    selected image bit for bit, in every storage dtype, per-sample and batch-shared."""
    device, backend = device_backend
    g = torch.Generator().manual_seed(12)
    B, C, H, W = 2, 3, 33, 37  # one chunk: the two-chunk case is the test above
    a, b = (torch.rand(B, C, H, W, generator=g) * 255).to(dtype), (torch.rand(B, C, H, W, generator=g) * 255).to(dtype)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.5).to(torch.float64 if dtype == torch.float64 else torch.float32)
    mask.view(-1)[3] = -0.0  # a negative zero selects b, as a zero does
    a, b, mask = a.to(device), b.to(device), mask.to(device)
    for m in (mask, mask[:1].expand(B, 1, H, W)):
        out, _ = gaussian_blend(a, b, m, 0.0, backend=backend)
        assert torch.equal(out, torch.where(m == 1, a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.float64, torch.bfloat16])
def test_shared_box_masks_copy_the_image_they_take(device_backend, dtype):
    """A 0 / 1 mask shared by the batch made of boxes (CutMix's, SaliencyMix's): the CPU kernel
    copies stretches of at least 64 pixels from the one image they take and selects per pixel
    in shorter ones. Stretches crossing rows and the 16384-pixel chunk boundary, a box exactly
    64 wide and one 63 wide, a -0.0 inside a box: every pixel must come from the right image
    bit for bit, the other image's NaN never leaking in, and lam must be the kept area."""
    device, backend = device_backend
    if backend == "triton" and device == "cpu" and dtype != torch.float32:
        # (interpreted: 5 s a case; Triton has no runs path, and the every-dtype select test
        # above covers its dtypes)
        pytest.skip("the interpreted Triton kernel runs this check in float32 only")
    g = torch.Generator().manual_seed(13)
    B, C, H, W = 3, 2, 129, 130  # two chunks; row 126 holds the boundary (pixel 16384)
    a, b = (torch.rand(B, C, H, W, generator=g) * 255).to(dtype), (torch.rand(B, C, H, W, generator=g) * 255).to(dtype)
    mdt = torch.float64 if dtype == torch.float64 else torch.float32
    mask = torch.ones(1, 1, H, W, dtype=mdt)
    mask[..., 20:110, 5:69] = 0     # 64 wide: copied from b; the 66 between rows from a
    mask[..., 115:121, 10:73] = 0   # 63 wide: selected
    mask[..., 124:129, 60:125] = 0  # across the chunk boundary
    mask[..., 50, 30] = -0.0
    mask[..., 0, 0:3] = 0           # a short stretch at the very start
    m = mask.expand(B, 1, H, W)
    if dtype != torch.uint8:  # the image not taken holds NaN: a copy of the wrong one shows
        a = torch.where(m == 0, torch.full_like(a, float("nan")), a)
        b = torch.where(m == 1, torch.full_like(b, float("nan")), b)
    a, b, m = a.to(device), b.to(device), m.to(device)
    perm = torch.tensor([1, 2, 0], device=device)
    out, lam = gaussian_blend(a, b, m, 0.0, b_index=perm, backend=backend)
    want = torch.where(m != 0, a, b[perm])
    assert torch.equal(out, want)
    kept = (mask != 0).double().mean().item()
    assert torch.allclose(lam.double().cpu(), torch.full((B,), kept, dtype=torch.float64), atol=1e-7)


def test_blurred_alpha_and_lam_never_exceed_one(device_backend):
    """The normalised taps can round to a sum an ulp above 1, so a window of ones blurred to
    1.0000001 and lam exceeded 1: for 106 of these 400 sigmas on the CPU kernel (and on the
    emulated CUDA kernel, 103 on Triton) before every backend capped a blurred alpha at 1.
    (The interpreted Triton kernel gets every 16th sigma.)"""
    device, backend = device_backend
    sigma = torch.linspace(0.1, 8.0, 400, device=device)[::16] if backend == "triton" else \
        torch.linspace(0.1, 8.0, 400, device=device)
    for H, W in [(1, 1), (5, 7)]:
        x = torch.rand(len(sigma), 1, H, W, device=device)
        ones = torch.ones(len(sigma), 1, H, W, device=device)
        _, lam, alpha = gaussian_blend(x, x, ones, sigma, backend=backend, return_alpha=True)
        assert float(alpha.max()) <= 1.0 and float(lam.max()) <= 1.0
        assert float(alpha.min()) > 0.99999


def test_sigma_forms_agree(device_backend):
    device, backend = device_backend
    a, b, mask = make_inputs((3, 2, 12, 9), torch.float32, device)
    ref = gaussian_blend(a, b, mask, 1.5, backend=backend)[0]
    for sigma in ([1.5, 1.5, 1.5], torch.full((3,), 1.5), torch.tensor(1.5),
                  torch.full((3,), 1.5, dtype=torch.float64, device=device)):
        assert torch.equal(gaussian_blend(a, b, mask, sigma, backend=backend)[0], ref)


def test_bool_and_half_masks(device_backend):
    device, backend = device_backend
    a, b, mask = make_inputs((2, 3, 10, 10), torch.float32, device)
    ref = gaussian_blend(a, b, mask, 1.0, backend=backend)[0]
    assert torch.equal(gaussian_blend(a, b, mask.bool(), 1.0, backend=backend)[0], ref)
    assert torch.equal(gaussian_blend(a, b, mask.half(), 1.0, backend=backend)[0], ref)


# ---- autograd ----------------------------------------------------------------------------------

def test_gradcheck_float64(device_backend):
    device, backend = device_backend
    a, b, mask = make_inputs((2, 2, 5, 6), torch.float64, device, seed=1)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def f(x, y):
        return gaussian_blend(x, y, mask, [0.8, 1.6], backend=backend)[0]

    assert torch.autograd.gradcheck(f, (a, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (a, b), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_reference(kernel_backend, dtype):
    device, backend = kernel_backend
    a, b, mask = make_inputs((2, 3, 13, 17), dtype, device, seed=2, channels_last=True)
    grads = {}
    for k in ("reference", backend):
        x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        out, lam = gaussian_blend(x, y, mask, 2.0, backend=k)
        (out.float() * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        grads[k] = (x.grad, y.grad)
    atol, rtol = TOLERANCES[dtype]
    for got, want in zip(grads[backend], grads["reference"]):
        assert got.dtype == dtype
        assert_close(got, want.double().cpu().numpy(), atol, rtol, "grad")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "expanded"])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).replace("torch.", ""))
def test_backward_op_is_the_weighted_gradient(kernel_backend, dtype, channels, layout):
    """The raw backward op, bit for bit: grad_a = alpha * g and grad_b = (1 - alpha) * g in the
    images' math type, alpha being the forward's blurred mask, for every grad_out layout the
    CPU kernel tells apart (NCHW rows, channels_last rows with C = 3 compiled apart, other
    strides, a broadcast gradient such as out.sum()'s)."""
    device, backend = kernel_backend
    fwd, bwd = _op_for(backend)
    B, H, W = 2, 7, 23
    g = torch.Generator().manual_seed(channels)
    mask = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64).to(opmath_dtype(dtype)).to(device)
    sigma = torch.tensor([1.5, 0.0], device=device)
    full = torch.randn(B, channels, H, 2 * W, generator=g).to(dtype).to(device)
    grad_out = {"contiguous": full[..., :W].contiguous(),
                "channels_last": full[..., :W].contiguous(memory_format=torch.channels_last),
                "strided": full[..., ::2],
                "expanded": full[:1, :1, :1, :1].expand(B, channels, H, W)}[layout]
    x = torch.zeros(B, channels, H, W, dtype=dtype, device=device)
    alpha = fwd(x, x, mask, sigma, 5, True)[2][:, :1]
    ga, gb = bwd(grad_out, mask, sigma, 5)
    acc = grad_out.to(alpha.dtype)
    for got, want in ((ga, alpha * acc), (gb, (1 - alpha) * acc)):
        if backend == "triton" and dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
            # the interpreter stores float32 as bf16 by truncation (a GPU rounds to nearest
            # even): within one bf16 step of the rounded value, toward zero
            assert got.dtype == dtype
            assert_close(got, want.to(dtype).double().cpu().numpy(), 0.0, 2.0 ** -7, "grad")
        else:
            assert torch.equal(got, want.to(dtype))


# ---- torch.library integration ----------------------------------------------------------------

def _op_for(backend):
    ns = torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix
    return ns.gaussian_blend.default, ns.gaussian_blend_backward.default


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    fwd, bwd = _op_for(backend)
    a, b, mask = make_inputs((2, 3, 7, 9), torch.float32, device)
    sigma = torch.tensor([1.0, 0.5], device=device)
    a.requires_grad_(True)
    b.requires_grad_(True)
    torch.library.opcheck(fwd, (a, b, mask, sigma, 3, True))
    torch.library.opcheck(fwd, (a, b[:1], mask, sigma, 3, False, torch.tensor([0, 0], device=device)))
    torch.library.opcheck(fwd, (a.detach().half(), b.detach().half(), mask, sigma, 3, False))
    torch.library.opcheck(bwd, (torch.randn(2, 3, 7, 9, device=device, requires_grad=True),
                                mask, sigma, 3))


@pytest.mark.parametrize("backend_kind", ["forward", "backward"])
def test_torch_compile_fullgraph(device_backend, backend_kind):
    device, backend = device_backend
    a, b, mask = make_inputs((2, 3, 9, 11), torch.float32, device)
    torch._dynamo.reset()

    def f(x, y, m):
        out, lam = gaussian_blend(x, y, m, 1.5, backend=backend)
        return out * 2.0, lam

    compiled = torch.compile(f, fullgraph=True)
    if backend_kind == "forward":
        got, want = compiled(a, b, mask), f(a, b, mask)
        assert torch.allclose(got[0], want[0], atol=1e-6) and torch.allclose(got[1], want[1])
    else:
        x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        compiled(x, y, mask)[0].sum().backward()
        alpha = gaussian_blend(a, b, mask, 1.5, return_alpha=True, backend=backend)[2]
        assert torch.allclose(x.grad, 2 * alpha.expand_as(a), atol=1e-6)
        assert torch.allclose(y.grad, 2 * (1 - alpha).expand_as(a), atol=1e-6)


def test_cuda_kernels_registered():
    """The CUDA sources compile into the extension whenever torch is a CUDA build and nvcc is
    present (MEDMIX_CUDA != 0), GPU or not."""
    expected = (torch.version.cuda is not None and os.environ.get("MEDMIX_CUDA") != "0"
                and (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")))
    if not expected:
        pytest.skip("extension built without CUDA (no CUDA torch, no nvcc, or MEDMIX_CUDA=0)")
    # every op csrc/ops.cpp defines, read from the source so that a new op cannot be missed
    src = open(os.path.join(os.path.dirname(__file__), "..", "csrc", "ops.cpp")).read()
    ops = re.findall(r'"([a-z_]+)\(Tensor', src)
    assert {"gaussian_blend", "adm_mix", "adm_mix_out", "saliency_map", "patch_pool"} <= set(ops)
    for op in ops:
        assert _backend.has_kernel(op, "CUDA"), torch._C._dispatch_dump(f"medmix::{op}")
        assert _backend.has_kernel(op, "CPU"), op


def test_extension_and_triton_present():
    """The suite must exercise the C++ and Triton kernels, not quietly fall back."""
    assert medmix_ops.extension_error() is None, medmix_ops.extension_error()
    assert "cpu" in medmix_ops.available_backends("gaussian_blend", "cpu")
    if not HAS_CUDA:
        assert "triton" in medmix_ops.available_backends("gaussian_blend", "cpu")


# ---- determinism and backend choice -----------------------------------------------------------

def test_cpu_output_is_bitwise_deterministic_across_thread_counts():
    a, b, mask = make_inputs((4, 3, 33, 47), torch.float32, "cpu")
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            runs.append(gaussian_blend(a, b, mask, [0.5, 1.0, 2.0, 3.0], backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    for out, lam in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(lam, runs[0][1])


def test_auto_backend_and_env_override(monkeypatch):
    a, b, mask = make_inputs((1, 1, 4, 4), torch.float32, "cpu")
    assert _backend.resolve("gaussian_blend", "auto", a.device) == "cpu"
    monkeypatch.setenv("MEDMIX_BACKEND", "reference")
    assert _backend.resolve("gaussian_blend", "auto", a.device) == "reference"
    assert _backend.resolve("gaussian_blend", "cpu", a.device) == "cpu"  # explicit wins
    monkeypatch.setenv("MEDMIX_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MEDMIX_BACKEND"):
        gaussian_blend(a, b, mask, 1.0)


def test_unavailable_backend_is_a_clear_error():
    a, b, mask = make_inputs((1, 1, 4, 4), torch.float32, "cpu")
    with pytest.raises(ValueError, match="CUDA kernel needs CUDA tensors"):
        gaussian_blend(a, b, mask, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        gaussian_blend(a, b, mask, 1.0, backend="fast")


# ---- bad input ----------------------------------------------------------------------------------

def _bad_cases():
    a = torch.rand(2, 3, 8, 8)
    b = torch.rand(2, 3, 8, 8)
    m = torch.ones(2, 1, 8, 8)
    return [
        ("a not a tensor", dict(a=a.numpy()), TypeError, "a must be a torch.Tensor"),
        ("a 3-D", dict(a=a[0], b=b[0]), ValueError, "a must be 4-D"),
        ("shape mismatch", dict(b=torch.rand(2, 3, 8, 9)), ValueError, "a and b must have one shape"),
        ("dtype mismatch", dict(b=b.double()), TypeError, "a and b must have one dtype"),
        ("int32 images", dict(a=a.int(), b=b.int()), TypeError, "a must have dtype in"),
        ("empty batch", dict(a=a[:0], b=b[:0], mask=m[:0]), ValueError, "B, C, H, W >= 1"),
        ("mask 2 channels", dict(mask=torch.ones(2, 2, 8, 8)), ValueError, "mask must have shape [B, 1, H, W]"),
        ("mask wrong size", dict(mask=torch.ones(2, 1, 8, 7)), ValueError, "mask must have shape"),
        ("mask 3-D", dict(mask=torch.ones(2, 8, 8)), ValueError, "mask must be 4-D"),
        ("mask int", dict(mask=torch.ones(2, 1, 8, 8, dtype=torch.int64)), TypeError, "mask must be a floating or bool"),
        ("mask above 1", dict(mask=torch.full((2, 1, 8, 8), 3.0)), ValueError,
         "mask values must lie in [0, 1] (1 selects the first image), got min 3, max 3"),
        ("mask negative", dict(mask=torch.zeros(2, 1, 8, 8).index_fill_(3, torch.tensor([5]), -0.25)),
         ValueError, "mask values must lie in [0, 1] (1 selects the first image), got min -0.25, max 0"),
        ("mask nan", dict(mask=torch.ones(2, 1, 8, 8).index_fill_(2, torch.tensor([1]), float("nan"))),
         ValueError, "got 16 NaN values"),
        ("mask fp16 above 1", dict(mask=torch.full((2, 1, 8, 8), 1.5, dtype=torch.float16)), ValueError,
         "got min 1.5, max 1.5"),
        ("negative sigma", dict(sigma=-1.0), ValueError, "sigma must be finite and in"),
        ("nan sigma", dict(sigma=float("nan")), ValueError, "sigma must be finite"),
        ("inf sigma", dict(sigma=float("inf")), ValueError, "sigma must be finite"),
        ("huge sigma", dict(sigma=1e6), ValueError, "sigma must be finite and in"),
        ("sigma wrong length", dict(sigma=torch.ones(3)), ValueError, "shape [B] = [2]"),
        ("sigma list wrong length", dict(sigma=[1.0]), ValueError, "one value per sample (2), got 1"),
        ("sigma tensor nan", dict(sigma=torch.tensor([1.0, float("nan")])), ValueError, "sigma[1] = nan"),
        ("sigma tensor negative", dict(sigma=torch.tensor([-1.0, 1.0])), ValueError, "sigma[0] = -1.0"),
        ("sigma int tensor", dict(sigma=torch.ones(2, dtype=torch.int64)), TypeError, "sigma tensor must be floating"),
        ("sigma string", dict(sigma="2"), TypeError, "sigma must be a float"),
        ("sigma bool", dict(sigma=True), TypeError, "got bool"),
        ("return_alpha int", dict(return_alpha=1), TypeError, "return_alpha must be a bool"),
        ("out not a tensor", dict(out=[0.0]), TypeError, "out must be a tensor [2, 3, 8, 8], got list"),
        ("out wrong shape", dict(out=torch.empty(2, 3, 8, 9)), ValueError,
         "out must be [2, 3, 8, 8] torch.float32 on cpu, got [2, 3, 8, 9] torch.float32 on cpu"),
        ("out wrong dtype", dict(out=torch.empty(2, 3, 8, 8, dtype=torch.float64)), ValueError,
         "got [2, 3, 8, 8] torch.float64 on cpu"),
        ("out expanded", dict(out=torch.empty(1, 3, 8, 8).expand(2, 3, 8, 8)), ValueError,
         "out must not be an expanded view (stride 0)"),
        ("out requires grad", dict(out=torch.empty(2, 3, 8, 8, requires_grad=True)), ValueError,
         "out must not require grad"),
        ("out is b", dict(b=b, out=b), ValueError,
         "out must not share memory with a, b or mask (the kernel reads b while it writes out)"),
        ("out with grad", dict(a=a.clone().requires_grad_(True), out=torch.empty(2, 3, 8, 8)), ValueError,
         "out= records no gradient, but a or b requires grad"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_names_the_argument(case):
    _, override, exc, message = case
    args = dict(a=torch.rand(2, 3, 8, 8), b=torch.rand(2, 3, 8, 8), mask=torch.ones(2, 1, 8, 8),
                sigma=1.0)
    args.update(override)
    with pytest.raises(exc, match=__import__("re").escape(message)):
        gaussian_blend(**args)


def test_mask_value_check_is_skipped_with_validate_false():
    """validate=False is the trusted path (masks the caller built): no check, and the blend is
    the plain formula, so a mask of 3 extrapolates (3a - 2b) instead of raising."""
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    mask = torch.full((2, 1, 8, 8), 3.0)
    out, lam = gaussian_blend(a, b, mask, 0.0, validate=False)
    torch.testing.assert_close(out, 3 * a - 2 * b)
    torch.testing.assert_close(lam, torch.full((2,), 3.0))
    # values exactly on the bounds and bool masks pass the check
    edge = torch.zeros(2, 1, 8, 8); edge[:, :, :4] = 1.0
    gaussian_blend(a, b, edge, 1.0)
    gaussian_blend(a, b, edge.bool(), 1.0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_mask_values_are_checked():
    a = torch.rand(2, 3, 8, 8, device="cuda")
    with pytest.raises(ValueError, match="mask values must lie in"):
        gaussian_blend(a, a, torch.full((2, 1, 8, 8), 2.0, device="cuda"), 1.0)
    gaussian_blend(a, a, torch.full((2, 1, 8, 8), 2.0, device="cuda"), 1.0, validate=False)


def test_mismatched_devices_without_gpu():
    """The meta device stands in for a second device, so this runs everywhere."""
    a = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="a and b must be on one device, got cpu and meta"):
        gaussian_blend(a, a.to("meta"), torch.ones(1, 1, 4, 4), 1.0)
    with pytest.raises(ValueError, match="mask must be on cpu like the images, got meta"):
        gaussian_blend(a, a, torch.ones(1, 1, 4, 4, device="meta"), 1.0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_mismatched_devices():
    a = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="one device"):
        gaussian_blend(a, a.cuda(), torch.ones(1, 1, 4, 4), 1.0)
    with pytest.raises(ValueError, match="mask must be on"):
        gaussian_blend(a.cuda(), a.cuda(), torch.ones(1, 1, 4, 4), 1.0)


def test_raw_op_refuses_too_small_max_radius():
    a, b, mask = make_inputs((1, 1, 6, 6), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="max_radius"):
        torch.ops.medmix.gaussian_blend(a, b, mask, torch.tensor([2.0]), 3, False)


# ---- b_index: partner rows gathered inside the kernel --------------------------------------------

def test_b_index_matches_gathering_first(device_backend):
    device, backend = device_backend
    a, _, mask = make_inputs((5, 3, 13, 11), torch.float32, device)
    pool = torch.rand(3, 3, 13, 11, generator=torch.Generator().manual_seed(9)).to(device)
    idx = torch.tensor([2, 0, 2, 1, 0], device=device)  # repeats allowed
    got = gaussian_blend(a, pool, mask, 1.5, b_index=idx, return_alpha=True, backend=backend)
    want = gaussian_blend(a, pool[idx], mask, 1.5, return_alpha=True, backend=backend)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    # a batch blended with a permutation of itself, no copy of x[perm]
    perm = torch.tensor([4, 3, 2, 1, 0], device=device)
    assert torch.equal(gaussian_blend(a, a, mask, 0.0, b_index=perm, backend=backend)[0],
                       gaussian_blend(a, a.flip(0), mask, 0.0, backend=backend)[0])


def test_b_index_gradients_sum_over_repeated_rows(device_backend):
    device, backend = device_backend
    a = torch.rand(4, 2, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    pool = torch.rand(2, 2, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    mask = (torch.rand(4, 1, 6, 5) > 0.5).double().to(device)
    idx = torch.tensor([1, 1, 0, 1], device=device)
    assert torch.autograd.gradcheck(
        lambda x, y: gaussian_blend(x, y, mask, 0.7, b_index=idx, backend=backend)[0], (a, pool), fast_mode=True)


def test_b_index_bad_input():
    a, b, mask = make_inputs((3, 1, 4, 4), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"b_index values must be in \[0, 3\), got b_index\[1\] = 3"):
        gaussian_blend(a, b, mask, 1.0, b_index=torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"b_index must have shape \[B\] = \[3\]"):
        gaussian_blend(a, b, mask, 1.0, b_index=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="b_index must be an integer tensor"):
        gaussian_blend(a, b, mask, 1.0, b_index=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="b must have a's C, H, W"):
        gaussian_blend(a, torch.rand(2, 1, 4, 5), mask, 1.0, b_index=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="a and b must have one shape"):
        gaussian_blend(a, torch.rand(2, 1, 4, 4), mask, 1.0)
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.medmix.gaussian_blend(a, b[:2], mask, torch.ones(3), 3, False, torch.tensor([0, 1, 2]))


# ---- blend_trusted: the policies' unchecked fast path --------------------------------------------

@pytest.mark.parametrize("below_autograd", [True, False], ids=["below-autograd", "public-path"])
def test_blend_trusted_equals_gaussian_blend(device_backend, below_autograd, monkeypatch):
    """The fast path (straight below the autograd key) and its fallback for a torch without
    that private guard give gaussian_blend's bits, with and without b_index."""
    import importlib

    gb = importlib.import_module("medmix_ops.ops.gaussian_blend")  # the module, not the function

    if not below_autograd:
        monkeypatch.setattr(gb, "_BELOW_AUTOGRAD", None)
    device, backend = device_backend
    a, b, mask = make_inputs((4, 3, 13, 11), torch.float32, device)
    perm = torch.tensor([3, 2, 1, 0])
    for sigma in (0.0, 1.5):
        want = gaussian_blend(a, b, mask, sigma, backend=backend)[0]
        assert torch.equal(gb.blend_trusted(a, b, mask, sigma, None, backend), want)
        want = gaussian_blend(a, a, mask, sigma, b_index=perm.to(device), backend=backend)[0]
        assert torch.equal(gb.blend_trusted(a, a, mask, sigma, perm, backend), want)


# ---- large fresh CPU outputs, recycled (medmix_ops.ops._recycle) -------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_recycled_blend_outputs_equal_fresh_ones_and_held_ones_stay(recycle_all, monkeypatch,
                                                                    channels_last, sigma):
    a, b, m = make_inputs((3, 3, 13, 10), torch.float32, "cpu", seed=1, channels_last=channels_last)
    a2, b2, m2 = make_inputs((3, 3, 13, 10), torch.float32, "cpu", seed=2, channels_last=channels_last)
    perm = torch.tensor([2, 0, 1])
    monkeypatch.setattr(recycle_all, "RECYCLE_BYTES", 2 ** 62)  # fresh outputs, as before
    want1 = gaussian_blend(a, b, m, sigma, b_index=perm, backend="cpu")
    want2 = gaussian_blend(a2, b2, m2, sigma, backend="cpu")
    monkeypatch.setattr(recycle_all, "RECYCLE_BYTES", 0)
    got1 = gaussian_blend(a, b, m, sigma, b_index=perm, backend="cpu")
    kept = recycle_all._recycled.slots
    assert len(kept) == 1 and got1[0].data_ptr() == kept[0].data_ptr()  # (the path was taken)
    got2 = gaussian_blend(a2, b2, m2, sigma, backend="cpu")
    for got, want in ((got1, want1), (got2, want2)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert got[0].stride() == want[0].stride()  # the memory format a fresh output has
    assert got1[0].data_ptr() != got2[0].data_ptr()
    ptr2 = got2[0].data_ptr()
    del got2, got  # (the loop variable held got2 too)
    again = gaussian_blend(a2, b2, m2, sigma, backend="cpu")[0]  # the dropped buffer, rewritten
    assert again.data_ptr() == ptr2 and torch.equal(again, want2[0])
    assert torch.equal(got1[0], want1[0])


def test_blend_that_records_a_gradient_allocates_as_before(recycle_all):
    a, b, m = make_inputs((2, 3, 6, 5), torch.float32, "cpu")
    a.requires_grad_(True)
    out, lam = gaussian_blend(a, b, m, 1.0, backend="cpu")
    assert out.grad_fn is not None and getattr(recycle_all._recycled, "slots", []) == []
    out.sum().backward()
    assert a.grad is not None
    with torch.no_grad():
        gaussian_blend(a, b, m, 1.0, backend="cpu")
    assert len(recycle_all._recycled.slots) == 1


def test_policy_batches_held_across_calls_stay_intact(recycle_all):
    """Mixup / CutMix through the trusted blend: a training loop that keeps earlier mixed
    batches (a replay buffer, a logged batch) never sees them rewritten."""
    from medmix_ops import mix

    x = torch.rand(4, 3, 12, 9)
    y = torch.tensor([0, 1, 2, 3])
    for policy in (mix.Mixup(4), mix.CutMix(4)):
        held, copies = [], []
        for seed in range(4):
            out, _ = policy(x, y, generator=torch.Generator().manual_seed(seed))
            held.append(out)
            copies.append(out.clone())
        assert len({t.data_ptr() for t in held}) == 4
        assert all(torch.equal(h, c) for h, c in zip(held, copies))
        del held[:2]  # two dropped batches: their buffers come back (the cache keeps 2 a kind)
        ptrs = {policy(x, y, generator=torch.Generator().manual_seed(9))[0].data_ptr() for _ in range(3)}
        assert len(ptrs) == 1 and all(torch.equal(h, c) for h, c in zip(held, copies[2:]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA, reason="needs a GPU"))])
def test_blend_out_op_checks_and_opcheck_cpu_and_cuda(device):
    a, b, m = make_inputs((2, 3, 7, 9), torch.float32, device)
    sigma = torch.tensor([1.0, 0.0], device=device)
    out = torch.empty_like(a)
    op = torch.ops.medmix.gaussian_blend_out.default
    torch.library.opcheck(op, (a, b, m, sigma, 3, True, None, out))
    torch.library.opcheck(op, (a, b[:1], m, sigma, 3, False, torch.tensor([0, 0], device=device), out))
    lam, alpha = op(a, b, m, sigma, 3, True, None, out)
    want = torch.ops.medmix.gaussian_blend.default(a, b, m, sigma, 3, True, None)
    assert torch.equal(out, want[0]) and torch.equal(lam, want[1]) and torch.equal(alpha, want[2])
    with pytest.raises(RuntimeError, match="must not share memory with a or b"):
        op(a, b, m, sigma, 3, False, None, b)
    with pytest.raises(RuntimeError, match=r"out must be \[2, 3, 7, 9\] Float"):
        op(a, b, m, sigma, 3, False, None, out[:1])
    with pytest.raises(RuntimeError, match="overlapping elements"):
        op(a, b, m, sigma, 3, False, None, torch.empty(1, 3, 7, 9, device=device).expand(2, 3, 7, 9))


# ---- out= -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_blend_into_out(device_backend, layout, dtype):
    """out=: the blend is written into the caller's tensor (any strides, reused across calls),
    equal to the allocated result bit for bit, with b_index and return_alpha too; nothing
    outside a sliced out is touched."""
    device, backend = device_backend
    a, b, mask = make_inputs((3, 3, 13, 17), dtype, device)
    sigma = torch.tensor([1.5, 0.0, 0.7])
    rows = torch.tensor([2, 0, 0], device=device)
    if layout == "sliced":
        base = torch.full((3, 5, 13, 19), 7, dtype=dtype, device=device)
        out = base[:, 1:4, :, 1:18]
    else:
        out = torch.empty(3, 3, 13, 17, dtype=dtype, device=device)
        if layout == "channels_last":
            out = out.contiguous(memory_format=torch.channels_last)
    for kwargs in (dict(return_alpha=True), dict(b_index=rows)):
        want = gaussian_blend(a, b, mask, sigma, backend=backend, **kwargs)
        for _ in range(2):  # the same buffer, twice
            out.fill_(3)
            got = gaussian_blend(a, b, mask, sigma, backend=backend, out=out, **kwargs)
            assert got[0] is out
            for g, w in zip(got, want):
                assert torch.equal(g, w)
    if layout == "sliced":
        assert (base[:, 0] == 7).all() and (base[:, 4] == 7).all()
        assert (base[..., 0] == 7).all() and (base[..., 18] == 7).all()


def test_blend_into_out_under_no_grad_and_compile(device_backend):
    """out= is fine for inputs that require grad under torch.no_grad(), and traces under
    torch.compile(fullgraph=True) (the op's mutation of out is visible after the call)."""
    device, backend = device_backend
    a, b, mask = make_inputs((2, 3, 9, 11), torch.float32, device)
    want = gaussian_blend(a, b, mask, 1.5, backend=backend)[0]
    out = torch.empty_like(a)
    with torch.no_grad():
        gaussian_blend(a.requires_grad_(True), b, mask, 1.5, backend=backend, out=out)
    assert torch.equal(out, want)
    a.requires_grad_(False)
    torch._dynamo.reset()

    def f(x, y, m, o):
        o2, lam = gaussian_blend(x, y, m, 1.5, backend=backend, out=o)
        return o2 * 2.0, lam

    out = torch.zeros_like(a)
    got = torch.compile(f, fullgraph=True)(a, b, mask, out)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[0], 2.0 * want, rtol=1e-6, atol=1e-6)


def test_blend_out_sharing_memory_with_the_mask_is_refused():
    buf = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(the kernel reads mask while it writes out\)"):
        gaussian_blend(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), buf[:, :1], 1.0, out=buf)


def test_triton_blend_out_opcheck():
    device = "cuda" if HAS_CUDA else "cpu"
    a, b, m = make_inputs((2, 3, 7, 9), torch.float32, device)
    sigma = torch.tensor([1.0, 0.0], device=device)
    op = torch.ops.medmix_triton.gaussian_blend_out.default
    out = torch.empty_like(a)
    torch.library.opcheck(op, (a, b, m, sigma, 3, True, None, out))
    lam, alpha = op(a, b, m, sigma, 3, True, None, out)
    want = torch.ops.medmix_triton.gaussian_blend.default(a, b, m, sigma, 3, True, None)
    assert torch.equal(out, want[0]) and torch.equal(lam, want[1]) and torch.equal(alpha, want[2])
