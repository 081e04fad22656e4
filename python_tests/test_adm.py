"""adm_mask / adm_mix: every backend against independent NumPy definitions, parity with the
public VariMix per-sample loop, Otsu and quantile thresholds, torch.library integration,
determinism and bad input."""
import numpy as np
import pytest
import torch

from medmix_ops import adm_mask, adm_mix
from medmix_ops.reference.adm import varimix_public_loop as varimix_loop

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8]


def pair(shape, dtype, device, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x_hat = (x + 0.3 * torch.randn(shape, generator=g)).clamp(0, 1)
    if dtype == torch.uint8:
        x, x_hat = (x * 255).round().to(torch.uint8), (x_hat * 255).round().to(torch.uint8)
    else:
        x, x_hat = x.to(dtype), x_hat.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        x_hat = x_hat.contiguous(memory_format=torch.channels_last)
    return x.to(device), x_hat.to(device)


def numpy_score(x, x_hat):
    """A per sample in float64 from the definition; None where D is flat."""
    d = np.abs(x_hat.double().cpu().numpy() - x.double().cpu().numpy())
    out = []
    for b in range(d.shape[0]):
        lo, hi = d[b].min(), d[b].max()
        out.append(None if not (hi - lo > 1e-5 * hi) else ((d[b] - lo) / (hi - lo)).mean(axis=0))
    return out


def assert_mask_matches(mask, score, thr, what, eps=1e-5):
    """mask == (A >= thr) except for pixels within eps of the threshold (float32 vs float64)."""
    m = mask.cpu().numpy()[:, 0]
    for b, a in enumerate(score):
        if a is None:
            assert not m[b].any(), f"{what}: flat sample {b} must give an empty mask"
            continue
        want = a >= thr[b]
        decided = np.abs(a - thr[b]) > eps
        assert np.array_equal(m[b][decided], want[decided]), f"{what}: sample {b} differs"


# ---- adm_mask -----------------------------------------------------------------------------------

SHAPES = [(2, 3, 37, 53), (1, 1, 1, 1), (3, 2, 5, 4), (1, 3, 70, 70)]  # 70x70 spans two chunks


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lambda_mask_matches_definition(device_backend, shape, dtype, channels_last):
    device, backend = device_backend
    x, x_hat = pair(shape, dtype, device, channels_last=channels_last)
    lam = [0.1 + 0.3 * i for i in range(shape[0])]
    mask, area = adm_mask(x, x_hat, lam, backend=backend)
    assert mask.shape == (shape[0], 1, *shape[2:]) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert_mask_matches(mask, numpy_score(x, x_hat), lam, "lambda")
    assert torch.allclose(area, mask.mean(dim=(1, 2, 3)))


def sequential_score(x, x_hat):
    """A in float32, its channel terms summed in order and then divided by C: the kernels'
    order. (The reference's torch mean sums more than four channels in another order, so its
    last bit may differ there.)"""
    d = (x_hat.float() - x.float()).abs()
    lo = d.amin(dim=(1, 2, 3), keepdim=True)
    rng = d.amax(dim=(1, 2, 3), keepdim=True) - lo
    acc = torch.zeros_like(d[:, :1])
    for c in range(d.shape[1]):
        acc = acc + (d[:, c:c + 1] - lo) / rng
    return acc / d.shape[1]


@pytest.mark.parametrize("C", [1, 3, 5])
def test_uint8_masks_decide_ties_exactly_like_the_score(kernel_backend, C):
    """uint8 masks are decided from integer sums of |x_hat - x| on the CPU, with the exact score
    only where the sum alone cannot tell (csrc/cpu/adm.cpp, decide_bytes): at thresholds equal
    to scores that many pixels share, one float step above and below them, 0 and 1, the
    masks, areas and adm_mix outputs are those of A >= lam bit for bit."""
    from medmix_ops.reference.adm import adm_score

    device, backend = kernel_backend
    g = torch.Generator().manual_seed(C)
    B, H, W = 4, 37, 41
    x = torch.randint(0, 256, (B, C, H, W), generator=g, dtype=torch.int16)
    x_hat = (x + torch.randint(-3, 4, (B, C, H, W), generator=g, dtype=torch.int16)).clamp(0, 255)
    x, x_hat = x.to(torch.uint8), x_hat.to(torch.uint8)
    score = sequential_score(x, x_hat)
    if C <= 3:
        assert torch.equal(score, adm_score(x, x_hat)[0])
    flat = score.reshape(B, -1)
    values = [torch.unique(flat[b]) for b in range(B)]
    perm = torch.tensor([2, 0, 3, 1])
    ties = 0
    for pick in (0.25, 0.5, 0.75):
        t = torch.stack([v[int(pick * (len(v) - 1))] for v in values])  # scores that pixels hold
        ties += int((flat == t[:, None]).sum())
        for lam in (t, torch.nextafter(t, torch.full_like(t, 2.0)), torch.nextafter(t, torch.zeros_like(t)),
                    torch.zeros(B), torch.ones(B)):
            want = (score >= lam.view(B, 1, 1, 1)).float()
            mask, area = adm_mask(x.to(device), x_hat.to(device), lam, backend=backend)
            assert torch.equal(mask.cpu(), want) and torch.equal(area.cpu(), want.mean(dim=(1, 2, 3)))
            mixed, lam2, mask = adm_mix(x.to(device), x_hat.to(device), perm.to(device), lam, stacked=True,
                                        return_mask=True, backend=backend)
            on = want.bool()
            assert torch.equal(mask.cpu(), want)
            assert torch.equal(mixed.cpu(), torch.cat([torch.where(on, x, x[perm]), torch.where(on, x[perm], x)]))
            assert torch.equal(lam2.cpu(), 1 - want.sum(dim=(1, 2, 3)) / (H * W))
    assert ties > 100  # the thresholds do sit on shared scores


def test_raw_adm_apply_on_uint8_with_any_range_is_the_float_formula():
    """The integer-sum decisions hold for the range adm_minmax gives; a raw adm_apply given
    another one (lo above some differences, fractional, or negative) must still compute
    A >= thr from that range, as the float32 path does on the same values."""
    g = torch.Generator().manual_seed(9)
    x = torch.randint(0, 256, (2, 3, 33, 29), generator=g, dtype=torch.uint8)
    x_hat = torch.randint(0, 256, (2, 3, 33, 29), generator=g, dtype=torch.uint8)
    thr = torch.tensor([0.4, 0.6])
    true = torch.ops.medmix.adm_minmax(x, x_hat)
    for lo, hi in ((None, None), (40.0, 200.0), (2.5, 250.0), (-3.0, 255.0), (0.0, 100.0)):
        mm = true.clone()
        if lo is not None:
            mm[..., 0], mm[..., 1] = lo, hi
        got, n_got = torch.ops.medmix.adm_apply(x, x_hat, mm, thr, False)
        want, n_want = torch.ops.medmix.adm_apply(x.float(), x_hat.float(), mm, thr, False)
        assert torch.equal(got, want) and torch.equal(n_got, n_want), (lo, hi)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8], ids=["float32", "uint8"])
