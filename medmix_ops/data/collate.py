"""Running a mixing policy inside a DataLoader's collate_fn, on the CPU workers."""
from __future__ import annotations

import torch
from torch.utils.data import default_collate


class MixCollate:
    """``DataLoader(ds, batch_size=64, collate_fn=MixCollate(policy))`` yields mixed batches
    ``(x_mix, y_soft)`` (``(x_mix, y_soft, seg_mix)`` for datasets whose items carry a mask as
    the third element, e.g. SynthLesion). The policy runs on the worker's CPU with the C++
    kernels. ``seed`` makes the mixing reproducible: each batch draws from a generator seeded by
    (seed, the worker's seed, batch number). The DataLoader gives each worker a new seed every
    epoch (drawn from its ``generator=``, or torch's global RNG), so every epoch mixes afresh
    and a run with a seeded loader repeats exactly. Without workers, batches are numbered
    across epochs."""

    def __init__(self, policy, seed: int | None = None, keep_seg: bool = True):
        if not callable(policy):
            raise TypeError(f"MixCollate: policy must be callable, got {type(policy).__name__}")
        self.policy, self.seed, self.keep_seg = policy, seed, keep_seg
        self._batches = 0

    def __call__(self, items):
        batch = default_collate(items)
        x, y = batch[0], batch[1]
        seg = batch[2] if len(batch) > 2 and self.keep_seg else None
        gen = None
        if self.seed is not None:
            info = torch.utils.data.get_worker_info()
            # info.seed, not info.id: a worker's batch count restarts every epoch (workers are
            # forked afresh from this object), and (seed, id, count) repeated each epoch's draws
            wseed = info.seed if info is not None else 0
            gen = torch.Generator().manual_seed(hash((self.seed, wseed, self._batches)) % (2 ** 62))
        self._batches += 1
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        return self.policy(x, y, generator=gen, seg=seg)
