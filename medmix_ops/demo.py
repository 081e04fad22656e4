"""`medmix demo`: the library's main job on generated data, in under a minute on a 2-core CPU.

1. Gaussian boundary blending of generated scan-like image pairs with every backend that runs
   here: preview (a | b | mask | soft alpha | blend).
2. The other fused ops on the same images: saliency maps (spectral residual, fine grained,
   input gradient and Grad-CAM of a small hand-built blob-detector probe), VariMix's ADM, its
   Otsu mask and the ADM mix: second preview.
3. A table of images/s per op and backend, with each backend's largest difference from the
   PyTorch reference.
4. Every mixing policy on a SynthLesion batch (third preview) and the label-fidelity table.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from . import _backend
from .ops import adm_mask, adm_mix, gaussian_blend, patch_ratio_pool, saliency, saliency_from_model
from .models import BlobProbe
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


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _bench(rows, op, label, device, batch, run, budget_s):
    """Times run(backend, n) for every backend of op; compares each with the reference."""
    key = op.split(":")[0]
    for backend in _backend.available_backends(key, device):
        interpreted = backend == "triton" and device == "cpu"
        # The Triton interpreter runs Python per program: a small batch, not a speed figure.
        n = min(batch, 2) if interpreted else batch
        times = _time(lambda: run(backend, n), budget_s, 1 if interpreted else 50)
        # against the reference on the same n samples (partners depend on the batch)
        diff = (_first(run(backend, n)).float() - _first(run("reference", n)).float()).abs().max().item()
        med = statistics.median(times)
        rows.append(dict(op=label, device=device,
                         backend=backend + (" (interpreter)" if interpreted else ""),
                         batch=n, median_ms=med * 1e3, images_per_s=n / med, max_abs_diff=diff))


def run_demo(out_dir: str = "demo_out", batch: int = 32, size: int = 128, sigma: float = 4.0,
             seed: int = 0, quick: bool = False) -> dict:
    """Runs the demo; returns {"rows": [...], "previews": [paths]}. Prints the table."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    budget = 0.2 if quick else 0.6
    rows = []
    previews = []
    for device in devices:
        a, b, mask = scan_like_pairs(batch, size, seed, device)
        # A stand-in translation for VariMix: b's content softly pasted into a where the mask
        # is (a trained I2I generator's output would differ from a by its class evidence).
        x_hat = gaussian_blend(b, a, mask, 3.0, backend="reference")[0]
        perm = torch.roll(torch.arange(batch, device=device), 1)
        s_a = saliency(a, "fine_grained", backend="reference")
        s_b = s_a[perm]

        _bench(rows, "gaussian_blend", f"gaussian_blend s={sigma:g}", device, batch,
               lambda k, n: gaussian_blend(a[:n], b[:n], mask[:n], sigma, backend=k), budget)
        for method in ("spectral_residual", "fine_grained"):
            _bench(rows, "saliency", f"saliency {method}", device, batch,
                   lambda k, n, m=method: saliency(a[:n], m, backend=k), budget)
        _bench(rows, "patch_ratio_pool", "patch_ratio_pool p=16", device, batch,
               lambda k, n: patch_ratio_pool(s_a[:n], s_b[:n], 16, expand=True, backend=k)[2], budget)
        # Partners within the first n samples: every backend mixes the same pairs.
        _bench(rows, "adm", "adm_mix", device, batch,
               lambda k, n: adm_mix(a[:n], x_hat[:n], torch.roll(torch.arange(n, device=device), 1), 0.3,
                                    backend=k), budget)

        if device == "cpu":
            previews += _previews(out_dir, a, b, mask, x_hat, perm, sigma)
    _print_table(rows, batch, size)
    previews.append(_policy_preview(out_dir, seed))
    fid = _fidelity(quick)
    print("\npreviews: " + ", ".join(previews))
    return {"rows": rows, "previews": previews, "fidelity": fid}


