"""Hardening: a NaN stays in its sample, 3-D volumes are refused clearly, results are
deterministic, index arithmetic holds past 2^31 elements, and no user path reaches a shell."""
import ast
import re
import os
import pathlib

import pytest
import torch

from conftest import FUZZ_LONG, HAS_CUDA, KERNEL_BACKENDS
from medmix_ops import adm_mask, adm_mix, gaussian_blend, mix, patch_ratio_pool, saliency

NAN = float("nan")


def batch(seed=0, shape=(3, 3, 24, 20)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def poisoned(x, sample=1):
    x = x.clone()
    x[sample, 0, 5, 7] = NAN
    return x


def assert_rows_equal(got, want, rows, what):
    for r in rows:
        assert torch.equal(got[r], want[r]), f"{what}: sample {r} changed when another sample held a NaN"


# ---- a NaN in one sample stays there ---------------------------------------------------------------

OP_CASES = {
    "gaussian_blend": lambda x, be: gaussian_blend(x, batch(1).to(x.device), (batch(2)[:, :1] > 0.5).float().to(x.device),
                                                   2.0, backend=be)[0],
    # validate=False: the default call refuses a NaN mask (test_gaussian_blend); unchecked, the
    # kernels must still keep it in its sample
    "gaussian_blend mask": lambda x, be: gaussian_blend(batch(1).to(x.device), batch(2).to(x.device), x[:, :1], 2.0,
                                                        backend=be, validate=False)[0],
    "spectral_residual": lambda x, be: saliency(x, "spectral_residual", backend=be),
    "fine_grained": lambda x, be: saliency(x, "fine_grained", backend=be),
    "gradient": lambda x, be: saliency(x, "gradient", backend=be),
    "gradcam": lambda x, be: saliency(x, "gradcam", grads=batch(3).to(x.device), size=(30, 30), backend=be),
    "patch_ratio_pool": lambda x, be: patch_ratio_pool(x[:, :1], batch(1).to(x.device)[:, :1], 4, backend=be)[0],
    "adm_mask lambda": lambda x, be: adm_mask(batch(1).to(x.device), x, 0.5, backend=be)[0],
    "adm_mask otsu": lambda x, be: adm_mask(batch(1).to(x.device), x, mode="otsu", backend=be)[0],
    "adm_mask quantile": lambda x, be: adm_mask(batch(1).to(x.device), x, 0.2, mode="quantile", backend=be)[0],
    # partners 0 <-> 2; sample 1 is its own partner
    "adm_mix": lambda x, be: torch.cat(adm_mix(batch(1).to(x.device), x, torch.tensor([2, 1, 0], device=x.device),
                                               0.4, backend=be)[:2], 1),
}


@pytest.mark.parametrize("case", list(OP_CASES))
@pytest.mark.parametrize("device_backend", [pytest.param(("cpu", "reference"), id="cpu-reference"), *KERNEL_BACKENDS],
                         indirect=True)
def test_nan_stays_in_its_sample(device_backend, case):
    device, backend = device_backend
    x = batch().to(device)
    clean = OP_CASES[case](x, backend)
    dirty = OP_CASES[case](poisoned(x), backend)  # must not crash (the Otsu histogram bins NaN)
    assert_rows_equal(dirty, clean, [0, 2], case)


POLICIES = {
    "mixup": lambda: mix.Mixup(4, partner="flip"),
    "cutmix": lambda: mix.CutMix(4, partner="flip", mode="elem"),
    "saliencymix": lambda: mix.SaliencyMix(4, partner="flip", per_sample=True),
    "spmix": lambda: mix.SPMix(4, partner="flip", patch=4),
    "varimix": lambda: mix.VariMix(4, translator=lambda a, b: (a + b) / 2, partner="flip"),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_nan_stays_in_its_sample_through_policies(name):
    """With partner="flip" on B = 3, samples 0 and 2 pair with each other and 1 with itself: the
    NaN in sample 1 must leave the other outputs (images and targets) as they were."""
    x, y = batch(), torch.tensor([0, 1, 2])
    clean_x, clean_y = POLICIES[name]()(x, y, generator=torch.Generator().manual_seed(0))
    dirty_x, dirty_y = POLICIES[name]()(poisoned(x), y, generator=torch.Generator().manual_seed(0))
    B = x.shape[0]
    rows = [r for r in range(dirty_x.shape[0]) if r % B != 1]  # VariMix returns both directions: 2B rows
    assert_rows_equal(dirty_x, clean_x, rows, name)
    assert_rows_equal(dirty_y, clean_y, rows, name)
    assert bool(torch.isfinite(dirty_y).all()), "targets never carry the image's NaN"


# ---- 3-D volumes ---------------------------------------------------------------------------------

VOLUME = torch.rand(2, 1, 4, 16, 16)


@pytest.mark.parametrize("call", [
    lambda: gaussian_blend(VOLUME, VOLUME, VOLUME, 1.0),
    lambda: saliency(VOLUME, "fine_grained"),
    lambda: saliency(VOLUME, "gradient"),
    lambda: patch_ratio_pool(VOLUME, VOLUME, 4),
    lambda: adm_mask(VOLUME, VOLUME, 0.5),
    lambda: adm_mix(VOLUME, VOLUME, torch.tensor([1, 0]), 0.5),
    lambda: mix.Mixup(3)(VOLUME, torch.tensor([0, 1])),
    lambda: mix.CutMix(3)(VOLUME, torch.tensor([0, 1])),
    lambda: mix.SaliencyMix(3)(VOLUME, torch.tensor([0, 1])),
    lambda: mix.SPMix(3)(VOLUME, torch.tensor([0, 1])),
    lambda: mix.VariMix(3, lambda a, b: a)(VOLUME, torch.tensor([0, 1])),
    lambda: mix.GenMix(3, lambda y: VOLUME)(VOLUME, torch.tensor([0, 1])),
], ids=["gaussian_blend", "saliency", "saliency-gradient", "patch_ratio_pool", "adm_mask", "adm_mix", "Mixup",
        "CutMix", "SaliencyMix", "SPMix", "VariMix", "GenMix"])
def test_volumes_are_refused_with_a_hint(call):
    with pytest.raises(ValueError, match=r"3-D volumes \[B, C, D, H, W\] are not supported"):
        call()


# ---- numpy numbers are numbers ----------------------------------------------------------------------

def test_numpy_scalars_and_arrays_work_as_python_numbers():
    """np.float32 / np.int64 scalars (what indexing an array gives) and numpy arrays of sigma /
    lam give the same results as Python numbers; they used to be refused with a TypeError.
    numpy bools stay refused."""
    import numpy as np

    from medmix_ops.data import SynthLesion

    x = batch(0, (4, 3, 16, 16))
    m = (batch(1, (4, 1, 16, 16)) > 0.5).float()
    want = gaussian_blend(x, batch(2, (4, 3, 16, 16)), m, [1.0, 2.0, 3.0, 0.5])
    for sigma in (np.array([1.0, 2.0, 3.0, 0.5], dtype=np.float32), [np.float32(1), np.int64(2), 3.0, np.float64(0.5)]):
        got = gaussian_blend(x, batch(2, (4, 3, 16, 16)), m, sigma)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert torch.equal(gaussian_blend(x, x.flip(0), m, np.float32(2))[0], gaussian_blend(x, x.flip(0), m, 2.0)[0])
    for bad in (np.bool_(True), np.array([True] * 4)):
        with pytest.raises(TypeError, match="sigma"):
            gaussian_blend(x, x, m, bad)

    s = saliency(x, "spectral_residual")
    assert torch.equal(patch_ratio_pool(s, s.flip(0), np.int64(4), np.float32(0.75))[0],
                       patch_ratio_pool(s, s.flip(0), 4, float(np.float32(0.75)))[0])
    assert torch.equal(saliency(x, "gradient", sigma=np.float32(2)), saliency(x, "gradient", sigma=2.0))
    xh = batch(3, (4, 3, 16, 16))
    assert torch.equal(adm_mix(x, xh, torch.tensor([1, 0, 3, 2]), np.float64(0.4))[0],
                       adm_mix(x, xh, torch.tensor([1, 0, 3, 2]), 0.4)[0])

    ds = SynthLesion(np.int64(6), size=np.int64(32), imbalance=np.float32(0.5))
    assert torch.equal(ds[np.int64(3)][0], ds[3][0])
    assert torch.equal(ds.counterfactual(np.int64(2), 1)[0], ds.counterfactual(2, 1)[0])
    policy = mix.SPMix(np.int64(4), patch=np.int64(8), alpha=np.float32(0.75), partner="flip")
    assert type(policy.num_classes) is int and type(policy.patch) is int
    imgs, _ = ds.render(list(range(6)))
    got = policy(imgs, ds.labels[:6], generator=torch.Generator().manual_seed(0))
    want = mix.SPMix(4, patch=8, alpha=float(np.float32(0.75)), partner="flip")(
        imgs, ds.labels[:6], generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(g, w) for g, w in zip(got, want))


# ---- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mixup", "cutmix", "saliencymix", "spmix", "varimix", "meddiffusemix", "genmix"])
def test_same_generator_state_same_bits(name):
    from medmix_ops.data import SynthLesion
    from medmix_ops.policies import make_policy

    ds = SynthLesion(12, size=32, seed=3)
    items = ds.__getitems__(list(range(12)))
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([it[1] for it in items])
    outs = []
    for _ in range(2):
        policy = make_policy(name, 4, dataset=ds)
        if hasattr(getattr(policy, "translator", None), "set_batch"):
            policy.translator.set_batch(list(range(12)), y)
        outs.append(policy(x, y, generator=torch.Generator().manual_seed(11)))
    assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))


