"""saliency: OpenCV parity of the reference, every backend against the reference, independent
checks of the gradient / Grad-CAM definitions, saliency_from_model on timm models, integration
with torch.library, determinism and bad input."""
import math
import warnings

import numpy as np
import pytest
import torch

from medmix_ops import saliency, saliency_from_model
import importlib

sal_ops = importlib.import_module("medmix_ops.ops.saliency")  # the module (the function shadows it)
from medmix_ops.reference import saliency as ref

from helpers import assert_close, blur_f64

IMAGE_DTYPES = [torch.uint8, torch.float32, torch.float16, torch.bfloat16]


def pearson(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def natural_and_medical_images():
    """(name, HxWx3 or HxW uint8) from packages that ship them: scikit-image's natural photos,
    fundus (retina, microaneurysms) and histology (immunohistochemistry) images, and pydicom's
    CT and MR test slices (windowed to 8 bits)."""
    data = pytest.importorskip("skimage.data")
    out = [("astronaut", data.astronaut()), ("camera", data.camera()), ("retina", data.retina()),
           ("microaneurysms", data.microaneurysms()), ("ihc", data.immunohistochemistry())]
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        for name in ("CT_small.dcm", "MR_small.dcm"):  # bundled with pydicom (no download)
            a = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)
            out.append((name, np.round(255 * (a - a.min()) / (a.max() - a.min())).astype(np.uint8)))
    except ImportError:
        pass
    return out


def resized(img, size):
    from skimage.transform import resize

    return resize(img, size, anti_aliasing=True, preserve_range=True).round().astype(np.uint8)


# ---- the reference against OpenCV-contrib ---------------------------------------------------------

@pytest.mark.parametrize("method", ["spectral_residual", "fine_grained"])
def test_reference_correlates_with_opencv(method):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "saliency"):
        pytest.skip("opencv-contrib (cv2.saliency) is not installed")
    make = {"spectral_residual": cv2.saliency.StaticSaliencySpectralResidual_create,
            "fine_grained": cv2.saliency.StaticSaliencyFineGrained_create}[method]
    worst = (1.0, None)
    for name, img in natural_and_medical_images():
        for size in [(224, 224), (97, 131), (37, 300), (256, 200)]:
            im = resized(img, size)
            rgb = im if im.ndim == 3 else im[..., None]
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()
            ours = saliency(x, method, backend="reference")[0, 0].numpy()
            bgr = np.ascontiguousarray(rgb[..., ::-1]) if rgb.shape[-1] == 3 else im
            ok, theirs = make().computeSaliency(bgr)
            assert ok
            r = pearson(ours, theirs)
            worst = min(worst, (r, f"{name} {size}"))
    assert worst[0] >= 0.98, f"Pearson {worst[0]:.4f} on {worst[1]}"


# ---- independent definitions of gradient and Grad-CAM saliency -----------------------------------

def _minmax(m):
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def test_reference_gradient_matches_definition():
    g = torch.randn(2, 3, 17, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for reduce, sigma in [("max", 1.5), ("sum", 0.0), ("max", 4.0)]:
        got = ref.gradient(g.float(), reduce, sigma)
        a = g.abs().numpy()
        m = a.max(axis=1) if reduce == "max" else a.sum(axis=1)
        want = np.stack([_minmax(blur_f64(mi, sigma) if sigma > 0 else mi) for mi in m])[:, None]
        # fp32 blur of values up to ~4 over 2 x 25 taps, then divided by a range of ~3: a few
        # 1e-6 of rounding (2.45e-6 seen on other inputs)
        assert_close(got, want, 5e-6, 2e-6, f"gradient {reduce} {sigma}")


def test_reference_gradcam_matches_definition():
    F = torch.nn.functional
    A = torch.rand(2, 5, 6, 7, dtype=torch.float64)
    G = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    got = ref.gradcam(A.float(), G.float(), (30, 35))
    w = G.mean(dim=(2, 3))
    cam = torch.relu((A * w[:, :, None, None]).sum(1, keepdim=True))
    up = F.interpolate(cam, size=(30, 35), mode="bilinear", align_corners=False).numpy()
    want = np.stack([_minmax(u[0]) for u in up])[:, None]
    assert_close(got, want, 2e-6, 2e-6, "gradcam")


# ---- every backend against the reference -----------------------------------------------------------

def images(shape, dtype, device, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    # smooth structure + a bright blob, so that saliency has something to find
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, shape[2]), torch.linspace(-1, 1, shape[3]), indexing="ij")
    x = 0.3 * x + 0.7 * torch.exp(-((yy - 0.3) ** 2 + (xx + 0.2) ** 2) / 0.05)
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device)


