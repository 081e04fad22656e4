"""SynthLesion: the embedded default dataset, generated on the fly (seeded, no files).

A grey liver-like parenchyma texture with speckle, bright non-diagnostic distractors (vessels)
and one focal lesion whose morphology is the class:

==========  ====================================================================
normal      no lesion
cyst        dark, round, sharp-edged
hemangioma  bright, lobulated (several overlapping lobules), soft edge
metastasis  dark core with a bright rim (target sign)
==========  ====================================================================

The lesion covers 2-10% of the image at a random place inside the organ. Because the lesion
mask is known, SynthLesion measures label fidelity (medmix_ops.fidelity). Every scene is drawn
from its own seed (dataset seed, index), so an item is identical whether it is rendered alone
or in a batch, and `counterfactual(i, c)` renders the very same scene with class c's lesion: an
oracle image-to-image translator for VariMix.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .._validation import is_int, is_real

CLASSES = ("normal", "cyst", "hemangioma", "metastasis")
NORMAL = 0


class SynthLesion(torch.utils.data.Dataset):
    """``SynthLesion(n, size=64, seed=0, imbalance=None, channels=3)``.

    Args:
        n: number of items.
        size: image side in pixels, 32..256.
        seed: dataset seed; the same (seed, index) always gives the same scene.
        imbalance: None for balanced classes, or the tail-to-head frequency ratio in (0, 1]
            (e.g. 0.05): class c has frequency proportional to ``imbalance ** (c / (K - 1))``,
            so "normal" is the head and "metastasis" the tail.
        channels: 1 or 3 (grey replicated).

    Items are ``(image [C, size, size] float32 in [0, 1], label int, lesion_mask [1, size, size]
    float32 in {0, 1})``; ``labels`` holds all labels as a LongTensor.
    """

    classes = CLASSES

    def __init__(self, n: int, size: int = 64, seed: int = 0, imbalance: float | None = None,
                 channels: int = 3):
        for name, v in (("n", n), ("size", size), ("seed", seed), ("channels", channels)):
            if not is_int(v):
                raise TypeError(f"SynthLesion: {name} must be an int, got {type(v).__name__}")
        if n < 1:
            raise ValueError(f"SynthLesion: n must be >= 1, got {n}")
        if not 32 <= size <= 256:
            raise ValueError(f"SynthLesion: size must be in [32, 256], got {size}")
        if channels not in (1, 3):
            raise ValueError(f"SynthLesion: channels must be 1 or 3, got {channels}")
        if imbalance is not None:
            if not is_real(imbalance):
                raise TypeError(f"SynthLesion: imbalance must be a float, got {type(imbalance).__name__}")
            if not 0 < imbalance <= 1:
                raise ValueError(f"SynthLesion: imbalance must be in (0, 1], got {imbalance}")
        self.n, self.size, self.seed, self.channels = int(n), int(size), int(seed), int(channels)
        self.imbalance = None if imbalance is None else float(imbalance)
        self.labels = _assign_labels(n, len(CLASSES), seed, imbalance)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        i = self._index(i)
        img, mask = self.render([i])
        return img[0], int(self.labels[i]), mask[0]

    def __getitems__(self, indices):
        """Batched fetch: torch's DataLoader calls this with a batch's indices, so loaders
        render whole batches at once (several times faster than item by item)."""
        imgs, masks = self.render(indices)
        labels = self.labels[[self._index(i) for i in indices]].tolist()
        return [(imgs[k], labels[k], masks[k]) for k in range(len(labels))]

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=len(CLASSES))

    def render(self, indices: Sequence[int], classes: Sequence[int] | torch.Tensor | None = None):
        """Renders scenes `indices` (with their own classes, or `classes`), vectorised over the
        batch: ``(images [B, C, S, S], lesion_masks [B, 1, S, S])``."""
        idx = [self._index(i) for i in indices]
        if classes is None:
            cls = self.labels[idx]
        else:
            cls = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
            if cls.numel() != len(idx):
                raise ValueError(f"SynthLesion.render: classes must have one entry per index "
                                 f"({len(idx)}), got {cls.numel()}")
            if bool(((cls < 0) | (cls >= len(CLASSES))).any()):
                raise ValueError(f"SynthLesion.render: classes must be in [0, {len(CLASSES)})")
        return _render([_scene(self.seed, i, self.size) for i in idx], cls, self.size, self.channels)

    def counterfactual(self, i, target_class):
        """Scene(s) i rendered with target_class's lesion (same texture, vessels, lesion
        place and size): ``(images, lesion_masks)``; i and target_class may be ints or
        sequences of equal length."""
        if is_int(i):
            img, mask = self.render([int(i)], [int(target_class)])
            return img[0], mask[0]
        return self.render(list(i), target_class)

    def _index(self, i) -> int:
        if isinstance(i, torch.Tensor):
            i = int(i)
        if not is_int(i):
            raise TypeError(f"SynthLesion: index must be an int, got {type(i).__name__}")
        i = int(i)
        if not -self.n <= i < self.n:
            raise IndexError(f"SynthLesion: index {i} out of range for {self.n} items")
        return i % self.n


def _assign_labels(n: int, k: int, seed: int, imbalance: float | None) -> torch.Tensor:
    if imbalance is None:
        freq = torch.ones(k)
    else:
        freq = torch.tensor([imbalance ** (c / (k - 1)) for c in range(k)], dtype=torch.float64)
    counts = torch.floor(freq / freq.sum() * n).long()
    counts = torch.clamp(counts, min=1 if n >= k else 0)
    while counts.sum() < n:  # hand the remainder to the head classes first
        counts[int(torch.argmax(freq / freq.sum() * n - counts))] += 1
    while counts.sum() > n:
        counts[int(torch.argmax(counts))] -= 1
    labels = torch.repeat_interleave(torch.arange(k), counts)
    g = torch.Generator().manual_seed(_mix_seed(seed, -1))
    return labels[torch.randperm(n, generator=g)]


def _mix_seed(seed: int, i: int) -> int:
    return (seed * 1_000_003 + i * 7919 + 0x5EED) % (2 ** 63)


def _scene(seed: int, i: int, size: int) -> dict:
    """The random parameters of scene i, from its own generator (one draw of uniforms)."""
    g = torch.Generator().manual_seed(_mix_seed(seed, i))
    texture = torch.rand(1, 1, 6, 6, generator=g)
    u = torch.rand(24, generator=g).tolist()
    speckle = torch.randn(1, size, size, generator=g)
    area = 0.02 + 0.08 * u[0]  # lesion area fraction
    radius = math.sqrt(area / math.pi)  # in units of the image side
    # Lesion centre inside the organ ellipse (x^2/0.75^2 + y^2/0.65^2 < 1 in [-1, 1] coords).
    ang, rr = 2 * math.pi * u[1], math.sqrt(u[2]) * 0.55
    return dict(
        texture=texture, speckle=speckle,
        organ=(0.8 + 0.15 * u[3], 0.7 + 0.15 * u[4]),
        vessels=[(u[5 + 4 * v] * 2 - 1, u[6 + 4 * v] * 2 - 1, u[7 + 4 * v] * math.pi, 0.3 + 0.5 * u[8 + 4 * v])
                 for v in range(3)],
        lesion=(0.75 * rr * math.cos(ang), 0.65 * rr * math.sin(ang), 2 * radius),  # [-1, 1] coords
        lobes=[(u[17 + k] * 2 * math.pi, 0.35 + 0.25 * u[21 + k % 3]) for k in range(4)],
        brightness=0.45 + 0.1 * u[20],
    )


def _render(scenes: list[dict], classes: torch.Tensor, size: int, channels: int):
    B = len(scenes)
    t = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    yy, xx = yy.expand(B, size, size), xx.expand(B, size, size)
    col = lambda key, j: torch.tensor([s[key][j] for s in scenes]).view(B, 1, 1)  # noqa: E731

    # Parenchyma: smooth low-frequency texture + speckle inside an organ-shaped field of view.
    tex = F.interpolate(torch.cat([s["texture"] for s in scenes]), size=(size, size), mode="bicubic",
                        align_corners=False)[:, 0]
    ax, ay = col("organ", 0), col("organ", 1)
    organ = ((xx / ax) ** 2 + (yy / ay) ** 2 < 1).float()
    base = torch.tensor([s["brightness"] for s in scenes]).view(B, 1, 1)
    img = base + 0.12 * (tex - 0.5)
    # Vessels: bright thin curved bands (distractors, not class evidence).
    for v in range(3):
        vx, vy = torch.tensor([s["vessels"][v][0] for s in scenes]).view(B, 1, 1), \
            torch.tensor([s["vessels"][v][1] for s in scenes]).view(B, 1, 1)
        th = torch.tensor([s["vessels"][v][2] for s in scenes]).view(B, 1, 1)
        amp = torch.tensor([s["vessels"][v][3] for s in scenes]).view(B, 1, 1)
        d = (xx - vx) * torch.sin(th) - (yy - vy) * torch.cos(th)
        d = d + 0.15 * torch.sin(3 * ((xx - vx) * torch.cos(th) + (yy - vy) * torch.sin(th)))
        img = img + 0.22 * amp * torch.exp(-(d ** 2) / (2 * 0.012 ** 2))

    # Lesion by class, at the scene's latent place and size.
    lx, ly, lr = col("lesion", 0), col("lesion", 1), col("lesion", 2)
    dist = torch.sqrt((xx - lx) ** 2 + (yy - ly) ** 2)
    cls = classes.view(B, 1, 1)
    px = 2.0 / size  # one pixel in [-1, 1] coordinates
    # cyst: round, sharp (a one-pixel edge)
    cyst = torch.clamp((lr - dist) / px + 0.5, 0, 1)
    # hemangioma: union of lobules around the centre, soft edge
    lobe = torch.zeros_like(dist)
    for k in range(4):
        ang = torch.tensor([s["lobes"][k][0] for s in scenes]).view(B, 1, 1)
        off = torch.tensor([s["lobes"][k][1] for s in scenes]).view(B, 1, 1) * lr
        d_k = torch.sqrt((xx - lx - off * torch.cos(ang)) ** 2 + (yy - ly - off * torch.sin(ang)) ** 2)
        lobe = torch.maximum(lobe, torch.clamp((0.6 * lr - d_k) / (3 * px) + 0.5, 0, 1))
    hema = torch.maximum(lobe, torch.clamp((0.55 * lr - dist) / (3 * px) + 0.5, 0, 1))
    # metastasis: target sign, dark core and bright rim
    meta_out = torch.clamp((lr - dist) / (2 * px) + 0.5, 0, 1)
    meta_core = torch.clamp((0.55 * lr - dist) / (2 * px) + 0.5, 0, 1)

    img = torch.where(cls == 1, img * (1 - cyst) + 0.08 * cyst, img)
    img = torch.where(cls == 2, img * (1 - 0.85 * hema) + 0.92 * 0.85 * hema, img)
    rim = meta_out - meta_core
    img = torch.where(cls == 3, img * (1 - meta_out) + 0.85 * rim + 0.12 * meta_core, img)
    lesion = torch.where(cls == 1, cyst, torch.where(cls == 2, hema, torch.where(cls == 3, meta_out, 0)))
    mask = (lesion > 0.5).float() * organ

    speckle = torch.cat([s["speckle"] for s in scenes])
    img = (img * (1 + 0.12 * speckle)) * organ
    img = img.clamp(0, 1)[:, None]
    if channels == 3:
        img = img.expand(B, 3, size, size).contiguous()
    return img, mask[:, None]