@pytest.mark.parametrize("shape", [(3, 3, 70, 71), (2, 1, 5, 3), (1, 2, 64, 64)], ids=lambda s: "x".join(map(str, s)))
def test_histogram_counts_the_scores_bins(kernel_backend, dtype, shape):
    """adm_histogram (Otsu's input) counts every pixel's bin floor(clamp(A) * 256) exactly:
    against a bincount of the op's own scores, over chunk tails that are not a multiple of
    four pixels (the CPU counts into four sub-histograms in turn)."""
    device, backend = kernel_backend
    ns = torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix
    x, x_hat = pair(shape, dtype, device, seed=6)
    mm = ns.adm_minmax(x, x_hat)
    score, _ = ns.adm_apply(x, x_hat, mm, torch.zeros(shape[0], device=device), True)
    bins = (score.clamp(0, 1) * 256).long().clamp(max=255).reshape(shape[0], -1).cpu()
    want = torch.stack([torch.bincount(b, minlength=256) for b in bins]).int()
    got = ns.adm_histogram(x, x_hat, mm).cpu()
    assert torch.equal(got, want) and int(got.sum()) == shape[0] * shape[2] * shape[3]


def numpy_otsu(a, bins=256):
    """Otsu on a [0, 1] map: loop over the 255 splits of a `bins`-bin histogram."""
    hist = np.bincount(np.minimum((np.clip(a, 0, 1) * bins).astype(np.int64), bins - 1).ravel(),
                       minlength=bins).astype(np.float64)
    centers = (np.arange(bins) + 0.5) / bins
    best, best_t = -1.0, None
    for t in range(bins):
        w0, w1 = hist[:t + 1].sum(), hist[t + 1:].sum()
        if w0 == 0 or w1 == 0:
            continue
        mu0 = (hist[:t + 1] * centers[:t + 1]).sum() / w0
        mu1 = (hist[t + 1:] * centers[t + 1:]).sum() / w1
        v = w0 * w1 * (mu0 - mu1) ** 2
        if v > best:
            best, best_t = v, t
    return 2.0 if best_t is None else (best_t + 1) / bins


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8], ids=["float32", "uint8"])
def test_otsu_mask_matches_numpy_otsu(device_backend, dtype):
    device, backend = device_backend
    x, x_hat = pair((3, 3, 40, 45), dtype, device, seed=1)
    mask, area = adm_mask(x, x_hat, mode="otsu", backend=backend)
    score = numpy_score(x, x_hat)
    thr = [numpy_otsu(a) for a in score]
    # bin edges are decided in float32 by the kernels: pixels near a bin edge may bin either way
    assert_mask_matches(mask, score, thr, "otsu", eps=1e-4)
    assert ((area > 0) & (area < 1)).all()


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 1.0])
def test_quantile_mask_keeps_the_top_fraction(device_backend, q):
    device, backend = device_backend
    x, x_hat = pair((2, 3, 30, 33), torch.float32, device, seed=2)
    mask, area = adm_mask(x, x_hat, q, mode="quantile", backend=backend)
    n = 30 * 33
    k = round(q * n)
    for b, a in enumerate(numpy_score(x, x_hat)):
        m = mask[b, 0].cpu().numpy().astype(bool)
        assert m.sum() >= k and m.sum() <= k + 2  # ties at the threshold are kept
        if 0 < k < n:
            assert a[m].min() >= a[~m].max() - 1e-6  # the kept pixels are the top ones


