"""Test configuration: Triton runs in its interpreter when no GPU is present (set before any
import of triton), and the (device, backend) pairs every op test is parametrized over."""
import os
import random
import zlib

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

# Under pytest-xdist (`make test` runs two workers) each worker gets its share of the cores, and
# so do the subprocesses it starts (OMP_NUM_THREADS): two workers of two threads each on two
# cores spin against each other and made the training tests up to 16x slower. Tests of thread
# counts set theirs explicitly.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _threads = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

# MEDMIX_TRITON_RACES=1: every interpreted Triton case of the op tests also runs under the race
# detector of triton_race_check.py (test_triton_races.py runs it on a fixed set in CI).
TRITON_RACES = os.environ.get("MEDMIX_TRITON_RACES") == "1"

# Property-test profiles: CI runs a fixed (derandomized, reproducible) set of examples;
# MEDMIX_FUZZ=long runs 20 times as many, freshly random each run.
FUZZ_LONG = os.environ.get("MEDMIX_FUZZ", "").lower() == "long"

# The thorough runs (races, long fuzz) keep the interpreter's int32 overflow check on.
CHECK_OVERFLOW = TRITON_RACES or FUZZ_LONG
if os.environ.get("TRITON_INTERPRET") == "1":
    from triton_interpreter_speedup import install

    install(check_overflow=CHECK_OVERFLOW)


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Every test starts from global RNG states of its own (from its id), whatever ran before it
    on its worker: a test that draws unseeded inputs sees the same ones alone, in a serial run
    and under pytest-xdist, so a failure reproduces."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def fuzz(n: int):
    """hypothesis settings for a property test with n examples in CI (20 n under MEDMIX_FUZZ=long)."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=max(1, n * (20 if FUZZ_LONG else 1)), deadline=None, derandomize=not FUZZ_LONG,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

EMULATED_CUDA = ("cpu", "cuda")

# Every backend that runs on this machine is tested, none silently skipped: a missing extension
# or Triton fails the tests. Only the GPU pairs skip when there is no GPU.
DEVICE_BACKENDS = [
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cpu", "cpu"), id="cpu-cpp"),
    pytest.param(("cpu", "triton"), id="cpu-triton", marks=pytest.mark.skipif(
        HAS_CUDA, reason="with a GPU, Triton is tested on CUDA tensors")),
    # The CUDA kernels' code on CPU tensors, through the emulator in python_tests/cuda_emu
    # (with a GPU, the real ones are tested instead).
    pytest.param(EMULATED_CUDA, id="cpu-cuda-emulated", marks=pytest.mark.skipif(
        HAS_CUDA, reason="with a GPU, the CUDA kernels are tested on it")),
    pytest.param(("cuda", "reference"), id="cuda-reference", marks=needs_gpu),
    pytest.param(("cuda", "cuda"), id="cuda-cuda", marks=needs_gpu),
    pytest.param(("cuda", "triton"), id="cuda-triton", marks=needs_gpu),
]
KERNEL_BACKENDS = [p for p in DEVICE_BACKENDS if p.values[0][1] != "reference"]


def _backend_pair(request):
    if request.param == EMULATED_CUDA:
        from cuda_emu import emulated_cuda_backend

        with emulated_cuda_backend():
            yield request.param
    elif TRITON_RACES and request.param == ("cpu", "triton"):
        from triton_race_check import RaceCheck

        with RaceCheck() as check:
            yield request.param
        assert check.races == [], "\n".join(check.races)
    else:
        yield request.param


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request):
    yield from _backend_pair(request)


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    yield from _backend_pair(request)


@pytest.fixture
def recycle_all(monkeypatch):
    """Every large-output CPU op recycles every output (the real threshold is 4 MB); a clean
    cache before and after. Yields medmix_ops.ops._recycle."""
    from medmix_ops.ops import _recycle

    monkeypatch.setattr(_recycle, "RECYCLE_BYTES", 0)
    _recycle.clear_output_cache()
    yield _recycle
    _recycle.clear_output_cache()