IMAGE_SHAPES = [(2, 3, 37, 53), (1, 1, 1, 1), (3, 1, 5, 4), (1, 3, 70, 30), (2, 2, 64, 64)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method", ["spectral_residual", "fine_grained"])
def test_image_methods_match_reference(kernel_backend, method, shape, dtype, channels_last):
    device, backend = kernel_backend
    x = images(shape, dtype, device, channels_last=channels_last)
    got = saliency(x, method, backend=backend)
    want = saliency(x.cpu(), method, backend="reference")
    assert got.shape == (shape[0], 1, shape[2], shape[3]) and got.dtype == torch.float32
    assert_close(got, want.numpy(), 3e-5, 0, method)


def axis_constant_images():
    """Images constant along their rows or columns (one pixel wide or tall too), uint8 [1, 1, H,
    W]: all but one row or column of their spectrum is zero, or the FFT's rounding noise."""
    rng = np.random.default_rng(3)
    col, row = (rng.random((60, 1)) * 255).astype(np.uint8), (rng.random((1, 70)) * 255).astype(np.uint8)
    ims = {"37x1": (rng.random((37, 1)) * 255).astype(np.uint8),
           "1x53": (rng.random((1, 53)) * 255).astype(np.uint8),
           "rows 60x50": col.repeat(50, 1), "columns 48x70": row.repeat(48, 0)}
    return {k: torch.from_numpy(v)[None, None].contiguous() for k, v in ims.items()}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=["uint8", "float32"])
def test_spectral_residual_of_axis_constant_images(kernel_backend, dtype):
    # Their spectra's zeros (or noise) are floored at 1e-6 of the largest amplitude, with phase
    # 0: every backend gives the same map. Under the old absolute 1e-30 floor the uint8 maps
    # were all zeros (exp() overflowed), the float32 ones differed by up to 1.0 across backends
    # (noise decided them), and the interpreted Triton kernel warned of overflow.
    device, backend = kernel_backend
    for name, x in axis_constant_images().items():
        x = x if dtype == torch.uint8 else x.float() / 255
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = saliency(x.to(device), "spectral_residual", backend=backend)
        want = saliency(x, "spectral_residual", backend="reference")
        assert torch.isfinite(got).all() and got.amax().item() == pytest.approx(1.0), name
        assert_close(got, want.numpy(), 3e-5, 0, f"{name} {dtype}")


def test_spectral_residual_of_axis_constant_images_correlates_with_opencv():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "saliency"):
        pytest.skip("opencv-contrib (cv2.saliency) is not installed")
    for name, x in axis_constant_images().items():
        ok, theirs = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(x[0, 0].numpy())
        assert ok
        for xx in (x, x.float() / 255):
            ours = saliency(xx, "spectral_residual", backend="reference")[0, 0].numpy()
            r = pearson(ours, np.asarray(theirs).reshape(ours.shape))
            assert r >= 0.999, f"{name} {xx.dtype}: Pearson {r:.5f}"


@pytest.mark.parametrize("reduce,sigma", [("max", 3.0), ("sum", 0.0), ("max", 0.7), ("sum", 12.0)])
@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (1, 1, 1, 1), (3, 2, 5, 4), (1, 3, 9, 300)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gradient_matches_reference(kernel_backend, shape, reduce, sigma):
    device, backend = kernel_backend
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    got = saliency(g, "gradient", reduce=reduce, sigma=sigma, backend=backend)
    want = saliency(g.cpu(), "gradient", reduce=reduce, sigma=sigma, backend="reference")
    # Normalisation divides by the blurred map's range: a wide blur on a small image leaves a
    # nearly flat map, whose float32 summation-order differences (T taps, two passes) it
    # magnifies by magnitude / range. The tolerance follows that conditioning.
    a = g.abs().float().cpu()
    m = ref.separable_filter(a.amax(1) if reduce == "max" else a.sum(1), ref.gaussian_taps_sigma(sigma))
    lo, hi = m.amin(dim=(1, 2)), m.amax(dim=(1, 2))
    cond = float((torch.maximum(lo.abs(), hi.abs()) / (hi - lo).clamp_min(1e-30)).max())
    taps = ref.gaussian_taps_sigma(sigma).numel()
    assert_close(got, want.numpy(), 1e-5 + 2e-7 * taps * min(cond, 1e5), 0, "gradient")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("acts_shape,size", [((2, 8, 7, 7), (224, 224)), ((1, 3, 1, 1), (5, 9)),
                                             ((3, 16, 14, 10), (14, 10)), ((2, 4, 9, 5), (30, 11))],
                         ids=lambda v: "x".join(map(str, v)))