def test_quantile_threshold_by_selection_equals_the_sorted_one():
    """On the CPU a batch whose samples share k selects the k-th largest score (kthvalue)
    instead of sorting: the same values as the reference's sort, with ties, NaN scores (the
    largest, as in the sort), k = 0 (2.0), k = n, per-sample q (the sort) and one pixel."""
    from medmix_ops.ops.adm import quantile_threshold
    from medmix_ops.reference.adm import quantile_threshold as sorted_threshold

    g = torch.Generator().manual_seed(4)
    score = (torch.rand(5, 1, 17, 23, generator=g) * 8).floor() / 8  # many ties
    score[1, 0, 3, :5] = float("nan")
    for q in ([0.0] * 5, [1.0] * 5, [0.5] * 5, [0.3] * 5, [2 / 391] * 5, [0.1, 0.5, 0.9, 0.0, 1.0]):
        q = torch.tensor(q)
        got, want = quantile_threshold(score, q), sorted_threshold(score, q)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got[~got.isnan()], want[~want.isnan()]), q
    one = torch.rand(3, 1, 1, 1, generator=g)
    for q in (0.0, 0.4, 0.6, 1.0):
        assert torch.equal(quantile_threshold(one, torch.full((3,), q)), sorted_threshold(one, torch.full((3,), q)))


