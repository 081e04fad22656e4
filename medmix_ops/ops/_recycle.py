"""Large fresh CPU outputs, recycled (adm_mix's [2B] batch, gaussian_blend's and so every
blend-based policy's [B] batch, patch_ratio_pool's expanded pixel map).

glibc serves blocks of 32 MB and more with new mappings (its mmap threshold adapts up to that
size only) and unmaps them on free, so a fresh output that large - 32 x 3 x 224^2 float32 in
adm_mix's [2B] is 38.5 MB, a 128 x 3 x 224^2 batch 77 MB - is faulted in page by page on every
call: on the 2-core VM of the committed results, 12 ms a call where adm_mix's kernel takes 3,
and 19.6 ms where Mixup's blend takes ~5. Smaller blocks come from the heap, but whether their
pages are still mapped depends on the process's allocation history (heap trimming): a 19 MB
blend output (32 x 3 x 224^2) faulted all 4672 of its pages on every call in some benchmark
runs and none in others (8.3 against 4.5 ms). Hence from 4 MB up. Like the CUDA caching
allocator, the ops keep the last outputs of each thread (two per shape, dtype and layout; four
in all) and write a later call's output into one once nothing references its memory any more
(the storage's reference count, so views, numpy arrays and autograd's saved tensors all count);
the caller only ever gets views, never the kept tensor itself, whose Python references the
storage count does not see. Never reused: a buffer moved into shared memory (another process maps it) and, outside inference
mode, an inference tensor (or inside it, a normal one). clear_output_cache() hands them back.
"""
from __future__ import annotations

import math
import threading

import torch

RECYCLE_BYTES = 4 * 2 ** 20
SLOTS_PER_KIND = 2
SLOTS = 4
_recycled = threading.local()


def _calibrate_use_count():
    """(torch's storage reference count, its value for a tensor nobody else references), or
    (None, 0), which turns recycling off, where the private counter is missing or does not
    count a view: a later torch that counted differently must not reuse memory in use."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None, 0
    try:
        t = torch.empty(1)
        free = count(t.untyped_storage()._cdata)
        view = t[:]
        held = count(t.untyped_storage()._cdata)
        del view
        return (count, free) if held == free + 1 and count(t.untyped_storage()._cdata) == free else (None, 0)
    except Exception:  # noqa: BLE001 - any surprise: no recycling
        return None, 0


_storage_use_count, _FREE_USE_COUNT = _calibrate_use_count()


def recycled_empty(shape: tuple, dtype: torch.dtype, memory_format: torch.memory_format,
                   device: torch.device) -> torch.Tensor | None:
    """An uninitialised CPU output ``torch.empty(shape, dtype=dtype, memory_format=...)`` for
    an op that fills all of it: a view of a kept buffer nobody else references, or of a new
    one that is kept. None (the op allocates as usual) for other devices, below RECYCLE_BYTES,
    under torch.compile, or without the reference count."""
    if device.type != "cpu" or _storage_use_count is None or torch.compiler.is_compiling():
        return None
    if math.prod(shape) * dtype.itemsize < RECYCLE_BYTES:
        return None
    shape = torch.Size(shape)
    # A buffer whose memory was moved into shared memory (a DataLoader worker sending its batch
    # to the main process does that) is mapped by another process now: dropped, never written.
    slots = [buf for buf in getattr(_recycled, "slots", []) if not buf.is_shared()]
    inference = torch.is_inference_mode_enabled()
    for buf in slots:
        # free: only the kept tensor (and this query's temporary storage object) count; an
        # inference tensor (made under torch.inference_mode) only where a new one would be one
        if (buf.shape == shape and buf.dtype == dtype and buf.is_inference() == inference
                and buf.is_contiguous(memory_format=memory_format)
                and _storage_use_count(buf.untyped_storage()._cdata) <= _FREE_USE_COUNT):
            _recycled.slots = slots
            return buf[:]
    buf = torch.empty(shape, dtype=dtype, memory_format=memory_format)
    kept, same_kind = [buf], 1
    for old in slots:  # newest first: at most SLOTS_PER_KIND of this kind, SLOTS in all
        kind = old.shape == shape and old.dtype == dtype and old.is_contiguous(memory_format=memory_format)
        if len(kept) < SLOTS and (not kind or same_kind < SLOTS_PER_KIND):
            kept.append(old)
            same_kind += kind
    _recycled.slots = kept
    return buf[:]


def output_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last exactly when ``t`` is channels_last and not also contiguous (C = 1 or
    H = W = 1 tensors are both): the layout the C++ ops give their outputs."""
    nhwc = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def clear_output_cache() -> None:
    """Drops the large CPU outputs that adm_mix, gaussian_blend and patch_ratio_pool's pixel
    map (and the policies built on them) keep for reuse in this thread."""
    _recycled.slots = []
