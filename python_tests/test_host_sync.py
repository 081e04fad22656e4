"""No hidden host syncs: every op and policy path that DESIGN.md calls sync-free runs on a GPU
under ``torch.cuda.set_sync_debug_mode("error")``, which turns any synchronising CUDA call
(``.item()``, ``.cpu()``, a blocking host-to-device copy, ``nonzero``) into an error. A plain
``t.to("cuda")`` of a host tensor is such a copy, so host draws travel through
``medmix_ops._transfer.to_device``; the CPU tests below pin its contract."""
import pytest
import torch

from medmix_ops import adm_mask, adm_mix, gaussian_blend, mix, patch_ratio_pool, saliency
from medmix_ops import _transfer
from medmix_ops.ops import saliency_from_model

from conftest import HAS_CUDA


# ---- the transfer helpers (run everywhere) --------------------------------------------------------

def test_to_device_on_the_cpu_is_free_and_exact():
    t = torch.arange(5)
    assert _transfer.to_device(t, torch.device("cpu")) is t  # no copy at all
    assert _transfer.to_device(t, "cpu") is t  # a device string works too
    f = _transfer.to_device(t, torch.device("cpu"), torch.float32)
    assert f.dtype == torch.float32 and torch.equal(f, t.float())
    d = torch.tensor([0.1, 0.7], dtype=torch.float64)
    assert torch.equal(_transfer.to_device(d, torch.device("cpu"), torch.float32), d.float())


def test_device_constant_builds_once_per_key_and_device():
    calls = []

    def make():
        calls.append(1)
        return torch.ones(3)

    key = ("test_device_constant", id(calls))
    a = _transfer.device_constant(key, torch.device("cpu"), make)
    b = _transfer.device_constant(key, torch.device("cpu"), make)
    assert a is b and len(calls) == 1 and torch.equal(a, torch.ones(3))
    other = _transfer.device_constant(key + ("other",), torch.device("cpu"), make)
    assert other is not a and len(calls) == 2


def test_device_constant_stays_bounded():
    for i in range(600):  # user values (a saliency sigma) are part of some keys
        _transfer.device_constant(("test_bounded", i), torch.device("cpu"), lambda: torch.zeros(1))
    assert len(_transfer._CONSTANTS) <= 512


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_to_device_copies_host_data_without_a_sync():
    x = torch.arange(1000, dtype=torch.int32)
    torch.cuda.synchronize()
    with sync_errors():
        y = _transfer.to_device(x, torch.device("cuda", torch.cuda.current_device()), torch.int64)
    assert y.is_cuda and y.dtype == torch.int64
    assert torch.equal(y.cpu(), x.long())
    x.zero_()  # the source was staged (pinned copy): changing it later changes nothing
    assert torch.equal(y.cpu(), torch.arange(1000))


# ---- every sync-free path, on a GPU ---------------------------------------------------------------

class sync_errors:
    """Inside: any synchronising CUDA call raises."""

    def __enter__(self):
        self.prev = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self.prev)
        return False


def _batch(device, B=6, C=3, H=32, W=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, H, W, generator=g).to(device)


def _classifier(device):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).to(device)


def _op_cases(device, backend):
    x, xh = _batch(device), _batch(device, seed=1)
    B, _, H, W = x.shape
    mask = (torch.rand(B, 1, H, W) > 0.5).float().to(device)
    perm_host = torch.tensor([5, 4, 3, 2, 1, 0])
    s = saliency(x, "fine_grained")
    model = _classifier(device)
    return {
        "gaussian_blend": lambda: gaussian_blend(x, xh, mask, 2.0, backend=backend, validate=False),
        "gaussian_blend sigma list": lambda: gaussian_blend(x, xh, mask, [0, 1, 2, 3, 4, 5], backend=backend,
                                                            validate=False),
        "gaussian_blend host b_index": lambda: gaussian_blend(x, x, mask, 1.0, b_index=perm_host,
                                                              backend=backend, validate=False),
        "spectral_residual": lambda: saliency(x, "spectral_residual", backend=backend),
        "fine_grained": lambda: saliency(x, "fine_grained", backend=backend),
        "gradient": lambda: saliency(x, "gradient", backend=backend),
        "gradcam": lambda: saliency(x, "gradcam", grads=xh, size=(40, 40), backend=backend),
        "saliency_from_model": lambda: saliency_from_model(model, x, torch.arange(B, device=device) % 4,
                                                           backend=backend, validate=False),
        "patch_ratio_pool": lambda: patch_ratio_pool(s, s.flip(0), 8, expand=True, backend=backend),
        "adm_mask lambda": lambda: adm_mask(x, xh, 0.4, backend=backend),
        "adm_mask otsu": lambda: adm_mask(x, xh, mode="otsu", backend=backend),
        "adm_mask quantile": lambda: adm_mask(x, xh, 0.3, mode="quantile", backend=backend),
        "adm_mix host perm and lam": lambda: adm_mix(x, xh, perm_host, torch.full((B,), 0.5, dtype=torch.float64),
                                                     backend=backend, validate=False),
    }


OP_NAMES = [
    "gaussian_blend", "gaussian_blend sigma list", "gaussian_blend host b_index", "spectral_residual",
    "fine_grained", "gradient", "gradcam", "saliency_from_model", "patch_ratio_pool", "adm_mask lambda",
    "adm_mask otsu", "adm_mask quantile", "adm_mix host perm and lam"]


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_ops_never_sync(name, backend):
    call = _op_cases("cuda", backend)[name]
    call()  # warm-up: kernel compiles, FFT plans, pinned blocks
    torch.cuda.synchronize()
    with sync_errors():
        call()