def test_gradcam_matches_reference(kernel_backend, acts_shape, size, dtype):
    device, backend = kernel_backend
    g = torch.Generator().manual_seed(2)
    A = torch.rand(acts_shape, generator=g).to(dtype).to(device)
    G = torch.randn(acts_shape, generator=g).to(dtype).to(device)
    got = saliency(A, "gradcam", grads=G, size=size, backend=backend)
    want = saliency(A.cpu(), "gradcam", grads=G.cpu(), size=size, backend="reference")
    assert got.shape == (acts_shape[0], 1, *size)
    assert_close(got, want.numpy(), 3e-5, 0, "gradcam")


@pytest.mark.parametrize("size", [(20, 31), (64, 64)], ids=["20x31", "64x64"])
@pytest.mark.parametrize("method", sal_ops.METHODS)
def test_constant_input_gives_zeros(device_backend, method, size):
    """At 64 x 64 the spectral residual's map keeps its size, so its last blur pass writes the
    output (and the zeros of the flat sample, gated off) itself; beside it a sample with content."""
    device, backend = device_backend
    x = torch.full((3, 3, *size), 0.37)
    x[1] = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    kw = {"grads": torch.ones_like(x), "size": size} if method == "gradcam" else {}
    out = saliency(x, method, backend=backend, **kw)
    assert torch.isfinite(out).all() and (out[[0, 2]] == 0).all()
    assert out[1].amin() == 0 and out[1].amax() == 1


def test_fine_grained_of_a_rounding_flat_image_is_zero(device_backend):
    """An image whose smoothed grey map varies only at float rounding level gives zeros, per
    sample, rather than its on / max(on) rescaling of rounding noise to a full-range map."""
    device, backend = device_backend
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 1e-7 * torch.rand(3, 3, 16, 16, generator=g)  # a few ulps of 0.4 apart
    x[2] = torch.rand(3, 16, 16, generator=g)  # a real image beside them
    tiny = torch.tensor([[0.3479, 0.7158], [0.6938, 0.4885], [0.1321, 0.1266], [0.1556, 0.5435],
                         [0.7573, 0.2231], [0.8540, 0.8711]], dtype=torch.float16).view(1, 3, 2, 2)
    out = saliency(x.to(device), "fine_grained", backend=backend).cpu()
    assert (out[:2] == 0).all() and out[2].amin() == 0 and out[2].amax() == 1
    # a 2 x 2 image that smooths to four values an ulp apart (found by MEDMIX_FUZZ=long)
    assert (saliency(tiny.to(device), "fine_grained", backend=backend) == 0).all()


@pytest.mark.parametrize("method", sal_ops.METHODS)
def test_each_sample_spans_zero_to_one(device_backend, method):
    device, backend = device_backend
    x = images((3, 3, 33, 41), torch.float32, device, seed=4)
    # positive gradients give positive channel weights, so every Grad-CAM has content
    grads = torch.rand(x.shape, generator=torch.Generator().manual_seed(5)).to(device) + 0.1
    kw = {"grads": grads, "size": (33, 41)} if method == "gradcam" else {}
    out = saliency(x, method, backend=backend, **kw).cpu()
    flat = out.flatten(1)
    assert torch.allclose(flat.amin(1), torch.zeros(3)) and torch.allclose(flat.amax(1), torch.ones(3))


def test_gradcam_all_negative_evidence_gives_zeros(device_backend):
    """relu(sum_k w_k A_k) <= 0 everywhere: no positive evidence, an all-zero map (not NaN)."""
    device, backend = device_backend
    acts = torch.rand(2, 4, 6, 6, device=device)
    out = saliency(acts, "gradcam", grads=-torch.ones_like(acts), size=(12, 12), backend=backend)
    assert torch.isfinite(out).all() and (out == 0).all()


