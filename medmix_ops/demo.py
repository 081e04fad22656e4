"""`medmix demo`: the library's main job on generated data, in under a minute on a 2-core CPU.

For now: Gaussian boundary blending of generated scan-like image pairs with every backend that
runs here, a preview PNG (a | b | mask | soft alpha | blend) and a table of images/s per backend
with each backend's largest difference from the PyTorch reference.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from . import _backend
from .ops import gaussian_blend
from .viz import save_grid


def scan_like_pairs(n: int, size: int, seed: int = 0, device="cpu"):
    """Two batches [n, 3, size, size] of grey textured 'scans' with a bright blob each, in [0, 1],
    and [n, 1, size, size] hard masks (a box or an ellipse per sample)."""
    g = torch.Generator().manual_seed(seed)

    def texture():
        low = torch.rand(n, 1, max(2, size // 16), max(2, size // 16), generator=g)
        base = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
        speckle = 0.08 * torch.randn(n, 1, size, size, generator=g)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        cy, cx = (torch.rand(2, n, 1, 1, 1, generator=g) * 1.2 - 0.6)
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        body = (xx ** 2 / 0.9 + yy ** 2 / 0.7 < 1).float()  # an organ-shaped field of view
        img = (0.25 + 0.35 * base + speckle + 0.5 * blob) * body
        return img.clamp(0, 1).expand(n, 3, size, size).contiguous()

    a, b = texture(), texture()
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * 0.5 + 0.25) * size
        hy, hx = (torch.rand(2, generator=g) * 0.2 + 0.15) * size
        if i % 2 == 0:  # CutMix-style box
            masks[i, 0] = ((yy - cy).abs() <= hy) & ((xx - cx).abs() <= hx)
        else:  # lesion-style ellipse
            masks[i, 0] = ((yy - cy) / hy) ** 2 + ((xx - cx) / hx) ** 2 <= 1
    return a.to(device), b.to(device), masks.to(device)


def _time(fn, budget_s: float, max_reps: int) -> list[float]:
    fn()  # warm-up (compilation, caches)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < budget_s or len(times) < 3):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def run_demo(out_dir: str = "demo_out", batch: int = 32, size: int = 128, sigma: float = 4.0,
             seed: int = 0, quick: bool = False) -> dict:
    """Runs the demo; returns {"rows": [...], "preview": path}. Prints the table."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    preview = None
    for device in devices:
        a, b, mask = scan_like_pairs(batch, size, seed, device)
        ref_out = gaussian_blend(a, b, mask, sigma, backend="reference")[0]
        for backend in _backend.available_backends("gaussian_blend", device):
            interpreted = backend == "triton" and device == "cpu"
            # The Triton interpreter runs Python per program: a small batch, not a speed figure.
            n = min(batch, 2) if interpreted else batch
            fn = lambda: gaussian_blend(a[:n], b[:n], mask[:n], sigma, backend=backend)  # noqa: E731
            times = _time(fn, budget_s=0.2 if quick else 1.0, max_reps=1 if interpreted else 50)
            diff = (fn()[0] - ref_out[:n]).abs().max().item()
            med = statistics.median(times)
            rows.append(dict(device=device, backend=backend + (" (interpreter)" if interpreted else ""),
                             batch=n, median_ms=med * 1e3, images_per_s=n / med, max_abs_diff=diff))
        if preview is None:
            out, lam, alpha = gaussian_blend(a, b, mask, sigma, return_alpha=True)
            k = min(4, batch)
            grid = [[a[i], b[i], mask[i], alpha[i], out[i]] for i in range(k)]
            preview = save_grid(grid, os.path.join(out_dir, "preview.png"),
                                col_labels=["a", "b", "mask", f"alpha (sigma={sigma:g})", "blend"],
                                row_labels=[f"lam={lam[i].item():.3f}" for i in range(k)])
    _print_table(rows, batch, size, sigma)
    print(f"\npreview: {preview}")
    return {"rows": rows, "preview": preview}


def _print_table(rows, batch, size, sigma):
    print(f"gaussian_blend: {batch} x 3 x {size} x {size} float32, sigma={sigma:g}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    head = f"{'device':<7}{'backend':<24}{'batch':>6}{'median ms':>12}{'images/s':>12}{'max |diff| vs ref':>20}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ips = f"{r['images_per_s']:,.0f}" if math.isfinite(r["images_per_s"]) else "-"
        print(f"{r['device']:<7}{r['backend']:<24}{r['batch']:>6}{r['median_ms']:>12.2f}{ips:>12}"
              f"{r['max_abs_diff']:>20.2e}")