def test_identical_images_give_empty_masks(device_backend):
    device, backend = device_backend
    x, _ = pair((2, 3, 16, 16), torch.float32, device)
    for mode in ("lambda", "otsu", "quantile"):
        mask, area = adm_mask(x, x.clone(), 0.0 if mode != "quantile" else 0.5, mode, backend=backend)
        assert torch.isfinite(mask).all() and (mask == 0).all() and (area == 0).all()
    # x_hat = x + c: D is constant up to rounding, which must not decide the mask
    mask, _ = adm_mask(x, x + 0.1, 0.0, backend=backend)
    assert (mask == 0).all()


# ---- adm_mix and the public VariMix loop ----------------------------------------------------------

def test_adm_mix_matches_the_public_varimix_loop(device_backend):
    device, backend = device_backend
    x, x_hat = pair((6, 3, 48, 40), torch.float32, device, seed=3)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    lam = 0.35
    src, ref, lams = adm_mix(x, x_hat, perm.to(device), lam, backend=backend)
    w_src, w_ref, w_lams = varimix_loop(x.cpu(), x_hat.cpu(), perm, lam)
    score = numpy_score(x, x_hat)
    ambiguous = sum(int((np.abs(a - lam) <= 1e-6).sum()) for a in score)
    assert ambiguous == 0, "choose another seed: a pixel sits on the threshold"
    assert torch.equal(src.cpu(), w_src) and torch.equal(ref.cpu(), w_ref)
    assert torch.allclose(lams.cpu(), w_lams)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_adm_mix_definition(device_backend, shape, dtype, channels_last):
    device, backend = device_backend
    x, x_hat = pair(shape, dtype, device, seed=4, channels_last=channels_last)
    B = shape[0]
    perm = torch.arange(B - 1, -1, -1)
    lam = torch.linspace(0.2, 0.6, B)
    src, ref, lams = adm_mix(x, x_hat, perm.to(device), lam, backend=backend)
    assert src.dtype == dtype and src.shape == x.shape and lams.shape == (B,)
    mask, area = adm_mask(x, x_hat, lam, backend=backend)
    k = mask.bool().expand_as(x)
    other = x[perm.to(device)]
    assert torch.equal(src, torch.where(k, x, other))  # mask pixels copied bit for bit
    assert torch.equal(ref, torch.where(k, other, x))
    assert torch.allclose(lams, 1 - area)
    *_, written = adm_mix(x, x_hat, perm.to(device), lam, return_mask=True, backend=backend)
    assert torch.equal(written, mask)
    assert_mask_matches(mask, numpy_score(x, x_hat), lam.tolist(), "adm_mix mask")
    # stacked: both directions in one [2B] tensor, the memory format of x
    mixed, lams2 = adm_mix(x, x_hat, perm.to(device), lam, stacked=True, backend=backend)
    assert mixed.shape == (2 * B, *shape[1:]) and torch.equal(mixed, torch.cat([src, ref]))
    assert torch.equal(lams2, lams)
    if not x.is_contiguous() and backend != "reference":
        assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_sliced_inputs(device_backend):
    device, backend = device_backend
    big, big_hat = pair((4, 4, 30, 40), torch.float32, device)
    x, x_hat = big[::2, 1:], big_hat[::2, 1:]
    perm = torch.tensor([1, 0], device=device)
    got = adm_mix(x, x_hat, perm, 0.3, backend=backend)
    want = adm_mix(x.contiguous(), x_hat.contiguous(), perm, 0.3, backend="reference")
    for g, w in zip(got, want):
        assert torch.allclose(g, w)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_adm_mix_into_out(device_backend, layout):
    """out=: the results are views of the caller's buffer (reusable across batches, any
    strides) and equal the freshly allocated ones."""
    device, backend = device_backend
    x, x_hat = pair((3, 3, 37, 29), torch.float32, device, seed=8)
    perm = torch.tensor([2, 0, 1], device=device)
    lam = torch.tensor([0.3, 0.5, 0.4])
    want = adm_mix(x, x_hat, perm, lam, stacked=True, return_mask=True, backend=backend)
    if layout == "sliced":
        out = torch.full((6, 4, 37, 31), -1.0, device=device)[:, 1:, :, 1:30]
    else:
        out = torch.empty(6, 3, 37, 29, device=device)
        if layout == "channels_last":
            out = out.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # the same buffer, twice
        got = adm_mix(x, x_hat, perm, lam, stacked=True, return_mask=True, out=out, backend=backend)
        assert got[0] is out or got[0].data_ptr() == out.data_ptr()
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    src, ref, _ = adm_mix(x, x_hat, perm, lam, out=out, backend=backend)
    assert src.data_ptr() == out.data_ptr() and torch.equal(torch.cat([src, ref]), want[0])
    if layout == "sliced":  # nothing outside the view was written
        assert (out._base[:, 0] == -1).all() and (out._base[..., 0] == -1).all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_cpu_per_sample_and_two_pass_paths_agree(layout):
    """With >= 4 samples a thread the CPU kernel takes each sample's range and mix in one task
    (while the sample is cached), with fewer it runs two passes over (sample, chunk) tasks:
    both give the mask of the definition, bit for bit, flat samples included."""
    shape = (9, 3, 70, 61)  # two chunks a sample
    x, x_hat = pair(shape, torch.float32, "cpu", seed=11, channels_last=layout == "channels_last")
    if layout == "sliced":
        x, x_hat = torch.cat([x, x], 3)[..., ::2], torch.cat([x_hat, x_hat], 3)[..., ::2]
    x_hat[4] = x[4]  # a flat sample: empty mask
    x_hat[7] = x[7] + 0.25  # flat up to rounding
    x_hat[0, 2, -1, -1] += 3.0  # the max of D at a sample's very last pixel and channel
    x_hat[5, 0, -1, -1] = x[5, 0, -1, -1] - 2.0
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    lam = torch.linspace(0.2, 0.6, 9)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 3):  # 9 samples on 1 thread: per sample; on 3 threads: two passes
            torch.set_num_threads(n)
            runs.append(adm_mix(x, x_hat, perm, lam, stacked=True, return_mask=True, backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    mask, area = adm_mask(x, x_hat, lam, backend="reference")
    k = mask.bool().expand_as(x)
    want = torch.cat([torch.where(k, x, x[perm]), torch.where(k, x[perm], x)])
    assert not mask[4].any() and not mask[7].any() and mask.any()
    for mixed, lams, written in runs:
        assert torch.equal(written, mask) and torch.equal(mixed, want)
        assert torch.allclose(lams, 1 - area)


def test_cpu_is_deterministic():
    x, x_hat = pair((4, 3, 90, 90), torch.float32, "cpu")
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(0))
    a = adm_mix(x, x_hat, perm, 0.4, backend="cpu")
    b = adm_mix(x, x_hat, perm, 0.4, backend="cpu")
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# ---- torch.library integration ----------------------------------------------------------------------

def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix
    x, x_hat = pair((2, 3, 9, 11), torch.float32, device)
    torch.library.opcheck(ns.adm_minmax.default, (x, x_hat))
    mm = ns.adm_minmax(x, x_hat)
    thr = torch.tensor([0.2, 0.5], device=device)
    torch.library.opcheck(ns.adm_apply.default, (x, x_hat, mm, thr, False))
    torch.library.opcheck(ns.adm_apply.default, (x, x_hat, mm, thr, True))
    torch.library.opcheck(ns.adm_histogram.default, (x, x_hat, mm))
    perm = torch.tensor([1, 0], device=device)
    torch.library.opcheck(ns.adm_mix.default, (x, x_hat, perm, thr, False))
    torch.library.opcheck(ns.adm_mix.default, (x, x_hat, perm, thr, True))
    # the [2B] output follows x into channels_last, in the fake kernel too
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, x_hat)]
    torch.library.opcheck(ns.adm_mix.default, (*cl, perm, thr, False))
    out = torch.empty(4, 3, 9, 11, device=device)
    torch.library.opcheck(ns.adm_mix_out.default, (x, x_hat, perm, thr, True, out))


