"""A small class-conditional DDPM: UNet epsilon-predictor, DDIM sampling, and masked
(inpainting) sampling that keeps given pixels, RePaint-style. Images in [-1, 1] inside."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._pixels import PixelSpace
from .._transfer import device_constant, to_device


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(min(8, cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2, self.c2 = nn.GroupNorm(min(8, cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x))) + self.e(e)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class UNet(nn.Module):
    def __init__(self, num_classes: int, channels: int = 3, width: int = 32, mults=(1, 2, 2)):
        super().__init__()
        emb = 4 * width
        self.width, self.num_classes = width, num_classes
        self.t_mlp = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.y_emb = nn.Embedding(num_classes, emb)
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        chans, self.down, ch = [width], nn.ModuleList(), width
        for i, m in enumerate(mults):
            blk = ResBlock(ch, width * m, emb)
            ch = width * m
            self.down.append(nn.ModuleList([blk, nn.Conv2d(ch, ch, 3, 2, 1) if i < len(mults) - 1 else nn.Identity()]))
            chans.append(ch)
        self.mid = ResBlock(ch, ch, emb)
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            skip = chans.pop()
            blk = ResBlock(ch + skip, width * m, emb)
            ch = width * m
            self.up.append(nn.ModuleList([blk, nn.Upsample(scale_factor=2) if i > 0 else nn.Identity()]))
        self.out = nn.Sequential(nn.GroupNorm(min(8, ch), ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))

    def forward(self, x, t, y):
        e = self.t_mlp(timestep_embedding(t, self.width)) + self.y_emb(y)
        h = self.stem(x)
        skips = []
        for blk, down in self.down:
            h = blk(h, e)
            skips.append(h)
            h = down(h)
        h = self.mid(h, e)
        for blk, up in self.up:
            h = blk(torch.cat([h, skips.pop()], 1), e)
            h = up(h)
        return self.out(h)


class Diffusion:
    """Linear-beta DDPM schedule with T steps; DDIM sampling (eta = 0) over `steps` steps."""

    def __init__(self, T: int = 1000):
        self.T = T
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        self.abar = torch.cumprod(1 - betas, 0).float()

    def abar_on(self, device: torch.device) -> torch.Tensor:
        """The schedule on `device`, copied once per T and device (a copy per call was a host
        sync on a GPU)."""
        return device_constant(("ddpm_abar", self.T), device, lambda: self.abar)

    def q_sample(self, x0, t, noise):
        a = self.abar_on(x0.device)[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def loss(self, model, x0, y, generator=None):
        B = x0.shape[0]
        # drawn on the host (the generator is a CPU one: the same draws on any device), moved
        # with pinned non-blocking copies
        t = to_device(torch.randint(0, self.T, (B,), generator=generator), x0.device)
        noise = to_device(torch.randn(x0.shape, generator=generator), x0.device)
        return F.mse_loss(model(self.q_sample(x0, t, noise), t, y), noise)

    @torch.no_grad()
    def sample(self, model, y, shape, steps: int = 50, generator=None, known=None, keep=None):
        """DDIM sampling; with known [B, C, H, W] in [-1, 1] and keep [B, 1, H, W] in {0, 1},
        the kept pixels are re-imposed (noised to the current level) at every step."""
        dev = next(model.parameters()).device
        x = to_device(torch.randn(shape, generator=generator), dev)
        ts = torch.linspace(self.T - 1, 0, steps).round().long()
        # the timesteps reach the device in one copy; the schedule is indexed with host ints
        # (views, where a host tensor index would be one more copy per step)
        ts_dev, ts_host = to_device(ts, dev), ts.tolist()
        abar = self.abar_on(dev)
        for i, t in enumerate(ts_host):
            t_batch = ts_dev[i].expand(shape[0])
            if known is not None:
                # host draws (the same on any device), copied while the GPU runs the last step
                noise = to_device(torch.randn(shape, generator=generator), dev)
                x = keep * self.q_sample(known, t_batch, noise) + (1 - keep) * x
            eps = model(x, t_batch, y)
            a = abar[t]
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            a_prev = abar[ts_host[i + 1]] if i + 1 < len(ts_host) else abar.new_ones(())
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        if known is not None:
            x = keep * known + (1 - keep) * x
        return x


class DDPMSampler:
    """GenMix's generator interface: ``sampler(labels, generator=g) -> images``."""

    def __init__(self, model: UNet, diffusion: Diffusion, img_size: int, channels: int, steps: int = 50):
        self.model, self.diffusion = model.eval(), diffusion
        self.shape, self.steps = (channels, img_size, img_size), steps

    def __call__(self, labels: torch.Tensor, generator: torch.Generator | None = None):
        dev = next(self.model.parameters()).device
        x = self.diffusion.sample(self.model, to_device(labels, dev), (labels.shape[0], *self.shape), self.steps,
                                  generator)
        return ((x + 1) / 2).clamp(0, 1).to(labels.device)


class DDPMInpainter:
    """MedDiffuseMix's generator interface: ``inpainter(x, labels, keep_mask, generator=g)``
    regenerates the pixels outside keep_mask (class-conditional), keeping the rest."""

    def __init__(self, model: UNet, diffusion: Diffusion, img_size: int, channels: int, steps: int = 50,
                 mean=None, std=None):
        self.model, self.diffusion, self.size, self.channels, self.steps = model.eval(), diffusion, img_size, channels, steps
        # the caller's pixel space ([0, 1], or normalised with mean / std): the model works in [0, 1]
        self.space = PixelSpace(mean, std, owner="DDPMInpainter")

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, keep_mask: torch.Tensor, generator=None):
        dev = next(self.model.parameters()).device
        H, W = x.shape[-2:]
        xs = self.space.to_unit(to_device(x, dev))
        ks = to_device(keep_mask, dev, torch.float32)
        if (H, W) != (self.size, self.size):  # work at the model's size, then back
            xs = F.interpolate(xs, size=(self.size, self.size), mode="bilinear", align_corners=False)
            ks = (F.interpolate(ks, size=(self.size, self.size), mode="bilinear", align_corners=False) > 0.5).float()
        if xs.shape[1] != self.channels:
            xs = xs.mean(1, keepdim=True).expand(-1, self.channels, -1, -1)
        out = self.diffusion.sample(self.model, to_device(labels, dev), tuple(xs.shape), self.steps, generator,
                                    known=xs * 2 - 1, keep=ks)
        out = ((out + 1) / 2).clamp(0, 1)
        if (H, W) != (self.size, self.size):
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
        if out.shape[1] != x.shape[1]:
            out = out.mean(1, keepdim=True).expand(-1, x.shape[1], -1, -1)
        # Re-impose the kept pixels at full resolution: the round trip through the model's
        # size blurs them, and inpainting promises to keep them.
        keep = to_device(keep_mask, dev, torch.float32)
        out = keep * to_device(x, dev).float() + (1 - keep) * self.space.from_unit(out, x).float()
        return (out.round() if x.dtype == torch.uint8 else out).to(device=x.device, dtype=x.dtype)
