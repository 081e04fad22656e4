"""GenMix (Lee et al.): mixup between real images and a generator's synthetic images."""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._pixels import PixelSpace
from .._transfer import to_device
from .._validation import is_int, is_real
from ..ops import gaussian_blend
from ._base import MixPolicy


class SyntheticFolder:
    """A folder of synthetic images as a generator: ``root/<class>/*.png|jpg`` where <class> is
    the class index (``0``, ``1``, ...) or a class name from ``class_names`` (as ``medmix sample``
    writes them). Calling it with labels ``[B]`` returns one random image of each requested
    class, float32 ``[B, channels, h, w]`` in [0, 1] (``load_image``'s scaling).

    cache_mb: decoded images are kept in memory up to this many MiB (8-bit images as their
        uint8 codes, a quarter of their float size, restored to the same bits), so later
        batches skip the decoding: one 224^2 PNG takes about 2 ms to decode, a batch of 32
        tens of ms, ten times a GenMix call. 0 turns it off; past the budget further images
        are decoded on every call.
    workers: threads that decode a batch's uncached images (the decoders release the GIL);
        default min(8, CPU count).
    """

    EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

    def __init__(self, root, class_names=None, channels: int = 3, *, cache_mb: float = 1024,
                 workers: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"SyntheticFolder: {root} is not a directory")
        if not is_real(cache_mb) or not (math.isfinite(cache_mb) and cache_mb >= 0):
            raise ValueError(f"SyntheticFolder: cache_mb must be a finite number >= 0, got {cache_mb!r}")
        if workers is not None and (not is_int(workers) or workers < 1):
            raise ValueError(f"SyntheticFolder: workers must be an int >= 1 or None, got {workers!r}")
        self.root, self.channels = root, channels
        self.cache_bytes = int(cache_mb * 2 ** 20)
        self.workers = int(workers) if workers is not None else min(8, os.cpu_count() or 1)
        self.files: dict[int, list[Path]] = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            if d.name.isdigit():
                c = int(d.name)
            elif class_names is not None and d.name in class_names:
                c = list(class_names).index(d.name)
            else:
                raise ValueError(f"SyntheticFolder: {d} is neither a class index nor a known class name")
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in self.EXTENSIONS)
            if files:
                self.files[c] = files
        if not self.files:
            raise ValueError(f"SyntheticFolder: no images under {root}/<class>/")
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._cache: dict[Path, torch.Tensor] = {}
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._pool = None
        self._pool_pid = None

    # A policy holding a folder is pickled into DataLoader workers: the cache, lock and thread
    # pool stay behind (each process builds its own).
    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_cache", "_cached_bytes", "_lock", "_pool", "_pool_pid"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset_runtime()

    def _load(self, path: Path) -> torch.Tensor:
        from ..data.folder import load_image

        hit = self._cache.get(path)
        if hit is not None:  # uint8 codes or float pixels; __call__ turns codes into pixels
            return hit
        t = load_image(path, self.channels)
        # (a full cache skips the code check: it would run on every load past the budget)
        if self._cached_bytes + t.numel() <= self.cache_bytes:
            codes = (t.double() * 255).round_()
            keep = codes.to(torch.uint8) if torch.equal((codes / 255).float(), t) else t
            size = keep.numel() * keep.element_size()
            with self._lock:
                if path not in self._cache and self._cached_bytes + size <= self.cache_bytes:
                    self._cache[path] = keep
                    self._cached_bytes += size
        return t

    def __call__(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        paths = []
        for c in labels.tolist():
            if c not in self.files:
                raise ValueError(f"SyntheticFolder: no synthetic images of class {c} under {self.root}")
            paths.append(self.files[c][rng.integers(len(self.files[c]))])
        if self.workers > 1 and sum(p not in self._cache for p in paths) > 1:
            if self._pool is None or self._pool_pid != os.getpid():
                # (a forked DataLoader worker inherits the parent's pool without its threads,
                # which would never run the work, and the lock in whatever state it was in;
                # the decoded images it inherits stay valid)
                self._lock = threading.Lock()
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="SyntheticFolder")
                self._pool_pid = os.getpid()
            out = list(self._pool.map(self._load, paths))
        else:
            out = [self._load(p) for p in paths]
        size = out[0].shape[-2:]
        batch = torch.empty(len(out), out[0].shape[0], *size)
        for row, o in zip(batch, out):
            if o.dtype == torch.uint8:
                # cached codes: load_image divides by 255 in float64 and rounds to float32; a
                # float32 division gives the same bits for each of the 256 codes (tested), and
                # writing it into the batch saves a stack copy
                if o.shape[-2:] == size:
                    torch.div(o, 255, out=row)
                    continue
                o = o.float().div_(255)
            row.copy_(o if o.shape[-2:] == size else F.interpolate(o[None], size=size, mode="bilinear",
                                                                   align_corners=False)[0])
        return batch