def test_samples_are_independent(kernel_backend):
    """A sample's map does not depend on the rest of the batch (NaN in one stays there)."""
    device, backend = kernel_backend
    x = images((3, 3, 24, 24), torch.float32, device)
    alone = saliency(x[1:2], "fine_grained", backend=backend)
    x = x.clone()
    x[0, 0, 3, 3] = float("nan")
    together = saliency(x, "fine_grained", backend=backend)
    assert torch.equal(together[1:2], alone)


def test_cpu_fine_grained_across_scratch_chunks():
    """The CPU kernel maps a batch in chunks of samples whose scratch (integral image, on /
    off: 24 bytes a pixel) is about 8 MB, at least a sample per thread: at 1 x 224 x 256 and
    2 threads, 13 samples are chunks of 6, 6 and 1. Each sample's map equals the map of that
    sample alone, bitwise, and the reference's. The contrast falls from sample to sample, so
    a per-sample maximum or extremum left over from an earlier chunk would change the map."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(13, 1, 224, 256, generator=g)
    x = 0.5 + (x - 0.5) * torch.linspace(1.0, 0.3, 13).view(-1, 1, 1, 1)
    x[8] = 0.25  # a flat sample inside a chunk: zeros, and its neighbours unaffected
    # The intensity on / max(on) + off / max(off) peaks at 1 unless the "on" peak has "off"
    # contrast at another scale: a disc in a dark ring in a bright field peaks at ~1.05. It
    # comes first in its chunk, the next chunks' first samples peak at 1.
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(256.0), indexing="ij")
    r = ((yy - 112) ** 2 + (xx - 128) ** 2).sqrt()
    x[0] = torch.where(r < 5, 0.8, torch.where(r < 15, 0.1, 0.9))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = saliency(x, "fine_grained", backend="cpu")
        for i in range(x.shape[0]):
            assert torch.equal(out[i:i + 1], saliency(x[i:i + 1], "fine_grained", backend="cpu")), i
    finally:
        torch.set_num_threads(threads)
    assert (out[8] == 0).all()
    assert_close(out, ref.fine_grained(x).numpy(), 3e-5, 0, "fine_grained")


def test_cpu_saliency_is_deterministic():
    x = images((4, 3, 40, 40), torch.float32, "cpu")
    g = torch.randn(4, 3, 40, 40)
    for method, kw in [("spectral_residual", {}), ("fine_grained", {}), ("gradient", {})]:
        arg = g if method == "gradient" else x
        runs = [saliency(arg, method, backend="cpu", **kw) for _ in range(2)]
        assert torch.equal(runs[0], runs[1]), method


# ---- saliency_from_model ---------------------------------------------------------------------------

class LinearProbe(torch.nn.Module):
    """logits = W . flatten(x): the input gradient of class k is exactly W[k] reshaped."""

    def __init__(self, shape, classes=3):
        super().__init__()
        self.shape = shape
        self.fc = torch.nn.Linear(int(np.prod(shape)), classes, bias=False)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_from_model_gradient_is_the_known_gradient():
    torch.manual_seed(0)
    model = LinearProbe((3, 12, 15))
    x = torch.rand(2, 3, 12, 15)
    target = torch.tensor([2, 0])
    got = saliency_from_model(model, x, target, "gradient", sigma=1.0, backend="cpu")
    grad = model.fc.weight[target].detach().view(2, 3, 12, 15)
    want = saliency(grad, "gradient", sigma=1.0, backend="reference")
    assert torch.allclose(got, want, atol=1e-6)
    assert model.fc.weight.grad is None  # no parameter gradients left behind


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_from_model_runs_a_half_precision_batch_in_the_model_dtype(method):
    """A bf16 / fp16 batch and a float32 classifier (a mixed-precision loader's case): the
    model runs on the batch cast to its own dtype, the same map as the float32 batch."""
    torch.manual_seed(0)
    model = TinyCam()
    x = torch.rand(2, 3, 16, 20)
    kw = {"layer": "features"} if method == "gradcam" else {}
    for dt in (torch.bfloat16, torch.float16):
        xh = x.to(dt)
        got = saliency_from_model(model, xh, 3, method, backend="cpu", **kw)
        want = saliency_from_model(model, xh.float(), 3, method, backend="cpu", **kw)
        assert torch.equal(got, want)


class TinyCam(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))


def test_from_model_gradcam_matches_manual_gradcam():
    torch.manual_seed(0)
    model = TinyCam()
    x = torch.rand(2, 3, 16, 20)
    got = saliency_from_model(model, x, 3, "gradcam", layer="features", backend="cpu")
    acts = model.features(x)
    (g,) = torch.autograd.grad(model.head(torch.relu(acts).mean(dim=(2, 3)))[:, 3].sum(), acts)
    want = saliency(acts.detach(), "gradcam", grads=g, size=(16, 20), backend="reference")
    assert torch.allclose(got, want, atol=1e-6)


class TinyBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        self.head = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5, momentum=None))

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_from_model_keeps_batchnorm_statistics_in_train_mode(method):
    # a saliency pass is not a training batch: MedDiffuseMix runs two a step on the model
    # being trained, which moved its BatchNorm running statistics three times a step
    torch.manual_seed(0)
    model = TinyBN().train()
    model(torch.rand(4, 3, 8, 8))  # statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = {"layer": "features"} if method == "gradcam" else {}
    x = torch.rand(4, 3, 8, 8) * 3
    got = saliency_from_model(model, x, 1, method, backend="cpu", **kw)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the map itself is the train-mode one (batch statistics), as before
    xg = x.clone().requires_grad_(True)
    if method == "gradient":
        (g,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
        want = saliency(g, "gradient", backend="reference")
        assert torch.allclose(got, want, atol=1e-5)
    model(x)  # a plain train-mode forward does move them: the check above can fail
    assert not torch.equal(model.features[1].running_mean, before["features.1.running_mean"])


# (timm name, kwargs, image size, the last stage's module name, its output layout)
TIMM_MODELS = [
    ("convnext_atto", dict(), 64, "stages.3", "NCHW"),
    ("resnet18", dict(), 64, "layer4", "NCHW"),
    ("vit_tiny_patch16_224", dict(img_size=64, depth=2), 64, "blocks.1", "NLC"),
    ("swinv2_cr_tiny_ns_224", dict(img_size=64, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
     64, "stages.3", "NCHW"),
    ("swin_tiny_patch4_window7_224", dict(img_size=112, embed_dim=24, depths=(1, 1, 1, 1),
                                          num_heads=(1, 2, 3, 4), window_size=7), 112, "layers.3", "NHWC"),
]


@pytest.mark.parametrize("name,kwargs,size,layer,layout", TIMM_MODELS, ids=[m[0] for m in TIMM_MODELS])
def test_from_model_on_timm_models(name, kwargs, size, layer, layout):
    """The default layer and layout handling reproduce a hand-written Grad-CAM of the model's
    last stage; the gradient method gives a full-range map."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4, **kwargs).eval()
    x = torch.rand(2, 3, size, size)
    target = torch.tensor([1, 3])

    out = saliency_from_model(model, x, target, "gradient")
    assert out.shape == (2, 1, size, size) and torch.isfinite(out).all()
    assert torch.allclose(out.flatten(1).amax(1), torch.ones(2))

    got = saliency_from_model(model, x, target, "gradcam")
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = model(x)
    handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    if layout == "NHWC":
        a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    elif layout == "NLC":
        n = model.num_prefix_tokens
        grid = model.patch_embed.grid_size
        a, g = (t[:, n:].transpose(1, 2).reshape(2, -1, *grid) for t in (a, g))
    w = g.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * a).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)
    want = ref.normalize_min_max(cam[:, 0])[:, None]
    assert got.shape == (2, 1, size, size)
    assert torch.allclose(got, want, atol=1e-5)