def test_torch_compile_fullgraph(device_backend):
    device, backend = device_backend
    x, x_hat = pair((2, 3, 16, 20), torch.float32, device)
    perm = torch.tensor([1, 0], device=device)
    torch._dynamo.reset()

    def f(a, b):
        src, ref, lams = adm_mix(a, b, perm, 0.3, backend=backend, validate=False)
        mask, area = adm_mask(a, b, 0.3, backend=backend)
        return src + ref, lams, mask, area

    got, want = torch.compile(f, fullgraph=True)(x, x_hat), f(x, x_hat)
    for g, w in zip(got, want):
        assert torch.allclose(g, w)


# ---- bad input ------------------------------------------------------------------------------------------

def _args():
    return dict(x=torch.rand(2, 3, 8, 8), x_hat=torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(mode="mean"), ValueError, "mode must be one of"),
    (dict(lam=1.5), ValueError, "lam must be finite and in [0.0, 1.0], got 1.5"),
    (dict(lam=-0.1), ValueError, "lam must be finite and in"),
    (dict(lam=[0.5]), ValueError, "lam must have one value per sample (2), got 1"),
    (dict(lam=torch.tensor([0.2, float("nan")])), ValueError, "lam[1] = nan"),
    (dict(lam=torch.ones(3)), ValueError, "shape [B] = [2]"),
    (dict(x_hat=torch.rand(2, 3, 8, 9)), ValueError, "x and x_hat must have one shape"),
    (dict(x_hat=torch.rand(2, 3, 8, 8).double()), TypeError, "x and x_hat must have one dtype"),
    (dict(x=torch.rand(3, 8, 8), x_hat=torch.rand(3, 8, 8)), ValueError, "x must be 4-D"),
    (dict(x=torch.ones(2, 3, 8, 8, dtype=torch.int32), x_hat=torch.ones(2, 3, 8, 8, dtype=torch.int32)),
     TypeError, "x must have dtype in"),
])
def test_adm_mask_bad_input(kwargs, exc, message):
    args = _args()
    args.update(kwargs)
    with pytest.raises(exc, match=__import__("re").escape(message)):
        adm_mask(**args)


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(perm=torch.tensor([0, 1, 2])), ValueError, "perm must have shape [B] = [2], got [3]"),
    (dict(perm=torch.tensor([0.0, 1.0])), TypeError, "perm must be an integer tensor"),
    (dict(perm=[1, 0]), TypeError, "perm must be a torch.Tensor"),
    (dict(perm=torch.tensor([0, 2])), ValueError, "perm values must be in [0, 2), got perm[1] = 2"),
    (dict(perm=torch.tensor([-1, 0])), ValueError, "got perm[0] = -1"),
    (dict(lam="0.5"), TypeError, "lam must be a float"),
    (dict(out=torch.empty(2, 3, 8, 8)), ValueError, "out must be [4, 3, 8, 8] torch.float32 on cpu"),
    (dict(out=torch.empty(4, 3, 8, 8).double()), ValueError, "out must be [4, 3, 8, 8]"),
    (dict(out=torch.empty(1, 3, 8, 8).expand(4, 3, 8, 8)), ValueError, "must not be an expanded view"),
    (dict(out=torch.empty(4, 3, 8, 8, requires_grad=True)), ValueError, "must not require grad"),
    (dict(out=[None]), TypeError, "out must be a tensor"),
])
def test_adm_mix_bad_input(kwargs, exc, message):
    args = dict(_args(), perm=torch.tensor([1, 0]), lam=0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=__import__("re").escape(message)):
        adm_mix(**args)


