"""Test configuration: Triton runs in its interpreter when no GPU is present (set before any
import of triton), and the (device, backend) pairs every op test is parametrized over."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# Every backend that runs on this machine is tested, none silently skipped: a missing extension
# or Triton fails the tests. Only the GPU pairs skip when there is no GPU.
DEVICE_BACKENDS = [
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cpu", "cpu"), id="cpu-cpp"),
    pytest.param(("cpu", "triton"), id="cpu-triton", marks=pytest.mark.skipif(
        HAS_CUDA, reason="with a GPU, Triton is tested on CUDA tensors")),
    pytest.param(("cuda", "reference"), id="cuda-reference", marks=needs_gpu),
    pytest.param(("cuda", "cuda"), id="cuda-cuda", marks=needs_gpu),
    pytest.param(("cuda", "triton"), id="cuda-triton", marks=needs_gpu),
]
KERNEL_BACKENDS = [p for p in DEVICE_BACKENDS if p.values[0][1] != "reference"]


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request):
    return request.param


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    return request.param