def test_from_model_bad_input():
    model = TinyCam()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="method must be 'gradient' or 'gradcam'"):
        saliency_from_model(model, x, method="cam")
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 5\)"):
        saliency_from_model(model, x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        saliency_from_model(model, x, method="gradcam", layer="nope")
    with pytest.raises(TypeError, match="x must be floating"):
        saliency_from_model(model, (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="no timm feature_info"):
        saliency_from_model(model, x, method="gradcam")


# ---- torch.library integration ---------------------------------------------------------------------

def test_opcheck(kernel_backend):
    device, backend = kernel_backend
    ns = torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix
    x = images((2, 3, 9, 11), torch.float32, device)
    w = ref.grey_weights(3).to(device).expand(2, 3).contiguous()
    taps = ref.gaussian_taps_sigma(1.0).to(device)
    gate = torch.tensor([True, False], device=device)
    torch.library.opcheck(ns.saliency_map.default, (x, 0, w, taps, True, 13, 7, True, False, gate))
    torch.library.opcheck(ns.saliency_map.default, (x, 2, torch.empty(0, device=device), taps, False, 9, 11,
                                                    False, True, torch.empty(0, dtype=torch.bool, device=device)))
    spec = torch.randn(2, 8, 8, 2, device=device)
    torch.library.opcheck(ns.spectral_residual_filter.default, (spec,))
    grey = x[:, :1].contiguous()
    torch.library.opcheck(ns.fine_grained_saliency.default, (grey, [2, 4], gate))
    torch.library.opcheck(ns.fine_grained_saliency.default,
                          (grey, [2, 4], torch.empty(0, dtype=torch.bool, device=device)))


def _spectral_residual_filter_f64(spec: torch.Tensor) -> torch.Tensor:
    """The raw filter op's contract in float64 (csrc/ops.cpp): log amplitude floored at 1e-6 of
    the spectrum's largest, minus its 3x3 box mean (one reflection, no edge repeat), exp, with
    the original phase above the floor and phase 0 at or under it."""
    z = torch.complex(spec[..., 0].double(), spec[..., 1].double())
    amp = z.abs()
    floor = (amp.amax(dim=(1, 2), keepdim=True) * 1e-6).clamp_min(1e-30)
    la = torch.log(torch.maximum(amp, floor))
    h, w = la.shape[1:]

    def reflect(i, n):
        return 0 if n == 1 else (-i if i < 0 else (2 * (n - 1) - i if i >= n else i))

    rows = [[reflect(i + d, h) for d in (-1, 0, 1)] for i in range(h)]
    cols = [[reflect(j + d, w) for d in (-1, 0, 1)] for j in range(w)]
    box = torch.stack([torch.stack([la[:, r][:, :, c].sum(dim=(1, 2)) for c in cols], -1) for r in rows], -2)
    mag = torch.exp(la - box / 9)
    phased = amp > floor
    out = torch.where(phased, mag * z / torch.where(phased, amp, 1), mag.to(z.dtype))
    return torch.view_as_real(out)


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (5, 1), (2, 2), (13, 17), (64, 64)], ids=lambda s: "%dx%d" % s)
def test_spectral_residual_filter_matches_float64(kernel_backend, hw):
    # The filter alone, on spectra with amplitudes over 15 decades (exact zeros and values under
    # the floor included) and random phases; the maps' 3e-5 would hide an exp / log a few
    # hundred ulp off, this does not.
    device, backend = kernel_backend
    ns = torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix
    g = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    amp = torch.exp(torch.empty(3, *hw, dtype=torch.float64).uniform_(-20, 15, generator=g))
    amp[0].view(-1)[:: 3] = 0.0
    amp[1].view(-1)[1:: 4] *= 1e-9  # under 1e-6 of the largest
    phase = torch.empty(3, *hw, dtype=torch.float64).uniform_(-math.pi, math.pi, generator=g)
    spec = torch.stack([amp * torch.cos(phase), amp * torch.sin(phase)], -1).float()
    got = ns.spectral_residual_filter(spec.to(device)).cpu().double()
    want = _spectral_residual_filter_f64(spec)
    assert torch.isfinite(got).all()
    # each component against the value's modulus (a component near 0 has no relative accuracy)
    err = ((got - want).abs() / want.norm(dim=-1, keepdim=True)).amax().item()
    assert err < 2e-5, err


