"""patch_ratio_pool: every backend against an independent NumPy definition, invariants,
expansion, torch.library integration and bad input."""
import numpy as np
import pytest
import torch

from medmix_ops import patch_ratio_pool

from helpers import assert_close


def numpy_ratios(s_a, s_b, patch, alpha, pad):
    """Loops over patches, straight from the SPMix definition (float64)."""
    def levels(s):
        s = s.double().cpu().numpy()[:, 0]
        B, H, W = s.shape
        gh, gw = -(-H // patch), -(-W // patch)
        p = np.zeros((B, gh, gw))
        for i in range(gh):
            for j in range(gw):
                p[:, i, j] = s[:, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].mean(axis=(1, 2))
        out = np.empty_like(p)
        for b in range(B):
            lo, hi = p[b].min(), p[b].max()
            flat = not (hi - lo > 1e-5 * max(abs(lo), abs(hi)))
            out[b] = 0.5 if flat else (p[b] - lo) / (hi - lo) / 2 + 0.5
        return out

    r = np.minimum(alpha, np.maximum(levels(s_a), levels(s_b)))
    return r, r.mean(axis=(1, 2))


CASES = [  # (shape, patch, pad)
    ((2, 1, 32, 48), 16, False),
    ((3, 1, 37, 53), 8, True),
    ((1, 1, 5, 5), 5, False),
    ((2, 1, 6, 9), 1, False),
    ((1, 1, 7, 3), 10, True),      # one partial patch: a flat map
    ((2, 1, 64, 130), 16, True),
]


@pytest.mark.parametrize("alpha", [0.8, 1.0, 0.55])
@pytest.mark.parametrize("shape,patch,pad", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_matches_numpy_definition(device_backend, shape, patch, pad, alpha):
    device, backend = device_backend
    g = torch.Generator().manual_seed(0)
    s_a = torch.rand(shape, generator=g).to(device)
    s_b = torch.rand(shape, generator=g).to(device)
    r, mean, pix = patch_ratio_pool(s_a, s_b, patch, alpha, pad=pad, expand=True, backend=backend)
    want_r, want_mean = numpy_ratios(s_a, s_b, patch, alpha, pad)
    # float32 patch means (~1e-7 relative) are divided by the pooled range (~0.1 for averaged
    # uniform noise): ~1e-6 absolute in the levels.
    assert_close(r, want_r, 1e-5, 0, "ratios")
    assert_close(mean, want_mean, 1e-5, 0, "mean_ratio")
    assert ((r >= 0.5) & (r <= alpha + 1e-7)).all()
    H, W = shape[-2:]
    assert pix.shape == (shape[0], 1, H, W)
    up = np.repeat(np.repeat(r.cpu().numpy(), patch, axis=1), patch, axis=2)[:, None, :H, :W]
    assert np.array_equal(pix.cpu().numpy(), up)


def test_pixel_map_buffers_are_reused_only_once_dropped(recycle_all):
    # (every CPU pixel map recycled here; the real threshold is 4 MB)
    g = torch.Generator().manual_seed(3)
    s1, s2 = torch.rand(2, 1, 37, 53, generator=g), torch.rand(2, 1, 37, 53, generator=g)

    def pixel_map(s):
        return patch_ratio_pool(s, s.flip(0), 8, pad=True, expand=True, backend="cpu")[2]

    pix1 = pixel_map(s1)
    want1 = pix1.clone()
    pix2 = pixel_map(s2)  # pix1 is held: a second buffer
    want2 = pix2.clone()
    assert pix2.data_ptr() != pix1.data_ptr() and torch.equal(pix1, want1)
    ptr1 = pix1.data_ptr()
    del pix1
    again = pixel_map(s1)  # pix1's dropped buffer is taken again; pix2's is not touched
    assert again.data_ptr() == ptr1 and torch.equal(again, want1) and torch.equal(pix2, want2)
    assert {b.data_ptr() for b in recycle_all._recycled.slots} == {ptr1, pix2.data_ptr()}


def test_constant_maps_have_no_nan(device_backend):
    device, backend = device_backend
    s = torch.full((2, 1, 16, 16), 0.3, device=device)
    r, mean = patch_ratio_pool(s, s.clone(), 4, 0.8, backend=backend)
    assert torch.isfinite(r).all() and torch.equal(r, torch.full_like(r, 0.5))


def test_saliency_dtypes_accepted(device_backend):
    device, backend = device_backend
    s = torch.rand(2, 1, 8, 8, device=device)
    ref = patch_ratio_pool(s, s.flip(0), 4, backend=backend)[0]
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        got = patch_ratio_pool(s.to(dt), s.flip(0).to(dt), 4, backend=backend)[0]
        assert got.dtype == torch.float32
        assert torch.allclose(got, ref, atol=1e-2)


def test_cpu_is_deterministic():
    s = torch.rand(4, 1, 64, 64)
    a = patch_ratio_pool(s, s.flip(0), 8, backend="cpu")
    b = patch_ratio_pool(s, s.flip(0), 8, backend="cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix
    s = torch.rand(2, 1, 12, 20, device=device)
    torch.library.opcheck(ns.patch_pool.default, (s, s.flip(0), 4, False))
    torch.library.opcheck(ns.patch_pool.default, (s, s.flip(0), 7, True))
    pooled, minmax = ns.patch_pool(s, s.flip(0), 4, False)
    torch.library.opcheck(ns.patch_ratio.default, (pooled, minmax, 0.8))


def test_torch_compile_fullgraph(device_backend):
    device, backend = device_backend
    s = torch.rand(2, 1, 16, 24, device=device)
    torch._dynamo.reset()

    def f(a, b):
        r, mean, pix = patch_ratio_pool(a, b, 8, 0.8, expand=True, backend=backend)
        return r * 2, mean, pix

    got, want = torch.compile(f, fullgraph=True)(s, s.flip(0)), f(s, s.flip(0))
    for g, w in zip(got, want):
        assert torch.allclose(g, w)


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(patch=0), ValueError, "patch must be >= 1, got 0"),
    (dict(patch=2.0), TypeError, "patch must be an int"),
    (dict(patch=True), TypeError, "patch must be an int"),
    (dict(patch=5), ValueError, "H, W = 16, 24 must be multiples of patch = 5"),
    (dict(alpha=0.0), ValueError, "alpha must be in (0, 1]"),
    (dict(alpha=1.5), ValueError, "alpha must be in (0, 1]"),
    (dict(alpha="0.8"), TypeError, "alpha must be a number"),
    (dict(s_b=torch.rand(2, 1, 16, 20)), ValueError, "s_a and s_b must have one shape"),
    (dict(s_a=torch.rand(2, 3, 16, 24)), ValueError, "s_a must be a saliency map [B, 1, H, W]"),
    (dict(s_a=torch.rand(16, 24)), ValueError, "s_a must be 4-D"),
    (dict(s_b=torch.ones(2, 1, 16, 24, dtype=torch.long)), TypeError, "s_b must be floating"),
    (dict(pad=1), TypeError, "pad must be a bool"),
    (dict(s_b=torch.rand(2, 1, 16, 24, device="meta")), ValueError, "one device"),
])
def test_bad_input(kwargs, exc, message):
    args = dict(s_a=torch.rand(2, 1, 16, 24), s_b=torch.rand(2, 1, 16, 24), patch=8)
    args.update(kwargs)
    with pytest.raises(exc, match=__import__("re").escape(message)):
        patch_ratio_pool(**args)