def test_out_sharing_memory_with_the_input_is_refused():
    buf = torch.rand(4, 3, 8, 8)
    x, x_hat = buf[:2], torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="must not share memory with x or x_hat"):
        adm_mix(x, x_hat, torch.tensor([1, 0]), 0.5, out=buf)
    with pytest.raises(RuntimeError, match="must not share memory"):  # the raw op checks it too
        torch.ops.medmix.adm_mix_out(x, x_hat, torch.tensor([1, 0]), torch.zeros(2), False, buf)


def test_raw_op_refuses_out_of_range_perm():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.medmix.adm_mix(x, x, torch.tensor([0, 5]), torch.zeros(2), False)


# ---- large fresh CPU outputs, recycled ------------------------------------------------------------

def test_recycled_output_is_reused_only_once_nothing_references_it(recycle_all):
    x, x_hat = pair((3, 3, 20, 24), torch.float32, "cpu", seed=1)
    x2, x2_hat = pair((3, 3, 20, 24), torch.float32, "cpu", seed=2)
    perm = torch.tensor([2, 0, 1])
    want1 = adm_mix(x, x_hat, perm, 0.4, stacked=True, backend="cpu", validate=False)[0].clone()
    want2 = adm_mix(x2, x2_hat, perm, 0.4, stacked=True, backend="cpu", validate=False)[0].clone()
    recycle_all.clear_output_cache()
    # held results are never written again: the whole stacked batch, one half, a numpy array
    mixed, _ = adm_mix(x, x_hat, perm, 0.4, stacked=True, backend="cpu")
    probe, _ = adm_mix(x2, x2_hat, perm, 0.4, stacked=True, backend="cpu")
    assert torch.equal(mixed, want1) and torch.equal(probe, want2)
    del probe
    src, ref, _ = adm_mix(x, x_hat, perm, 0.4, backend="cpu")
    arr = adm_mix(x, x_hat, perm, 0.4, stacked=True, backend="cpu")[0].numpy()
    del src  # ref still holds that buffer
    held = {t.untyped_storage().data_ptr() for t in (mixed, ref, torch.from_numpy(arr))}
    seen = set()
    for _ in range(4):
        other, _ = adm_mix(x2, x2_hat, perm, 0.4, stacked=True, backend="cpu")
        assert torch.equal(other, want2) and other.untyped_storage().data_ptr() not in held
        seen.add(other.data_ptr())
    assert torch.equal(mixed, want1) and torch.equal(ref, want1[3:])
    assert torch.equal(torch.from_numpy(arr), want1)
    assert len(seen) == 2  # the two kept buffers, alternating while `other` holds one
    # a dropped result's memory is taken again, and the new result is right
    del other
    again, _ = adm_mix(x, x_hat, perm, 0.4, stacked=True, backend="cpu")
    assert again.data_ptr() in seen and torch.equal(again, want1)
    # a reused buffer, too, is handed out as a view: holding it counts
    kept = [adm_mix(x2, x2_hat, perm, 0.4, stacked=True, backend="cpu") for _ in range(3)]
    assert torch.equal(again, want1) and all(torch.equal(m, want2) for m, _ in kept)


