"""The CUDA emulator (python_tests/cuda_emu) that runs csrc/cuda's kernels on the CPU for the
"cpu-cuda-emulated" backend pair: it must catch the bugs it claims to catch (kernels with known
bugs in cuda_emu/selftest.cu), cover every CUDA kernel the extension registers, and really be
what backend="cuda" runs on CPU tensors inside the pair."""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import HAS_CUDA
from cuda_emu import NAMESPACE, asan_environment, build, emulated_cuda_backend, load

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="with a GPU, the CUDA kernels are tested on it")


@pytest.fixture(scope="module")
def selftest():
    load()
    return torch.ops.medmix_cuda_emu_selftest.run


def _x(blocks=3, n=64):
    return torch.arange(blocks * n, dtype=torch.float32).reshape(blocks, n)


def test_correct_kernels_give_their_results(selftest):
    x = _x()
    torch.testing.assert_close(selftest("reverse", x), x.flip(1), rtol=0, atol=0)
    torch.testing.assert_close(selftest("reverse_twice", x), 2 * x, rtol=0, atol=0)
    sums = x.reshape(3, 2, 32).sum(2, keepdim=True).expand(3, 2, 32).reshape(3, 64)
    torch.testing.assert_close(selftest("warp_sum", x), sums, rtol=0, atol=0)
    assert selftest("count", x).item() == 3 * 64  # atomicAdd from every thread
    assert selftest("fits", x)[0, 1:].eq(1).all()
    assert selftest("within_launch_bounds", x)[0].eq(1).all()  # a block at the bound runs


@pytest.mark.parametrize("case", ["reverse_no_barrier", "reverse_twice_no_middle_barrier"])
def test_missing_barriers_change_the_result(selftest, case):
    # Three blocks run under the three schedules: one of them must expose each missing barrier.
    x = _x()
    correct = selftest(case.split("_no_")[0], x)
    wrong = selftest(case, x)
    assert not torch.equal(wrong, correct)


def test_unwritten_shared_memory_reads_as_nan(selftest):
    assert selftest("uninitialised", _x()).isnan().all()


@pytest.mark.parametrize("case, message", [
    ("divergent", r"divergent __syncthreads: thread 16 of block 0 waits at selftest\.cu:\d+ "
                  r"while others wait at selftest\.cu:\d+"),
    ("partial_warp", r"__shfl_xor_sync with a full mask in warp 1 of block 0, which has 16 running"),
    ("overflow", r"block 0 wrote outside its dynamic shared memory \(256 bytes\)"),
    ("empty_grid", r"invalid configuration argument: grid of 0 blocks"),
    ("too_many_threads", r"invalid configuration argument: block of 2048 threads"),
    ("too_much_shared", r"too much dynamic shared memory: 65536 bytes"),
    ("over_launch_bounds", r"too many resources requested for launch: a block of 128 threads, "
                           r"over the kernel's __launch_bounds__\(64\)"),
])
def test_what_a_gpu_would_reject_is_an_error(selftest, case, message):
    with pytest.raises(RuntimeError, match=message):
        selftest(case, _x())
    # ...and the emulator is usable again after an error
    torch.testing.assert_close(selftest("reverse", _x()), _x().flip(1), rtol=0, atol=0)


def test_blocks_that_race_give_different_results_in_another_launch_order(selftest):
    from cuda_emu import launch_order

    results = []
    for order in (0, 1, 2):
        with launch_order(order):
            results.append(selftest("chain", _x(blocks=5)).reshape(-1)[:5].tolist())
    assert results[0] == [1.0, 2.0, 3.0, 4.0, 5.0]  # in order, the race is invisible
    assert results[1] != results[0] and results[2] != results[0], results
    assert torch.ops.medmix_cuda_emu_selftest.set_launch_order(0) == 0  # restored afterwards


def test_every_cuda_kernel_gives_the_same_bits_in_every_launch_order():
    """Blocks in order, reversed and strided, each block under another thread schedule: a GPU
    promises no order, so a kernel whose blocks race on global memory, or whose result depends
    on which thread ran first, fails here."""
    from cuda_emu import emulated_cuda_backend, launch_order
    from helpers import every_op_path

    with emulated_cuda_backend():
        runs = []
        for order in (0, 1, 2):
            with launch_order(order):
                runs.append(every_op_path("cuda"))
    assert len(runs[0]) > 30
    for order, outs in ((1, runs[1]), (2, runs[2])):
        for i, (want, got) in enumerate(zip(runs[0], outs)):
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True,
                                       msg=f"output {i} differs in launch order {order}")


def test_rewrite_of_cuda_syntax():
    src = ("#include <c10/cuda/CUDAGuard.h>\n"
           "template <typename T> __global__ void k(T* p) {\n"
           "  extern __shared__ __align__(16) unsigned char raw[];\n"
           "  __shared__ float part[32];\n}\n"
           "void f() { k<float, 2><<<blocks, 128, smem, stream>>>(p); }\n"
           "TORCH_LIBRARY_IMPL(medmix, CUDA, m) {}\n")
    out = build.rewrite_cuda(src, "x.cu")
    body = out.split("\n", 2)[2]
    assert body.count("\n") == src.count("\n")  # line numbers kept
    assert "unsigned char* raw = reinterpret_cast<unsigned char*>(::medmix_emu::dynamic_shared());" in out
    assert "float (&part)[32] = ::medmix_emu::static_shared<float[32]>(&part_emu_key);" in out
    assert "::medmix_emu::launch(blocks, 128, smem, stream, k<float, 2>)(p);" in out
    assert f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)" in out and "c10/cuda" not in out


