"""Backend choice for every fused op: "reference" | "cpu" | "cuda" | "triton" | "auto".

auto: CUDA tensors -> the faster of the CUDA C++ and Triton kernels (per op, as measured by the
benchmarks; see GPU_PREFERENCE), CPU tensors -> the C++ CPU kernel, extension not built -> the
PyTorch reference (with one warning). MEDMIX_BACKEND=<name> replaces the "auto" choice process
wide; an explicit backend= argument always wins.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")

# Which GPU kernel "auto" picks per op. `medmix bench --device cuda` prints the measured choice
# (bench.gpu_preference), and a test holds this table to the newest full GPU results JSON committed
# under benchmarks/results/. No op has been measured on a GPU yet; the CUDA C++ kernels are the
# default until they are.
GPU_PREFERENCE = {"gaussian_blend": "cuda", "saliency": "cuda", "patch_ratio_pool": "cuda",
                  "adm": "cuda"}


@functools.lru_cache(maxsize=None)
def extension_error() -> str | None:
    """Loads medmix_ops._C once (registering torch.ops.medmix); returns why it failed, or None."""
    try:
        importlib.import_module("medmix_ops._C")
    except ImportError as e:  # not built, or built against another torch
        return str(e)
    return None


def extension_loaded() -> bool:
    """Whether the compiled C++/CUDA kernels (medmix_ops._C) load in this process. Without them
    backend="auto" picks Triton for CUDA tensors, and otherwise the PyTorch reference with a
    one-time warning; ``extension_error()`` says why they did not load."""
    return extension_error() is None


# Public ops built from several registered kernels, and the one that stands for them all.
_KERNEL_OF = {"saliency": "saliency_map", "patch_ratio_pool": "patch_pool", "adm": "adm_minmax"}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when torch.ops.medmix.<op> (or, for a public op made of several kernels, its first
    kernel) has a kernel registered for dispatch_key ("CPU" / "CUDA")."""
    if not extension_loaded():
        return False
    name = _KERNEL_OF.get(op, op)
    if not torch._C._dispatch_has_kernel(f"medmix::{name}"):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"medmix::{name}", dispatch_key)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_error() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as e:
        return str(e)
    return None


def triton_usable(device: torch.device) -> bool:
    """Triton runs CUDA tensors on a GPU, and CPU tensors only under TRITON_INTERPRET=1."""
    if triton_error() is not None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())


_warned_fallback: set[str] = set()


def _warn_fallback_once(op: str) -> None:
    if op in _warned_fallback:
        return
    _warned_fallback.add(op)
    warnings.warn(
        f"medmix_ops.{op}: the C++/CUDA extension is not available ({extension_error()}); "
        "using the PyTorch reference implementation. Build it with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=4,
    )


def available_backends(op: str, device: torch.device | str) -> list[str]:
    """The backends that can run op on tensors of this device, in this process."""
    device = torch.device(device)
    out = ["reference"]
    key = "CUDA" if device.type == "cuda" else "CPU"
    if device.type == "cpu" and has_kernel(op, key):
        out.append("cpu")
    if device.type == "cuda" and has_kernel(op, key):
        out.append("cuda")
    if triton_usable(device):
        out.append("triton")
    return out


@torch.compiler.assume_constant_result
def resolve(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend for one call; raises ValueError for a backend that cannot run here.
    Under torch.compile it runs once at trace time (the choice is a constant of the graph).

    Memoised on everything the choice depends on (the op, the request, the device type, the
    MEDMIX_BACKEND and TRITON_INTERPRET variables): a policy calls it on every batch, and the
    dispatcher queries behind it cost ~10 us, a tenth of a small batch's whole mixing time."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    env = os.environ.get("MEDMIX_BACKEND", "").strip() if backend == "auto" else ""
    device_type = device.type
    # The interpreter flag only matters where Triton can be chosen: "auto" on a CPU never
    # picks it, and there its read (~1 us a call) is skipped.
    interpreted = (triton_interpreted() if device_type != "cpu" or backend == "triton" or env == "triton"
                   else False)
    return _resolve(op, backend, device_type, env, interpreted)


@functools.lru_cache(maxsize=256)
def _resolve(op: str, backend: str, device_type: str, env: str, interpreted: bool) -> str:
    # (interpreted is only part of the cache key: triton_usable reads it itself)
    device = torch.device(device_type)
    if backend == "auto":
        if env:
            if env not in BACKENDS:
                raise ValueError(f"MEDMIX_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        if device.type == "cuda":
            preferred = GPU_PREFERENCE.get(op, "cuda")
            for cand in (preferred, "cuda", "triton"):
                if cand in available_backends(op, device):
                    return cand
        elif device.type == "cpu" and has_kernel(op, "CPU"):
            return "cpu"
        if not extension_loaded():
            _warn_fallback_once(op)
        return "reference"
    if backend == "reference":
        return backend
    if backend not in available_backends(op, device):
        raise ValueError(_why_unavailable(op, backend, device))
    return backend


def _why_unavailable(op: str, backend: str, device: torch.device) -> str:
    head = f"{op}: backend={backend!r} cannot run {device.type} tensors here: "
    if backend == "triton":
        if triton_error() is not None:
            return head + f"triton is not importable ({triton_error()})"
        return head + "Triton needs CUDA tensors, or TRITON_INTERPRET=1 set before importing triton"
    if backend == "cuda" and device.type != "cuda":
        return head + "the CUDA kernel needs CUDA tensors"
    if backend == "cpu" and device.type != "cpu":
        return head + "the C++ CPU kernel needs CPU tensors"
    if not extension_loaded():
        return head + f"the extension is not built ({extension_error()})"
    return head + f"the extension was built without {backend.upper()} kernels"


def ops_namespace(backend: str):
    """torch.ops.medmix_triton for "triton", torch.ops.medmix (CPU / CUDA kernels) otherwise."""
    return torch.ops.medmix_triton if backend == "triton" else torch.ops.medmix


# Every fake kernel registered by register_fake_both, by op name: another namespace with the
# same schemas (the tests' emulated CUDA kernels) registers the same ones.
FAKE_KERNELS: dict = {}


def register_fake_both(name: str, fn) -> None:
    """Registers fn as the fake (meta) kernel of medmix_triton::<name> and, when the extension is
    loaded, of medmix::<name>: both namespaces share one schema per op."""
    FAKE_KERNELS[name] = fn
    torch.library.register_fake(f"medmix_triton::{name}", fn)
    if extension_loaded():
        torch.library.register_fake(f"medmix::{name}", fn)
