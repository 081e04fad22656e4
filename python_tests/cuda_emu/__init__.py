"""The CUDA kernels of csrc/cuda, run on the CPU by an emulator of the CUDA execution model
(cuda_emu.h), so that machines without a GPU test their code: the tests' "cpu-cuda-emulated"
backend pair runs every op test with backend="cuda" on CPU tensors through these kernels.

What it proves and what it does not: the kernels' indexing, tiling, reductions, barrier
placement, shuffles and launch sizes, checked against the references on the same odd shapes,
dtypes and layouts as the other backends, and that their results do not depend on the order
of blocks or threads (launch_order). Not: the CUDA compiler, real concurrency (a race shows
only where some order exposes it), memory coalescing or speed. A GPU run is still what makes
a CUDA kernel done.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import subprocess

import pytest
import torch

from . import build

NAMESPACE = build.NAMESPACE


@functools.lru_cache(maxsize=None)
def load() -> None:
    """Builds and loads the emulated kernels once per process and gives them the fake kernels
    and autograd formulas the library registers for its own namespaces."""
    from medmix_ops import _backend

    # (the module, not the function medmix_ops.ops re-exports under the same name)
    blend_module = importlib.import_module("medmix_ops.ops.gaussian_blend")

    build.load()
    for name, fn in _backend.FAKE_KERNELS.items():
        torch.library.register_fake(f"{NAMESPACE}::{name}", fn)
    blend_module._register(NAMESPACE)


@contextlib.contextmanager
def emulated_cuda_backend():
    """Within: backend="cuda" runs CPU tensors through the emulated CUDA kernels."""
    from medmix_ops import _backend

    load()
    namespace = getattr(torch.ops, NAMESPACE)
    real_namespace = _backend.ops_namespace
    real_available = _backend.available_backends

    def ops_namespace(backend: str):
        return namespace if backend == "cuda" else real_namespace(backend)

    def available_backends(op: str, device):
        found = real_available(op, device)
        return found + ["cuda"] if torch.device(device).type == "cpu" else found

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_backend, "ops_namespace", ops_namespace)
            mp.setattr(_backend, "available_backends", available_backends)
            _backend._resolve.cache_clear()  # (memoised choices would skip the patch)
            yield
    finally:
        _backend._resolve.cache_clear()


@contextlib.contextmanager
def launch_order(order: int):
    """Within: the emulator runs each launch's blocks in order 0 (as numbered), 1 (reversed) or
    2 (strided), each block under another of the three thread schedules (cuda_emu.h)."""
    load()
    before = torch.ops.medmix_cuda_emu_selftest.set_launch_order(order)
    try:
        yield
    finally:
        torch.ops.medmix_cuda_emu_selftest.set_launch_order(before)


def asan_environment() -> dict | None:
    """The variables that run a process with the AddressSanitizer build of the emulation (as
    `make test-cuda-asan` does), or None without gcc's libasan. libstdc++ is preloaded too:
    python does not link it, and ASan must find its __cxa_throw at start-up."""
    def gcc_file(name):
        try:
            path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
        return path if os.path.isabs(path) and os.path.exists(path) else None

    asan, stdcxx = gcc_file("libasan.so"), gcc_file("libstdc++.so")
    if asan is None or stdcxx is None:
        return None
    return {"MEDMIX_EMU_ASAN": "1", "ASAN_OPTIONS": "detect_leaks=0", "LD_PRELOAD": f"{asan} {stdcxx}"}
