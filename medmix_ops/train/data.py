"""Datasets for the training scripts: SynthLesion, an ImageFolder tree or a MedMNIST .npz, each
with a held-out split."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import ImageFolder, MedMNIST, SynthLesion
from ..data.folder import INTENSITY_MODES


class Pairs(torch.utils.data.Dataset):
    """(image, label, index) items of any dataset whose items start with (image, label): the
    index lets an oracle translator (SynthLesion's counterfactual) find each batch's scenes."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        return item[0], item[1], i

    def __getitems__(self, indices):
        if hasattr(self.ds, "__getitems__"):
            return [(it[0], it[1], i) for it, i in zip(self.ds.__getitems__(indices), indices)]
        return [self[i] for i in indices]


def add_intensity_argument(p) -> None:
    """--intensity for commands that read an ImageFolder tree."""
    p.add_argument("--intensity", default="bit_depth", choices=INTENSITY_MODES,
                   help="ImageFolder pixel scaling: by bit depth (8-bit / 255, 16-bit / 65535) or "
                        "each image's own min / max (e.g. 12-bit X-rays saved as 16-bit PNG)")


def build_datasets(spec: str, img_size: int, *, imbalance: float | None = None, n_train: int = 2048,
                   n_test: int = 512, seed: int = 0, skip_bad: bool = False, test_fraction: float = 0.2,
                   intensity: str = "bit_depth"):
    """(train, test, class names, info). spec: "synthlesion", an ImageFolder directory, or a
    MedMNIST .npz. SynthLesion's test split is balanced and drawn from another seed. A folder
    split as root/train/<class>/ + root/test/<class>/ (or val/) is used as it is; a single
    root/<class>/ tree is split per class (stratified_split). intensity: ImageFolder's
    ("bit_depth" or "min_max"); other sources ignore it."""
    if spec == "synthlesion":
        train = SynthLesion(n_train, size=img_size, seed=seed, imbalance=imbalance)
        test = SynthLesion(n_test, size=img_size, seed=seed + 100_000)
        return Pairs(train), Pairs(test), list(train.classes), dict(synthlesion=train, labels=train.labels)
    path = Path(spec)
    if spec.endswith(".npz"):
        train, test = MedMNIST(path, "train"), MedMNIST(path, "test")
        # multi-label files (ChestMNIST): labels [N, K] of 0 / 1, one sigmoid per label
        return (Pairs(Resized(train, img_size)), Pairs(Resized(test, img_size)),
                [str(c) for c in range(train.num_classes)], dict(labels=train.labels, multi_label=train.multi_label))
    if not path.exists():
        raise FileNotFoundError(f"--data {spec}: no such file or directory (use synthlesion, an "
                                "ImageFolder directory or a MedMNIST .npz)")
    splits = split_folders(path)
    if splits is not None:
        train, test = (ImageFolder(d, size=img_size, skip_bad=skip_bad, intensity=intensity) for d in splits)
        if train.classes != test.classes:
            raise ValueError(f"--data {spec}: {splits[0].name}/ has classes {train.classes} but "
                             f"{splits[1].name}/ has {test.classes}; they must match")
        if not skip_bad:
            train.check_headers()
            test.check_headers()
        info = dict(labels=train.labels, skipped=train.skipped + test.skipped)
        return Pairs(train), Pairs(test), train.classes, info
    full = ImageFolder(path, size=img_size, skip_bad=skip_bad, intensity=intensity)
    if not skip_bad:
        full.check_headers()
    train_idx, test_idx = stratified_split(full.labels, test_fraction, seed)
    info = dict(labels=full.labels[train_idx], skipped=full.skipped)
    return (Pairs(torch.utils.data.Subset(full, train_idx)), Pairs(torch.utils.data.Subset(full, test_idx)),
            full.classes, info)


def split_folders(root: Path):
    """(train dir, held-out dir) when root is already split as ``root/train/<class>/`` and
    ``root/test/<class>/`` (or ``val/``, ``valid/``, ``validation/``), else None. Without this
    the split names became the classes and the model learned train-vs-test."""
    train = root / "train"
    if not train.is_dir():
        return None
    for name in ("test", "val", "valid", "validation"):
        if (root / name).is_dir():
            return train, root / name
    raise ValueError(f"--data {root}: it has a train/ folder but no test/ or val/ beside it; give "
                     "root/train/<class>/ and root/test/<class>/, or one root/<class>/ tree to split")


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int):
    """(train indices, test indices): per class, a seeded round(test_fraction * n) of its images
    held out, at least one when the class has two or more and never all of them, so that a
    rare class (the point of a medical dataset) is in both splits."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)].tolist()
        k = min(max(1, round(test_fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        test += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(test)


class Resized(torch.utils.data.Dataset):
    def __init__(self, ds, size: int):
        self.ds, self.size = ds, size

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i][:2]
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="bilinear",
                                                align_corners=False, antialias=True)[0]
        return x, y