def test_rewrite_checks_launch_bounds_in_the_kernel_body():
    src = ("template <typename T>\n__global__ void __launch_bounds__(kThreads, 2)\n"
           "    k(const T* p, Strides4 s, int (*f)(int)) {\n  p[0];\n}\n"
           "TORCH_LIBRARY_IMPL(medmix, CUDA, m) {}\n")
    out = build.rewrite_cuda(src, "x.cu")
    assert out.split("\n", 2)[2].count("\n") == src.count("\n")
    assert "int (*f)(int)) { ::medmix_emu::check_launch_bounds(kThreads, 2);\n  p[0];" in out
    with pytest.raises(RuntimeError, match="x.cu:1: a __launch_bounds__ kernel without a body"):
        build.rewrite_cuda("__global__ void __launch_bounds__(64) k(int* p);\n"
                           "TORCH_LIBRARY_IMPL(medmix, CUDA, m) {}\n", "x.cu")
    # every bounded kernel of csrc/cuda is checked
    for cu in sorted((build.CSRC / "cuda").glob("*.cu")):
        text = cu.read_text()
        assert build.rewrite_cuda(text, cu.name).count("check_launch_bounds(") == \
            text.count("__launch_bounds__(")


@pytest.mark.parametrize("construct", ["__syncwarp();", "atomicMax(p, 1);", "__shfl_down_sync(~0u, v, 1);",
                                       "__ldg(p);"])
def test_rewrite_refuses_what_it_does_not_emulate(construct):
    src = f"__global__ void k(int* p) {{ {construct} }}\nTORCH_LIBRARY_IMPL(medmix, CUDA, m) {{}}\n"
    with pytest.raises(RuntimeError, match="not handled by the CUDA emulation"):
        build.rewrite_cuda(src, "x.cu")
    with pytest.raises(RuntimeError, match="no `TORCH_LIBRARY_IMPL"):
        build.rewrite_cuda("__global__ void k() {}\n", "y.cu")


def _schemas():
    text = (build.CSRC / "ops.cpp").read_text()
    return re.findall(r'm\.def\(\s*"(\w+)\(', text)


def test_every_cuda_kernel_is_emulated():
    load()
    names = _schemas()
    assert len(names) >= 12
    emulated = {n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{n}", "CPU")}
    from medmix_ops import _backend

    if torch._C._dispatch_has_kernel_for_dispatch_key("medmix::gaussian_blend", "CUDA"):
        # (the extension was built with its CUDA kernels: the two sets must be the same)
        cuda = {n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(f"medmix::{n}", "CUDA")}
        assert emulated == cuda
    assert _backend.extension_loaded()
    # every op of csrc/ops.cpp but the CPU-only helpers has a CUDA kernel, hence an emulated one
    assert {"gaussian_blend", "gaussian_blend_out", "gaussian_blend_backward", "saliency_map",
            "spectral_residual_filter", "fine_grained_saliency", "patch_pool", "patch_ratio",
            "adm_minmax", "adm_apply", "adm_histogram", "adm_mix", "adm_mix_out"} <= emulated


def test_the_emulated_pair_runs_the_emulated_kernels():
    from medmix_ops import adm_mix, gaussian_blend, patch_ratio_pool, saliency

    torch.manual_seed(0)
    x = torch.rand(2, 3, 19, 23)
    with emulated_cuda_backend(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gaussian_blend(x, x.flip(0), (torch.rand(2, 1, 19, 23) > 0.5).float(), 2.0, backend="cuda")
        s = saliency(x, "fine_grained", backend="cuda")
        patch_ratio_pool(s, s.flip(0), 4, pad=True, backend="cuda")
        adm_mix(x, x.flip(0), torch.tensor([1, 0]), 0.5, backend="cuda")
    called = {e.name for e in prof.events()}
    for op in ("gaussian_blend", "fine_grained_saliency", "patch_pool", "adm_mix"):
        assert any(name.startswith(f"{NAMESPACE}::{op}") for name in called), (op, sorted(called))
    assert not any(name.startswith("medmix::") for name in called), sorted(called)
    # outside the pair, backend="cuda" on CPU tensors is refused as before
    with pytest.raises(ValueError, match="the CUDA kernel needs CUDA tensors"):
        gaussian_blend(x, x, torch.ones(2, 1, 19, 23), 1.0, backend="cuda")


def _selftest_under_asan(case):
    env = asan_environment()
    if env is None:
        pytest.skip("gcc's libasan is not installed")
    # (only the self-test kernels: `make test-cuda-asan` builds and runs the rest)
    code = ("import sys; sys.path.insert(0, 'python_tests'); import torch; from cuda_emu import build; "
            "build.load(selftest_only=True); "
            f"torch.ops.medmix_cuda_emu_selftest.run({case!r}, torch.zeros(2, 64)); print('survived')")
    return subprocess.run([sys.executable, "-c", code], cwd=build.ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=900)


def test_asan_build_catches_out_of_bounds_global_memory():
    """`make test-cuda-asan` runs the emulated cases with the emulation built under
    AddressSanitizer: a kernel reading one float past its input must stop the process there,
    and a correct kernel must run clean (fiber stacks and all)."""
    clean = _selftest_under_asan("reverse")
    assert clean.returncode == 0 and "survived" in clean.stdout, clean.stderr[-4000:]
    caught = _selftest_under_asan("out_of_bounds")
    assert caught.returncode != 0 and "survived" not in caught.stdout, caught.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in caught.stderr and "READ of size 4" in caught.stderr