def test_fine_grained_gate_zeros_its_samples_only(kernel_backend):
    """The raw op's gate (the public op passes ~flat): gated-off samples are zeros, with NaN in
    their grey map too (their contrast is never used), and the others keep the bits of the
    ungated op, over several chunks a sample (the GPU kernels' 1024 / 2048-pixel chunks)."""
    device, backend = kernel_backend
    ns = torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix
    g = torch.Generator().manual_seed(3)
    grey = torch.rand(4, 1, 45, 61, generator=g).to(device)
    scales = list(ref.FINE_GRAINED_SCALES)
    none = torch.empty(0, dtype=torch.bool, device=device)
    full = ns.fine_grained_saliency(grey, scales, none)
    gate = torch.tensor([True, False, True, False], device=device)
    gated = ns.fine_grained_saliency(grey.masked_fill(~gate.view(4, 1, 1, 1), float("nan")), scales, gate)
    assert torch.equal(gated[gate], full[gate])
    assert torch.equal(gated[~gate], torch.zeros_like(gated[~gate]))
    assert torch.equal(ns.fine_grained_saliency(grey, scales, torch.ones(4, dtype=torch.bool, device=device)), full)
    # a strided gate is read by its elements, not its storage
    strided = torch.tensor([False, True, False, False, False, True, False, False], device=device)[1::2]
    assert torch.equal(ns.fine_grained_saliency(grey, scales, strided)[~strided], torch.zeros(2, 1, 45, 61, device=device))