class GenMix(MixPolicy):
    """``GenMix(num_classes, generator, alpha=1.0, pair="same_class", ...)``.

    Mixup between each real image and a synthetic image:
    ``x = lam x_real + (1 - lam) x_syn``, with lam ~ Beta(alpha, alpha).

    - ``generator``: ``callable(labels [B] LongTensor, generator=torch.Generator) -> images``,
      such as the class-conditional DCGAN / DDPM from ``medmix train-generator`` or any
      callable, optionally returning ``(images, masks)``. It may also be a folder of synthetic
      images (``SyntheticFolder``, a path).
    - Synthetic images (float in [0, 1] or uint8, as the samplers and ``SyntheticFolder`` give
      them) are resized to x's size and brought into x's pixel space: 0..255 for a uint8
      batch, ``(s - mean) / std`` for a batch normalised with ``mean`` / ``std`` (per-channel,
      e.g. timm's ImageNet values; give both), [0, 1] otherwise.
    - ``pair="same_class"``: the synthetic image has the real one's class, so the label is
      unchanged.
    - ``pair="random"``: it has a uniformly drawn class, and the soft label is
      ``lam y + (1 - lam) y_syn``.
    """

    name = "genmix"

    def __init__(self, num_classes: int, generator, *, pair: str = "same_class", mean=None, std=None,
                 **kwargs):
        super().__init__(num_classes, **kwargs)
        self.space = PixelSpace(mean, std, owner="GenMix")
        if isinstance(generator, (str, os.PathLike)):
            generator = SyntheticFolder(generator)
        if not callable(generator):
            raise TypeError(f"GenMix: generator must be callable(labels) -> images or a folder, got "
                            f"{type(generator).__name__}")
        if pair not in ("same_class", "random"):
            raise ValueError(f"GenMix: pair must be 'same_class' or 'random', got {pair!r}")
        self.generator, self.pair = generator, pair

    def _sample(self, B, labels, rng, x, lam=None):
        classes = (torch.from_numpy(rng.integers(0, self.num_classes, size=B)).long()
                   if self.pair == "random" else None)
        return dict(lam=self.sample_lam(B, rng, lam), syn_classes=classes,
                    gen_seed=int(rng.integers(0, 2 ** 62)))

    def _mix(self, x, targets, labels, p):
        B, C, H, W = x.shape
        syn = labels if p["syn_classes"] is None else to_device(p["syn_classes"], x.device)
        g = torch.Generator().manual_seed(p["gen_seed"])
        out = self.generator(syn, generator=g)
        seg_b = None
        if isinstance(out, tuple):
            out, seg_b = out
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != B:
            raise ValueError(f"GenMix: the generator must return images [B = {B}, C, h, w], got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        x_syn = to_device(out, x.device)
        if x_syn.dtype == torch.uint8:  # 0..255 -> the [0, 1] of float synthetic images
            x_syn = x_syn.float() / 255
        if x_syn.shape[1] != C:
            if x_syn.shape[1] != 1:
                raise ValueError(f"GenMix: synthetic images have {x_syn.shape[1]} channels, x has {C}")
            x_syn = x_syn.expand(B, C, *x_syn.shape[-2:])
        if x_syn.shape[-2:] != (H, W):
            x_syn = F.interpolate(x_syn.float(), size=(H, W), mode="bilinear", align_corners=False)
            if seg_b is not None:
                seg_b = F.interpolate(seg_b.float(), size=(H, W), mode="nearest")
        # into x's space: a plain cast would turn [0, 1] floats into uint8 0s and 1s
        x_syn = self.space.from_unit(x_syn, x)
        lam = self.host_float32(p["lam"])
        w = to_device(lam, x.device).view(B, 1, 1, 1).expand(B, 1, H, W)
        mixed, _ = gaussian_blend(x, x_syn, w, 0.0, backend=self.backend, validate=False)
        t_syn = self.targets_of(syn, x.device)
        a = torch.arange(B)
        y = self.mix_targets(targets, a, a, lam, t_b=t_syn)
        return dict(x=mixed, y=y, index_a=a, index_b=torch.full((B,), -1), weight_a=w,
                    lam=lam, hard=False, seg_b=None if seg_b is None else to_device(seg_b, x.device),
                    x_syn=x_syn, syn_classes=syn)
