"""What every reference training script shares: seeding, exact resume, atomic checkpoints,
logging, devices and distributed (torchrun) set-up.

Exact resume: a checkpoint holds the models, optimizers, schedulers, AMP scaler, EMA weights,
every RNG state (python, numpy, torch CPU and CUDA, the policy's generator) and the sampler's
position, so ``--resume`` continues the very same run: on the CPU the final weights of a resumed
run equal those of an uninterrupted one bit for bit (tested).
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import _io

CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1


# ---- devices and distributed ------------------------------------------------------------------

class Runtime:
    """Device, rank and world size; set up from torchrun's environment when present."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but no CUDA device is available")
        if device == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state(extra: dict | None = None) -> dict:
    # numpy's state as plain tensors and ints: checkpoints load with weights_only=True
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                       has_gauss=int(has_gauss), cached=float(cached))
    state = dict(python=random.getstate(), numpy=numpy_state, torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for k, g in (extra or {}).items():
        state[f"gen_{k}"] = g.get_state()
    return state


def gather_rng_states(state: dict, rt: Runtime) -> list[dict]:
    """Every rank's RNG state, in rank order (a collective: all ranks call it)."""
    if rt.world == 1:
        return [state]
    gathered = [None] * rt.world
    dist.all_gather_object(gathered, state)
    return gathered


def set_rng_state(state: dict, extra: dict | None = None) -> None:
    random.setstate(_as_python_state(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (extra or {}).items():
        g.set_state(state[f"gen_{k}"])


def _as_python_state(s):
    # weights_only loading returns lists where random.getstate() gave tuples
    return (s[0], tuple(s[1]), s[2]) if isinstance(s, (list, tuple)) else s


# ---- the sampler that resumes at the exact batch ---------------------------------------------------

class ResumableSampler(torch.utils.data.Sampler):
    """A seeded shuffle per epoch, split across ranks like DistributedSampler, that can start
    at any position: ``state()`` / ``load_state()`` make resumed runs see the same batches."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch, self.position = 0, 0
        self.iter_epoch = 0
        self.per_rank = math.ceil(n / world)

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]  # pad so every rank has as many
        return order[self.rank:: self.world]

    def __iter__(self):
        # the epoch this pass belongs to: the loader exhausts the iterator (and so advances
        # self.epoch) while it still builds the epoch's last, partial batch
        self.iter_epoch = self.epoch
        order = self._order()
        while self.position < len(order):
            self.position += 1
            yield order[self.position - 1]
        self.epoch += 1
        self.position = 0

    def __len__(self) -> int:
        return self.per_rank - self.position

    def state(self, consumed: int) -> dict:
        """The position after `consumed` samples of this epoch were used (the loader may have
        prefetched beyond it)."""
        return dict(epoch=self.iter_epoch, position=consumed)

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.iter_epoch = self.epoch


class Batches:
    """Endless batches from a DataLoader over a ResumableSampler, epoch after epoch, counting
    the samples of the current epoch actually used: ``state()`` is the sampler position to
    checkpoint (the loader may have prefetched further)."""

    def __init__(self, loader, sampler: ResumableSampler):
        self.loader, self.sampler = loader, sampler
        self.consumed = sampler.position
        self._it = iter(loader)

    def next(self):
        while True:
            try:
                batch = next(self._it)
            except StopIteration:  # end of an epoch (or of a resumed, already finished one)
                self._it, self.consumed = iter(self.loader), 0
                continue
            self.consumed += len(batch[0])
            return batch

    def state(self) -> dict:
        return self.sampler.state(self.consumed)


# ---- checkpoints ---------------------------------------------------------------------------------------

def save_checkpoint(path: Path, payload: dict) -> Path:
    """torch.save to a temporary file, flushed to disk, then renamed: a reader (or a run killed
    mid-save) never sees a half-written checkpoint."""
    path = Path(path)
    with _io.atomic_path(path, fsync=True) as tmp:
        torch.save(dict(payload, format_version=FORMAT_VERSION), tmp)
    return path


def refuse_to_overwrite(out: Path, resume: bool) -> None:
    """A fresh run never overwrites an earlier run's checkpoint: forgetting --resume must not
    lose progress."""
    if not resume and (Path(out) / CHECKPOINT).exists():
        raise FileExistsError(f"{Path(out) / CHECKPOINT} already exists: pass --resume to continue that run, "
                              "or choose another --out")


# Resume keys added after checkpoints were already written, with the value those runs had.
RESUME_KEY_DEFAULTS = {"intensity": "bit_depth", "policy_kwargs": {}, "mix_start": 0}


def load_checkpoint(path: Path, expect_kind: str, expect: dict | None = None) -> dict:
    """Loads with weights_only=True (no code runs from the file) and refuses a checkpoint of
    another kind or configuration, saying why."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or not a checkpoint
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ValueError(f"{path} is not a medmix_ops checkpoint")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format_version')} is not {FORMAT_VERSION}")
    if ckpt["kind"] != expect_kind:
        raise ValueError(f"{path} is a {ckpt['kind']!r} checkpoint, not {expect_kind!r}")
    for key, want in (expect or {}).items():
        have = ckpt.get("config", {}).get(key, RESUME_KEY_DEFAULTS.get(key))
        if have != want:
            raise ValueError(f"{path} was trained with {key}={have!r}, this run uses {key}={want!r}; "
                             "refusing to resume it")
    return ckpt


# ---- logging --------------------------------------------------------------------------------------------

class Logger:
    """CSV (always) and TensorBoard (when installed) scalars, rank 0 only."""

    def __init__(self, out: Path, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(out) / "log.csv"
        self.fields: list[str] | None = None
        self.tb = None
        if not enabled:
            return
        Path(out).mkdir(parents=True, exist_ok=True)
        if resume_step and self.path.exists():  # drop rows after the checkpoint being resumed
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                with open(self.path, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=self.fields)
                    w.writeheader()
                    w.writerows(rows)
        elif self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=resume_step or None)
        except ImportError:
            self.tb = None

    def log(self, step: int, **scalars) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: f"{float(v):.6g}" for k, v in scalars.items()}}
        if self.fields is None:
            self.fields = list(row.keys())
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_json(path: Path, data: dict) -> Path:
    _io.write_json(path, data)
    return Path(path)


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class FiniteLosses:
    """Watches losses for inf / NaN on their device, read at log and checkpoint steps only.

    ``if not torch.isfinite(loss)`` every step is a host sync per step on a GPU (the host
    cannot queue the backward until the forward has finished). Here ``update`` records, with
    device ops alone, whether every loss so far was finite and the first step that was not;
    ``check`` reads that once and raises. Call it before each checkpoint, so a checkpoint
    never holds weights updated from a NaN step."""

    def __init__(self, device: torch.device):
        self.all_finite = torch.ones((), dtype=torch.bool, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, step: int, *losses: torch.Tensor) -> None:
        """step: the 1-based number of the step that produced the losses."""
        finite = torch.stack([torch.isfinite(l.detach()).all() for l in losses]).all()
        self.first_bad = torch.where(self.all_finite & ~finite, step, self.first_bad)
        self.all_finite &= finite

    def check(self, step: int) -> None:
        if not bool(self.all_finite):
            raise FloatingPointError(f"the loss became inf or NaN at step {int(self.first_bad)} (found at "
                                     f"step {step}; the last checkpoint was written before it); lower --lr")


def timer() -> float:
    return time.perf_counter()
