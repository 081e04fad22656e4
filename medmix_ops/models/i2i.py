"""StarGAN-v2-lite: one image-to-image generator for all classes, as VariMix uses it.

Generator G(x, s): an encoder of residual down-blocks and an AdaIN-modulated decoder. The
style s comes from a mapping network M(z, y) (one head per class) or a style encoder E(x_ref)
(one head: VariMix's code calls it without a label). A multi-head discriminator has one real /
fake output per class. Losses in train-generator: adversarial, R1, style reconstruction,
diversity and cycle. Images in [-1, 1] inside.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._pixels import PixelSpace
from .._transfer import to_device


class ResBlk(nn.Module):
    def __init__(self, cin, cout, down=False, norm=True):
        super().__init__()
        self.down, self.norm = down, norm
        self.c1, self.c2 = nn.Conv2d(cin, cin, 3, 1, 1), nn.Conv2d(cin, cout, 3, 1, 1)
        self.n1 = nn.InstanceNorm2d(cin, affine=True) if norm else nn.Identity()
        self.n2 = nn.InstanceNorm2d(cin, affine=True) if norm else nn.Identity()
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x):
        s = self.skip(x)
        h = self.c1(F.leaky_relu(self.n1(x), 0.2))
        if self.down:
            s, h = F.avg_pool2d(s, 2), F.avg_pool2d(h, 2)
        h = self.c2(F.leaky_relu(self.n2(h), 0.2))
        return (s + h) / math.sqrt(2)


class AdaIN(nn.Module):
    def __init__(self, style_dim, ch):
        super().__init__()
        self.norm = nn.InstanceNorm2d(ch, affine=False)
        self.fc = nn.Linear(style_dim, 2 * ch)

    def forward(self, x, s):
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, 1)
        return (1 + gamma) * self.norm(x) + beta


class AdaResBlk(nn.Module):
    def __init__(self, cin, cout, style_dim, up=False):
        super().__init__()
        self.up = up
        self.a1, self.a2 = AdaIN(style_dim, cin), AdaIN(style_dim, cout)
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x, s):
        sk = self.skip(F.interpolate(x, scale_factor=2) if self.up else x)
        h = F.leaky_relu(self.a1(x, s), 0.2)
        if self.up:
            h = F.interpolate(h, scale_factor=2)
        h = self.c2(F.leaky_relu(self.a2(self.c1(h), s), 0.2))
        return (sk + h) / math.sqrt(2)


class Generator(nn.Module):
    def __init__(self, img_size=64, channels=3, style_dim=32, width=32, max_width=128, repeat=2):
        super().__init__()
        n = max(1, int(math.log2(img_size)) - 4)  # down to 16 x 16 at the bottleneck
        self.stem = nn.Conv2d(channels, width, 3, 1, 1)
        self.enc, self.dec = nn.ModuleList(), nn.ModuleList()
        ch = width
        for _ in range(n):
            out = min(ch * 2, max_width)
            self.enc.append(ResBlk(ch, out, down=True))
            self.dec.insert(0, AdaResBlk(out, ch, style_dim, up=True))
            ch = out
        for _ in range(repeat):
            self.enc.append(ResBlk(ch, ch))
            self.dec.insert(0, AdaResBlk(ch, ch, style_dim))
        self.to_img = nn.Sequential(nn.InstanceNorm2d(width, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(width, channels, 1))

    def forward(self, x, s):
        h = self.stem(x)
        for blk in self.enc:
            h = blk(h)
        for blk in self.dec:
            h = blk(h, s)
        return torch.tanh(self.to_img(h))


class MappingNetwork(nn.Module):
    def __init__(self, num_classes, latent_dim=16, style_dim=32, hidden=128):
        super().__init__()
        self.latent_dim = latent_dim
        self.shared = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(hidden, style_dim) for _ in range(num_classes)])

    def forward(self, z, y):
        h = self.shared(z)
        return torch.stack([head(h) for head in self.heads], 1)[torch.arange(z.shape[0], device=z.device), y]


def _down_stack(img_size, channels, width, max_width):
    n = max(1, int(math.log2(img_size)) - 2)  # down to 4 x 4
    layers, ch = [nn.Conv2d(channels, width, 3, 1, 1)], width
    for _ in range(n):
        out = min(ch * 2, max_width)
        layers.append(ResBlk(ch, out, down=True, norm=False))
        ch = out
    layers += [nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 4, 1, 0), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers), ch


class StyleEncoder(nn.Module):
    """One head: the style of a reference image, whatever its class (as VariMix calls it)."""

    def __init__(self, img_size=64, channels=3, style_dim=32, width=32, max_width=128):
        super().__init__()
        self.features, ch = _down_stack(img_size, channels, width, max_width)
        self.fc = nn.Linear(ch, style_dim)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class Discriminator(nn.Module):
    """One real / fake logit per class; the one of the image's class is used."""

    def __init__(self, num_classes, img_size=64, channels=3, width=32, max_width=128):
        super().__init__()
        self.features, ch = _down_stack(img_size, channels, width, max_width)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x, y):
        return self.fc(self.features(x).flatten(1))[torch.arange(x.shape[0], device=x.device), y]


class Translator:
    """VariMix's translator interface: ``translator(x_src, x_ref) -> x_hat``, x_src rendered
    with x_ref's style (class evidence), at the input's size, range and dtype."""

    def __init__(self, g: Generator, e: StyleEncoder, img_size: int, channels: int, mean=None, std=None):
        self.g, self.e, self.size, self.channels = g.eval(), e.eval(), img_size, channels
        # the caller's pixel space (uint8, [0, 1], or normalised with mean / std): the
        # generator works in [0, 1]
        self.space = PixelSpace(mean, std, owner="Translator")

    @torch.no_grad()
    def __call__(self, x_src: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
        dev = next(self.g.parameters()).device
        H, W = x_src.shape[-2:]

        def prep(x):
            x = self.space.to_unit(to_device(x, dev))
            if x.shape[1] != self.channels:
                x = x.mean(1, keepdim=True).expand(-1, self.channels, -1, -1)
            if (H, W) != (self.size, self.size):
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            return x * 2 - 1

        out = (self.g(prep(x_src), self.e(prep(x_ref))) + 1) / 2
        if (H, W) != (self.size, self.size):
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
        if out.shape[1] != x_src.shape[1]:
            out = out.mean(1, keepdim=True).expand(-1, x_src.shape[1], -1, -1)
        return self.space.from_unit(out.clamp(0, 1), x_src).to(x_src.device)
