"""Independent float64 references and comparison helpers for the tests (NumPy, written from the
definitions in DESIGN.md, sharing no code with medmix_ops)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import torch

# (atol, rtol) when comparing an op's output with a float64 reference computed from the same
# (already rounded) inputs: about one rounding of the output dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-6, 2e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
    torch.uint8: (1.0, 0.0),
}


def mirror(i: int, n: int) -> int:
    """Reflect about the edge pixels (edge not repeated), as often as needed."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    sigma = float(np.float32(sigma))  # the ops receive sigma as float32
    r = math.ceil(3.0 * sigma)
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-t * t / (2.0 * sigma * sigma)) if sigma > 0 else np.ones(1)
    return w / w.sum()


def blur_f64(m: np.ndarray, sigma: float) -> np.ndarray:
    """[H, W] -> [H, W]: separable Gaussian blur with the mirror border, in float64."""
    H, W = m.shape
    w = gaussian_kernel_1d(sigma)
    r = len(w) // 2
    rows = np.array([[mirror(h + t, H) for t in range(-r, r + 1)] for h in range(H)])
    cols = np.array([[mirror(x + t, W) for t in range(-r, r + 1)] for x in range(W)])
    v = np.einsum("hkw,k->hw", m[rows, :], w)
    return np.einsum("hwk,k->hw", v[:, cols], w)


def blend_f64(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, sigmas) -> tuple:
    """Reference (out, lam, alpha) in float64 numpy for [B, C, H, W] inputs."""
    an, bn = a.double().cpu().numpy(), b.double().cpu().numpy()
    mn = mask.double().cpu().numpy()
    B = an.shape[0]
    sig = [float(s) for s in (sigmas if isinstance(sigmas, (list, tuple)) else [sigmas] * B)]
    alpha = np.stack([blur_f64(mn[i, 0], sig[i]) for i in range(B)])[:, None]
    out = alpha * an + (1 - alpha) * bn
    if a.dtype == torch.uint8:
        out = np.clip(np.round(out), 0, 255)
    return out, alpha.mean(axis=(1, 2, 3)), alpha


def assert_close(actual: torch.Tensor, expected, atol: float, rtol: float, what: str = "") -> None:
    """allclose with a message saying where and by how much it differs."""
    act = actual.detach().double().cpu().numpy()
    exp = np.asarray(expected, dtype=np.float64)
    assert act.shape == exp.shape, f"{what}: shape {act.shape} != expected {exp.shape}"
    err = np.abs(act - exp)
    bad = err > atol + rtol * np.abs(exp)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.size} elements differ; max error {err.max():.3g} "
            f"(atol {atol}, rtol {rtol}); first at {idx}: got {act[idx]!r}, expected {exp[idx]!r}"
        )


def run_script_under_envs(tmp_path, script: str, envs: dict, timeout: int = 600) -> dict:
    """Runs the Python source `script` once per {name: extra environment}, each in a fresh
    process (kernel switches read their environment once per process), with the path of a
    .pt file as its argument; returns {name: what the script torch.save'd there}."""
    path = tmp_path / "cases.py"
    path.write_text(script)
    runs = {}
    for name, env in envs.items():
        out = tmp_path / f"{name}.pt"
        res = subprocess.run([sys.executable, str(path), str(out)], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = torch.load(out)
    return runs


def every_op_path(backend: str) -> list:
    """Calls every public op with `backend` over the paths that change a kernel's memory
    traffic (odd sizes, so masked edges; channels_last; uint8; sigma 0 and > 0; partner rows;
    the backward; each saliency method and ADM mode; patch pooling padded and expanded) on
    small fixed CPU inputs. Returns every output tensor, in call order."""
    from medmix_ops import adm_mask, adm_mix, gaussian_blend, patch_ratio_pool, saliency
    from medmix_ops.ops.gaussian_blend import blend_trusted

    g = torch.Generator().manual_seed(0)
    B, C, H, W = 2, 3, 19, 23
    x = torch.rand(B, C, H, W, generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x8 = (x * 255).round().to(torch.uint8)
    mask = torch.rand(B, 1, H, W, generator=g)
    outs = []
    for a in (x, x_cl, x8):
        for sigma in (0.0, 1.5):
            outs += gaussian_blend(a, a.flip(0), mask, sigma, return_alpha=True, backend=backend)
    outs.append(blend_trusted(x, x, mask, 1.5, torch.tensor([1, 0]), backend))
    ga, gb = x.clone().requires_grad_(), x.flip(0).requires_grad_()
    gaussian_blend(ga, gb, mask, 1.5, backend=backend)[0].pow(2).sum().backward()
    outs += [ga.grad, gb.grad]
    for a in (x, x8):
        outs.append(saliency(a, "spectral_residual", backend=backend))
        outs.append(saliency(a, "fine_grained", backend=backend))
    outs.append(saliency(x_cl - 0.5, "gradient", sigma=2.0, backend=backend))
    acts = torch.rand(B, 8, 5, 6, generator=g)
    outs.append(saliency(acts, "gradcam", grads=torch.randn(acts.shape, generator=g), size=(H, W),
                         backend=backend))
    x_hat = (x + 0.3 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    for mode in ("lambda", "otsu", "quantile"):
        outs += adm_mask(x, x_hat, 0.4, mode, backend=backend)
    outs += adm_mix(x_cl, x_hat, torch.tensor([1, 0]), torch.tensor([0.3, 0.6]), backend=backend)
    s_a, s_b = torch.rand(B, 1, 32, 48, generator=g), torch.rand(B, 1, 32, 48, generator=g)
    outs += patch_ratio_pool(s_a, s_b, 16, 0.8, expand=True, backend=backend)
    outs += patch_ratio_pool(s_a[..., :30, :45], s_b[..., :30, :45], 16, 0.8, pad=True, backend=backend)
    return [o.detach() for o in outs if isinstance(o, torch.Tensor)]