def _policy_preview(out_dir: str, seed: int) -> str:
    """Every policy on one SynthLesion batch: a row each (original | partner | weight | mixed)."""
    from .data import SynthLesion
    from .policies import POLICIES, make_policy
    from .preview import policy_rows

    ds = SynthLesion(16, size=96, seed=seed)  # 96 px: room for the soft-label captions
    idx = list(range(16))
    x, seg = ds.render(idx)
    y = ds.labels[idx]
    grid, caps, names = [], [], []
    for name in POLICIES:
        policy = make_policy(name, len(ds.classes), dataset=ds)
        if hasattr(policy, "translator") and hasattr(policy.translator, "set_batch"):
            policy.translator.set_batch(idx, y)
        # the row of the first sample with a lesion, so that the mixing has evidence to move
        g, c = policy_rows(policy, x, y, ds.classes, 16, seg=seg,
                           generator=torch.Generator().manual_seed(seed))
        r = next((k for k in range(len(g)) if int(y[policy.last["index_a"][k]]) != 0), 0)
        grid.append(g[r]), caps.append(c[r]), names.append(name)
    return save_grid(grid, os.path.join(out_dir, "preview_policies.png"),
                     col_labels=["original", "partner", "weight of original", "mixed"],
                     row_labels=names, captions=caps)


def _fidelity(quick: bool) -> dict:
    from .fidelity import format_table, run_fidelity

    result = run_fidelity(n=128 if quick else 256, size=64, progress=False)
    print("\nlabel fidelity on SynthLesion (soft label vs visible lesion evidence):")
    print(format_table(result))
    return result


def _previews(out_dir, a, b, mask, x_hat, perm, sigma):
    k = min(4, a.shape[0])
    out, lam, alpha = gaussian_blend(a, b, mask, sigma, return_alpha=True)
    blend = save_grid([[a[i], b[i], mask[i], alpha[i], out[i]] for i in range(k)],
                      os.path.join(out_dir, "preview.png"),
                      col_labels=["a", "b", "mask", f"alpha (sigma={sigma:g})", "blend"],
                      row_labels=[f"lam={lam[i].item():.3f}" for i in range(k)])
    x = a[:k]
    probe = BlobProbe(sigma=x.shape[-1] / 20)  # the scale of the generated blobs
    maps = {
        "spectral res.": saliency(x, "spectral_residual"),
        "fine grained": saliency(x, "fine_grained"),
        "gradient": saliency_from_model(probe, x, 0, "gradient"),
        "grad-cam": saliency_from_model(probe, x, 0, "gradcam", layer="features"),
    }
    score = (x_hat[:k] - x).abs().amax(dim=1, keepdim=True)
    score = score / score.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    otsu, area = adm_mask(x, x_hat[:k], mode="otsu")
    src, _, lam2 = adm_mix(a, x_hat, perm, 0.3)
    rows = [[x[i], *[m[i] for m in maps.values()], score[i], otsu[i], src[i]] for i in range(k)]
    ops = save_grid(rows, os.path.join(out_dir, "preview_ops.png"),
                    col_labels=["image", *maps, "ADM |x^ - x|", "Otsu mask", "adm_mix"],
                    row_labels=[f"otsu area={area[i].item():.2f}, mix lam'={lam2[i].item():.2f}"
                                for i in range(k)])
    return [blend, ops]


def _print_table(rows, batch, size):
    print(f"{batch} x 3 x {size} x {size} float32 batches, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}")
    head = (f"{'op':<28}{'device':<7}{'backend':<23}{'batch':>6}{'median ms':>11}{'images/s':>11}"
            f"{'max|diff| vs ref':>18}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['op']:<28}{r['device']:<7}{r['backend']:<23}{r['batch']:>6}{r['median_ms']:>11.2f}"
              f"{r['images_per_s']:>11,.0f}{r['max_abs_diff']:>18.2e}")
