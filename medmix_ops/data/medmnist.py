"""MedMNIST ``.npz`` files the user already has (no download): ``{split}_images`` uint8
[N, H, W] or [N, H, W, 3] and ``{split}_labels`` [N, 1] (class) or [N, K] (multi-label)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class MedMNIST(torch.utils.data.Dataset):
    """``MedMNIST(path, split="train", channels=3)`` -> ``(image [C, H, W] float32 in [0, 1],
    label int)``, or a float [K] target for multi-label files (e.g. ChestMNIST)."""

    def __init__(self, path, split: str = "train", channels: int = 3):
        path = Path(path)
        if split not in ("train", "val", "test"):
            raise ValueError(f"MedMNIST: split must be train, val or test, got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"MedMNIST: channels must be 1 or 3, got {channels}")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                need = {f"{split}_images", f"{split}_labels"}
                if not need <= keys:
                    raise ValueError(f"MedMNIST: {path} lacks {sorted(need - keys)}; it has {sorted(keys)}")
                images, labels = z[f"{split}_images"], z[f"{split}_labels"]
        except FileNotFoundError:
            raise FileNotFoundError(f"MedMNIST: {path} does not exist") from None
        except ValueError as e:
            if str(e).startswith("MedMNIST:"):
                raise
            raise ValueError(f"MedMNIST: {path} is not a readable .npz file ({e})") from e
        except (OSError, EOFError) as e:
            raise ValueError(f"MedMNIST: {path} is not a readable .npz file ({e})") from e
        if images.ndim not in (3, 4) or images.shape[0] != labels.shape[0]:
            raise ValueError(f"MedMNIST: {path}: images {images.shape} and labels {labels.shape} are inconsistent")
        if images.ndim == 4 and images.shape[-1] not in (1, 3):
            # MedMNIST 3D (OrganMNIST3D, ...) stores volumes [N, D, H, W]: its depth is not colour
            raise ValueError(f"MedMNIST: {path}: {split}_images is {images.shape}, not 2-D images "
                             "[N, H, W] or [N, H, W, 1 | 3] (a 3-D volume file?)")
        if images.shape[0] == 0:
            raise ValueError(f"MedMNIST: {path}: the {split} split is empty")
        if images.dtype != np.uint8:
            raise TypeError(f"MedMNIST: {path}: {split}_images must be uint8 (MedMNIST's format), "
                            f"got {images.dtype}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        labels = labels.reshape(labels.shape[0], -1)
        self.multi_label = labels.shape[1] > 1
        self.labels = torch.from_numpy(labels.astype(np.float32 if self.multi_label else np.int64))
        if not self.multi_label:
            self.labels = self.labels[:, 0]
        self.channels = channels
        self.num_classes = labels.shape[1] if self.multi_label else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        img = self.images[i].float() / 255.0
        img = img[None] if img.dim() == 2 else img.permute(2, 0, 1)
        if img.shape[0] != self.channels:
            img = img.mean(0, keepdim=True) if self.channels == 1 else img.expand(3, -1, -1)
        label = self.labels[i]
        return img.contiguous(), (label if self.multi_label else int(label))