def _translator(a, b):
    return (a + b) / 2


def _generator(classes, generator=None):
    # on the labels' device: a host tensor moved with a plain .to would be the caller's sync
    return torch.rand(classes.shape[0], 3, 32, 32, device=classes.device)


POLICIES = {
    "mixup": lambda device: mix.Mixup(4),
    "mixup elem, smoothing": lambda device: mix.Mixup(4, mode="elem", label_smoothing=0.1),
    "cutmix": lambda device: mix.CutMix(4),
    "cutmix elem": lambda device: mix.CutMix(4, mode="elem"),
    "saliencymix per sample": lambda device: mix.SaliencyMix(4, per_sample=True, mode="elem"),
    "spmix randperm": lambda device: mix.SPMix(4, patch=8, partner="randperm", label="soft", sigma=2.0),
    "varimix": lambda device: mix.VariMix(4, translator=_translator),
    "genmix": lambda device: mix.GenMix(4, _generator),
    "genmix random pairs": lambda device: mix.GenMix(4, _generator, pair="random"),
    "meddiffusemix": lambda device: mix.MedDiffuseMix(4, _classifier(device)),
}


def _policy(name, device):
    return POLICIES[name](device)


def test_the_gpu_cases_run_on_the_cpu():
    """The GPU-only cases above are real code paths: run them here (without the sync check) so
    a typo in them cannot wait for the next GPU session to show up."""
    cases = _op_cases("cpu", "cpu")
    assert list(cases) == OP_NAMES
    for name, call in cases.items():
        assert call() is not None, name
    for name in POLICIES:
        x_mix, y_soft, seg_mix = _policy(name, "cpu")(
            _batch("cpu"), torch.tensor([0, 1, 2, 3, 0, 1]), generator=torch.Generator().manual_seed(0),
            seg=(torch.rand(6, 1, 32, 32) > 0.5).float())
        assert x_mix.shape[1:] == (3, 32, 32) and y_soft.shape[1] == 4, name


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_no_op_builds_host_data_on_its_device(backend, monkeypatch):
    """The sync check above needs a GPU; this part of it runs here. Each op path (Triton's in
    the interpreter) must bring host data to the device through _transfer, never as
    torch.tensor(..., device=x.device): on a GPU that is a blocking host-to-device copy, a host
    sync (found in the Triton fine_grained path). The factories are wrapped rather than watched
    with a TorchFunctionMode, which does not reach into custom ops' implementations."""
    calls = []
    for name in ("tensor", "as_tensor", "asarray"):
        def wrapped(*args, _factory=getattr(torch, name), _name=name, **kwargs):
            if kwargs.get("device") is not None:
                calls.append(f"torch.{_name}(device={kwargs['device']})")
            return _factory(*args, **kwargs)
        monkeypatch.setattr(torch, name, wrapped)
    for name, call in _op_cases("cpu", backend).items():
        call()
        assert calls == [], (name, calls)
    if backend == "cpu":  # and the policies' own code
        for name in POLICIES:
            _policy(name, "cpu")(_batch("cpu"), torch.tensor([0, 1, 2, 3, 0, 1]),
                                 generator=torch.Generator().manual_seed(0))
            assert calls == [], (name, calls)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("labels_on", ["cpu", "cuda"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_policies_never_sync(name, labels_on):
    """The documented syncs are left out: class-balanced partners (labels to the host),
    one-map SaliencyMix (its peak to the host) and the range check of labels on a GPU
    (``validate=False`` trusts them)."""
    policy = _policy(name, "cuda")
    policy.validate = labels_on == "cpu"  # host labels are checked for free
    x = _batch("cuda")
    y = torch.tensor([0, 1, 2, 3, 0, 1], device=labels_on)
    seg = (torch.rand(6, 1, 32, 32) > 0.5).float().cuda()
    policy(x, y, generator=torch.Generator().manual_seed(0), seg=seg)  # warm-up
    torch.cuda.synchronize()
    with sync_errors():
        x_mix, y_soft, seg_mix = policy(x, y, generator=torch.Generator().manual_seed(1), seg=seg)
    assert x_mix.is_cuda and y_soft.is_cuda and seg_mix.is_cuda


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_policy_labels_on_a_gpu_are_checked_with_one_sync_or_trusted():
    """validate=True (the default) reads GPU labels back once to range-check them (a sync, so
    it raises under the debug mode) and names the bad range; validate=False never syncs and an
    out-of-range label gets NaN targets, never a device assert or a silently wrong row."""
    x = _batch("cuda")
    good = torch.tensor([0, 1, 2, 3, 0, 1], device="cuda")
    bad = torch.tensor([0, 1, 2, 9, 0, -1], device="cuda")
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes = 4\), got min -1, max 9"):
        mix.Mixup(4)(x, bad, generator=gen())
    mix.Mixup(4)(x, good, generator=gen())
    torch.cuda.synchronize()
    with sync_errors(), pytest.raises(RuntimeError):
        mix.Mixup(4)(x, good, generator=gen())  # the check's read-back is the one sync
    trusting = mix.Mixup(4, validate=False, prob=0.0)  # unmixed: each row is its own target
    _, y_soft = trusting(x, bad, generator=gen())
    torch.cuda.synchronize()
    with sync_errors():
        _, y_soft = trusting(x, bad, generator=gen())
    rows = torch.isnan(y_soft).all(dim=1).cpu()
    assert rows.tolist() == [False, False, False, True, False, True]
    assert torch.equal(y_soft[:3].cpu(), torch.eye(4)[:3])