@pytest.mark.parametrize("gate, message", [
    (torch.ones(3, dtype=torch.bool), r"gate must be empty or bool \[B\] = \[2\]"),
    (torch.ones(2, dtype=torch.uint8), r"gate must be empty or bool"),
    (torch.ones(2, 1, dtype=torch.bool), r"gate must be empty or bool"),
])
def test_raw_saliency_ops_refuse_a_bad_gate(gate, message):
    ns = torch.ops.medmix
    grey = torch.rand(2, 1, 9, 11)
    with pytest.raises(RuntimeError, match=message):
        ns.fine_grained_saliency(grey, [2, 4], gate)
    taps = ref.gaussian_taps_sigma(1.0)
    with pytest.raises(RuntimeError, match=message):
        ns.saliency_map(grey, 2, torch.empty(0), taps, False, 9, 11, True, False, gate)


def test_fine_grained_op_rejects_negative_scales():
    """The CPU kernel reads box corners x - n + 1 unclamped (its spans are vectorised), which
    only stays inside the integral image for n >= 0: the raw op refuses other scales rather
    than read out of bounds (the public saliency() only passes OpenCV's positive scales)."""
    ns = torch.ops.medmix
    grey = torch.rand(1, 1, 9, 11)
    with pytest.raises(RuntimeError, match="scales must be in"):
        ns.fine_grained_saliency(grey, [4, -3], torch.empty(0, dtype=torch.bool))


@pytest.mark.parametrize("method", sal_ops.METHODS)
def test_torch_compile_fullgraph(device_backend, method):
    device, backend = device_backend
    x = images((2, 3, 16, 20), torch.float32, device)
    g = torch.randn_like(x)
    torch._dynamo.reset()

    def f(a, b):
        if method == "gradcam":
            return saliency(a, method, grads=b, size=(16, 20), backend=backend) * 2
        return saliency(b if method == "gradient" else a, method, backend=backend) * 2

    got = torch.compile(f, fullgraph=True)(x, g)
    # inductor may reorder the float32 complex arithmetic around the FFTs
    assert torch.allclose(got, f(x, g), atol=1e-4 if method == "spectral_residual" else 1e-5)


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(method="sift"), ValueError, "method must be one of"),
    (dict(x=torch.rand(3, 8, 8)), ValueError, "x must be 4-D"),
    (dict(x="image"), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.zeros(1, 3, 8, 8, dtype=torch.int32)), TypeError, "x must have dtype in"),
    (dict(x=torch.rand(0, 3, 8, 8)), ValueError, "B, C, H, W >= 1"),
    (dict(method="gradient", x=torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), TypeError, "x must have dtype in"),
    (dict(method="gradient", reduce="mean"), ValueError, "reduce must be 'max' or 'sum'"),
    (dict(method="gradient", sigma=-1.0), ValueError, "sigma must be finite and in [0, 100]"),
    (dict(method="gradient", sigma="3"), TypeError, "sigma must be a number"),
    (dict(sigma=2.0), ValueError, "apply to method='gradient' only"),
    (dict(method="gradcam"), ValueError, "grads= (the activations' gradients) is required"),
    (dict(method="gradcam", grads=torch.rand(2, 3, 8, 8)), ValueError, "size=(H, W), the output size, is required"),
    (dict(method="gradcam", grads=torch.rand(2, 3, 8, 8), size=(0, 4)), ValueError, "size must be two positive ints"),
    (dict(method="gradcam", grads=torch.rand(2, 3, 8, 9), size=(8, 8)), ValueError, "grads must match"),
    (dict(grads=torch.rand(2, 3, 8, 8)), ValueError, "apply to method='gradcam' only"),
])
def test_bad_input(kwargs, exc, message):
    args = dict(x=torch.rand(2, 3, 8, 8), method="fine_grained")
    args.update(kwargs)
    x = args.pop("x")
    with pytest.raises(exc, match=__import__("re").escape(message)):
        saliency(x, **args)