def test_recycled_output_follows_the_memory_format(recycle_all):
    x, x_hat = pair((2, 3, 9, 11), torch.float32, "cpu", seed=5)
    perm = torch.tensor([1, 0])
    plain, _ = adm_mix(x, x_hat, perm, 0.3, stacked=True, backend="cpu")
    ptr, want = plain.data_ptr(), plain.clone()
    del plain
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, x_hat)]
    got, _ = adm_mix(*cl, perm, 0.3, stacked=True, backend="cpu")
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)
    assert got.data_ptr() != ptr  # the contiguous buffer does not fit
    del got
    got, _ = adm_mix(x, x_hat, perm, 0.3, stacked=True, backend="cpu")
    assert got.is_contiguous() and got.data_ptr() == ptr and torch.equal(got, want)


def test_recycled_output_is_an_inference_tensor_exactly_where_a_new_one_would_be(recycle_all):
    x, x_hat = pair((2, 3, 9, 11), torch.float32, "cpu", seed=6)
    perm = torch.tensor([1, 0])
    for first, second in ((True, False), (False, True)):
        recycle_all.clear_output_cache()
        with torch.inference_mode(first):
            got, _ = adm_mix(x, x_hat, perm, 0.3, stacked=True, backend="cpu")
        assert got.is_inference() == first
        del got
        with torch.inference_mode(second):
            got, _ = adm_mix(x, x_hat, perm, 0.3, stacked=True, backend="cpu")
        assert got.is_inference() == second
        if not second:  # usable where autograd records, as a new output would be
            (got * torch.ones((), requires_grad=True)).sum().backward()