def test_cpu_backends_agree_bitwise_where_the_math_is_exact():
    """Hard-mask blending and ADM mixing copy pixels: every CPU backend gives the same bits."""
    a, b = batch(4), batch(5)
    m = (batch(6)[:, :1] > 0.5).float()
    outs = [gaussian_blend(a, b, m, 0.0, backend=be)[0] for be in ("reference", "cpu", "triton")]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    perm = torch.tensor([2, 0, 1])
    mixes = [adm_mix(a, b, perm, 0.3, backend=be)[:2] for be in ("reference", "cpu", "triton")]
    assert all(torch.equal(mixes[0][k], other[k]) for other in mixes[1:] for k in range(2))


# ---- scale: index arithmetic past 2^31 elements -----------------------------------------------------

BIG_REASON = "allocates ~2.2 GB: runs with MEDMIX_FUZZ=long, or on a GPU"


@pytest.mark.skipif(not (FUZZ_LONG or HAS_CUDA), reason=BIG_REASON)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="GPU"))])
def test_gaussian_blend_beyond_int32_indexing(device):
    """B*C*H*W = 2,154,720,000 > 2^31 uint8 output elements. The inputs are stride-0 expansions
    (no memory); the output is written for real, so any 32-bit offset wraps into the wrong
    place (or out of bounds), which the pattern checks below catch."""
    B, C, H, W = 1, 3, 26800, 26800
    assert B * C * H * W > 2**31
    a = torch.tensor([200, 150, 100], dtype=torch.uint8, device=device).view(1, 3, 1, 1).expand(B, C, H, W)
    b = torch.full((1, 1, 1, 1), 10, dtype=torch.uint8, device=device).expand(B, C, H, W)
    cols = (torch.arange(W, device=device) < W // 2).float()
    mask = cols.view(1, 1, 1, W).expand(B, 1, H, W)  # left half from a, right half from b
    out, lam = gaussian_blend(a, b, mask, 1.0)
    assert abs(float(lam[0]) - 0.5) < 1e-3
    left, right = W // 2 - 8, W // 2 + 8  # away from the blurred edge
    for c, v in enumerate((200, 150, 100)):
        assert bool((out[0, c, :, :left] == v).all()), f"channel {c}: left half wrong"
        assert bool((out[0, c, :, right:] == 10).all()), f"channel {c}: right half wrong"
    del out


@pytest.mark.skipif(not (FUZZ_LONG or HAS_CUDA), reason=BIG_REASON)
def test_adm_mix_beyond_int32_indexing():
    """adm_mix's gathered partner reads and both outputs at B*C*H*W > 2^31 (uint8)."""
    device = "cuda" if HAS_CUDA else "cpu"
    B, C, H, W = 2, 3, 19000, 19000
    assert B * C * H * W > 2**31
    x = torch.tensor([50, 200], dtype=torch.uint8, device=device).view(2, 1, 1, 1).expand(B, C, H, W)
    x_hat = torch.zeros((B, C, H, W), dtype=torch.uint8, device=device)
    x_hat[:, :, : H // 2] = 255  # top half changed by the "translation"
    src, ref, lam2 = adm_mix(x, x_hat, torch.tensor([1, 0], device=device), 0.5)
    assert torch.allclose(lam2.cpu(), torch.full((2,), 0.5), atol=1e-6)
    # sample 0's change is largest in the top half, sample 1's in the bottom half (|0 - 200|):
    # either way src' = top from x[0], bottom from x[1], and ref' the other way round
    top, bottom = slice(0, H // 2), slice(H // 2, H)
    for i in range(2):
        assert bool((src[i, :, top] == 50).all()) and bool((src[i, :, bottom] == 200).all()), f"src' {i}"
        assert bool((ref[i, :, top] == 200).all()) and bool((ref[i, :, bottom] == 50).all()), f"ref' {i}"


# ---- safety --------------------------------------------------------------------------------------

def test_no_shell_and_weights_only_loading():
    """No module runs a shell, and every torch.load passes weights_only=True."""
    root = pathlib.Path(__file__).resolve().parents[1] / "medmix_ops"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            assert name not in ("os.system", "os.popen", "subprocess.getoutput"), f"{path}: {name}"
            for kw in node.keywords:
                if kw.arg == "shell":
                    assert isinstance(kw.value, ast.Constant) and kw.value.value is False, f"{path}: shell=True"
            if name == "torch.load":
                wo = [kw for kw in node.keywords if kw.arg == "weights_only"]
                assert wo and isinstance(wo[0].value, ast.Constant) and wo[0].value.value is True, \
                    f"{path}:{node.lineno}: torch.load without weights_only=True"


def test_result_files_are_written_atomically(tmp_path, monkeypatch):
    """write_json goes through a temporary file and a rename: a crash mid-write leaves the old file."""
    from medmix_ops.train import common

    target = tmp_path / "r.json"
    common.write_json(target, {"a": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        common.write_json(target, {"a": 2})
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'


# ---- supported stack ----------------------------------------------------------------------------

def test_interpreter_takes_scalar_loop_bounds_on_every_supported_triton():
    """triton 3.6's interpreter (the GPU machines' version) turned a scalar kernel argument used
    as a loop bound into int(1-element 1-D array), which numpy >= 2.4 rejects: every Triton test
    failed under TRITON_INTERPRET=1 with triton 3.6. The shim adds triton 3.7's squeeze where it
    is missing."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("triton")
    import inspect

    from medmix_ops.triton import _common  # noqa: F401  (applies the shim)
    from medmix_ops.triton import _interpreter_compat as compat
    from triton.runtime import interpreter

    class Handle:
        def __init__(self, data):
            self.data = data

    class Scalar:
        def __init__(self, data):
            self.handle = Handle(data)

    for data in (np.array([7], dtype=np.int32), np.array(7, dtype=np.int64)):
        assert compat._scalar_index(Scalar(data)) == 7
    patch = interpreter._patch_lang_tensor
    assert getattr(patch, "_medmix_scalar_index", False) or "squeeze" in inspect.getsource(patch)
    assert compat.apply() is False  # idempotent: already fixed, never wrapped twice


def test_cpu_hot_loops_are_vectorised_and_fma_free():
    """Two build facts no timing test may guard, read from the built extension's machine code:
    the per-pixel blend's AVX2 clone (and the hard-mask select's) is vectorised (under GCC's default -ftrapping-math its
    exact-0/1 selects kept it scalar, 3x slower; setup.py and CMake pass -fno-trapping-math),
    and no code uses FMA, so the AVX2 and baseline clones compute the same bits."""
    import platform
    import shutil
    import subprocess

    import medmix_ops._C as ext

    objdump = shutil.which("objdump")
    if objdump is None or platform.machine() != "x86_64":
        pytest.skip("needs binutils' objdump on x86-64")
    dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", ext.__file__], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    vector_ops, name = {}, None
    for line in dis.splitlines():
        if line.endswith(">:"):
            name = line[line.index("<") + 1:-2]
        elif name is not None and "ymm" in line:
            vector_ops[name] = vector_ops.get(name, 0) + 1
    clones = [n for n in vector_ops if "[clone .avx2]" in n]
    if not clones:
        pytest.skip("built without GCC target_clones (another compiler)")
    blend = [n for n in clones if "blend_run<medmix::PixelIO<float>, float, float>" in n]
    assert blend and vector_ops[blend[0]] >= 4, f"the float blend loop's AVX2 clone is scalar: {blend}"
    # every storage dtype's blend loops, per-pixel and per-sample weights: uint8 (its rounding
    # in pixel_io.h's store_run, inlined into the clone) and the 16-bit floats (c10's
    # conversions; the per-sample loop was scalar while it held the exact-0 / 1 selects)
    for io in ("unsigned char>, float, unsigned char", "c10::Half>, float, c10::Half",
               "c10::BFloat16>, float, c10::BFloat16"):
        for loop in ("blend_run<", "blend_run_const<"):
            found = [n for n in clones if f"{loop}medmix::PixelIO<{io}>" in n]
            assert found and vector_ops[found[0]] >= 8, f"the AVX2 clone of {loop}{io} is scalar: {found}"
    # the hard-mask path: the 0 / 1 check of a mask chunk, the per-pixel select and the
    # shared box's runs (copies there become memcpy calls; its select must be vector code)
    # (fp16 / bf16 images select and copy as their uint16 bits)
    for loop in ("select_run<float, float>", "all_binary<float>", "copy_runs<float, float>",
                 "select_run<unsigned short, float>", "copy_runs<unsigned short, float>"):
        found = [n for n in clones if loop in n]
        assert found and vector_ops[found[0]] >= 2, f"the AVX2 clone of {loop} is scalar: {found}"
    # fine_grained_saliency's spans: each edge case (clamped or following x) must vectorise
    # (int64 columns kept the clamped ones scalar: AVX2 has no int64 -> double conversion)
    for lo in ("true", "false"):
        for hi in ("true", "false"):
            span = f"fine_grained_span<{lo}, {hi}>"
            found = [n for n in clones if span in n]
            assert found and vector_ops[found[0]] >= 2, f"the AVX2 clone of {span} is scalar: {found}"
    # the blurs' passes (gaussian_blend's mask, the saliency maps' taps), float and double
    for loop in ("combine_on_off", "normalize_row", "row_on_off_max", "min_max_run", "lerp_rows",  # (saliency passes)
                 "add_rows",  # (patch_ratio_pool's column sums of a band of rows)
                 "blend_grad_run<medmix::PixelIO<float>", "blend_grad_run<medmix::PixelIO<c10::BFloat16>",
                 "weighted_rows<float>", "weighted_rows<double>"):
        found = [n for n in clones if loop in n]
        assert found and vector_ops[found[0]] >= 2, f"the AVX2 clone of {loop} is scalar: {found}"
    fma = [line for line in dis.splitlines() if re.search(r"\svfn?m(add|sub)\w*\s", line)]
    assert not fma, f"FMA instructions in the extension (clones would differ from baseline): {fma[:3]}"
