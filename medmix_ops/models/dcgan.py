"""Class-conditional DCGAN (GenMix's synthetic images): generator G(z, y), projection
discriminator D(x, y). Images in [-1, 1] inside, [0, 1] outside."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._transfer import to_device


def _levels(size: int) -> int:
    n = int(round(math.log2(size / 4)))
    if 4 * 2 ** n != size or n < 1:
        raise ValueError(f"DCGAN: img_size must be 4 * 2^k (8, 16, 32, 64, 128, ...), got {size}")
    return n


class DCGANGenerator(nn.Module):
    def __init__(self, num_classes: int, img_size: int = 64, channels: int = 3, z_dim: int = 64, width: int = 32):
        super().__init__()
        n = _levels(img_size)
        self.z_dim, self.num_classes = z_dim, num_classes
        top = width * 2 ** min(n, 3)
        self.embed = nn.Embedding(num_classes, z_dim)
        self.fc = nn.Linear(2 * z_dim, top * 16)
        blocks, ch = [], top
        for i in range(n):
            out = width * 2 ** max(min(n, 3) - i - 1, 0)
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(True)]
            ch = out
        self.blocks = nn.Sequential(*blocks)
        self.to_img = nn.Conv2d(ch, channels, 3, padding=1)
        self.top = top

    def forward(self, z, y):
        h = self.fc(torch.cat([z, self.embed(y)], 1)).view(z.shape[0], self.top, 4, 4)
        return torch.tanh(self.to_img(self.blocks(torch.relu(h))))


class DCGANDiscriminator(nn.Module):
    def __init__(self, num_classes: int, img_size: int = 64, channels: int = 3, width: int = 32):
        super().__init__()
        n = _levels(img_size)
        layers, ch = [], channels
        for i in range(n):
            out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * 16, 1)
        self.embed = nn.Embedding(num_classes, ch * 16)  # projection discriminator

    def forward(self, x, y):
        h = self.features(x).flatten(1)
        return self.fc(h)[:, 0] + (self.embed(y) * h).sum(1)


class DCGANSampler:
    """GenMix's generator interface: ``sampler(labels, generator=g) -> images [B, C, S, S]``."""

    def __init__(self, g: DCGANGenerator):
        self.g = g.eval()

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, generator: torch.Generator | None = None):
        dev = next(self.g.parameters()).device
        z = to_device(torch.randn(labels.shape[0], self.g.z_dim, generator=generator), dev)
        return ((self.g(z, to_device(labels, dev)) + 1) / 2).clamp(0, 1).to(labels.device)