def test_output_moved_to_shared_memory_is_never_reused(recycle_all):
    """A DataLoader worker hands its batch to the main process by moving the storage into
    shared memory: the main process keeps reading it after the worker has dropped it."""
    x, x_hat = pair((2, 3, 9, 11), torch.float32, "cpu", seed=7)
    x2, x2_hat = pair((2, 3, 9, 11), torch.float32, "cpu", seed=8)
    perm = torch.tensor([1, 0])
    got, _ = adm_mix(x, x_hat, perm, 0.3, stacked=True, backend="cpu")
    got.share_memory_()  # what the worker's pickler does
    shared = torch.from_numpy(got.numpy().copy())  # stands for the main process's view
    ptr = got.data_ptr()
    del got
    again, _ = adm_mix(x2, x2_hat, perm, 0.3, stacked=True, backend="cpu")
    assert again.data_ptr() != ptr and not again.is_shared()
    assert not any(b.is_shared() for b in recycle_all._recycled.slots)
    assert not torch.equal(again, shared)


def test_batches_from_a_dataloader_worker_stay_intact(recycle_all):
    """adm_mix in a DataLoader worker's collate: every batch the main process holds keeps its
    values while the worker makes the next ones (the worker must not write into memory it
    has shared)."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork (the worker inherits the lowered recycling threshold)")
    x, x_hat = pair((6, 3, 9, 11), torch.float32, "cpu", seed=9)

    def collate(idx):
        i = torch.tensor(idx)
        return adm_mix(x[i], x_hat[i] * (1 + 0.1 * i[0]), torch.tensor([1, 0]), 0.3, stacked=True,
                       backend="cpu")[0]

    loader = torch.utils.data.DataLoader(range(6), batch_size=2, collate_fn=collate, num_workers=1,
                                         multiprocessing_context="fork")
    got = list(loader)  # all held at once
    want = [collate([2 * k, 2 * k + 1]) for k in range(3)]
    assert len(got) == 3 and all(torch.equal(g, w) for g, w in zip(got, want))


def test_recycling_is_off_where_the_reference_count_does_not_count_views(monkeypatch):
    from medmix_ops.ops import _recycle

    assert _recycle._calibrate_use_count()[0] is not None  # this torch: counted
    monkeypatch.setattr(torch._C, "_storage_Use_Count", lambda cdata: 1, raising=False)
    assert _recycle._calibrate_use_count() == (None, 0)
    monkeypatch.delattr(torch._C, "_storage_Use_Count")
    assert _recycle._calibrate_use_count() == (None, 0)


def test_outputs_below_the_threshold_are_not_kept():
    from medmix_ops.ops import _recycle, clear_output_cache

    clear_output_cache()
    x, x_hat = pair((2, 3, 9, 11), torch.float32, "cpu")
    adm_mix(x, x_hat, torch.tensor([1, 0]), 0.3, backend="cpu")
    assert getattr(_recycle._recycled, "slots", []) == []
