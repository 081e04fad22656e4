"""Host-to-device copies that never wait for the GPU.

A plain ``t.to("cuda")`` of a CPU tensor is a blocking copy: PyTorch follows it with a stream
synchronise, so the host waits for every kernel queued before it. The policies draw their
randomness on the host (partners, lam, boxes) and the ops accept host sigma / lam / perm, so a
plain copy per argument would be a hidden host sync per batch. ``to_device`` stages the copy in
pinned memory and issues it asynchronously on the current stream: kernels queued after it see
the data, the host never waits, and the pinned block is not reused before the copy is done
(PyTorch's caching host allocator records an event on the stream for it).

``device_constant`` builds small constant tables (filter taps, grey weights) once per device,
so a per-call copy disappears altogether.
"""
from __future__ import annotations

from typing import Callable

import torch


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` (in ``dtype`` when given) without a host sync.

    A CPU tensor bound for a CUDA device is converted on the host first (small tensors: the
    cast is cheaper there than a second device op), pinned and copied with
    ``non_blocking=True``. A CPU tensor bound for the CPU is returned as it is. Anything else
    is a plain ``.to``: a no-op when ``t`` is already there, a device-to-device copy (no sync
    either), or a read-back to the host, which has to wait for the data."""
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if dtype is not None and t.dtype != dtype and t.is_cpu:
        t = t.to(dtype)
    if t.is_cpu and device.type == "cpu":  # the policies' CPU path: no dispatcher call at all
        return t
    if not t.is_cpu or device.type != "cuda":
        return t.to(device=device, dtype=dtype)
    try:
        pinned = t.pin_memory()
    except RuntimeError:  # no page-locked memory to be had (a container's limit): still correct
        return t.to(device=device)
    return pinned.to(device=device, non_blocking=True)


_CONSTANTS: dict = {}


def device_constant(key, device: torch.device, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor ``make()`` builds on the host, copied to ``device`` once per ``(key, device)``
    and cached. Kernels only read it: callers must never write into it. Inside torch.compile
    it is built in the graph instead (no global state while tracing)."""
    if torch.compiler.is_compiling():
        return make().to(device)
    t = _CONSTANTS.get((key, device))
    if t is None:
        if len(_CONSTANTS) >= 512:  # keys include user values (a saliency sigma): stay bounded
            _CONSTANTS.clear()
        t = _CONSTANTS[(key, device)] = to_device(make(), device)
    return t
