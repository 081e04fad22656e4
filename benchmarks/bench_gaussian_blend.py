"""gaussian_blend throughput against its eager composite, torch.compile of it, and the peers a
user would otherwise write (torchvision / kornia Gaussian blur + blend). `make bench` runs it.

Sizes: CPU B=32, GPU B=256, 3 x 224 x 224, float32, sigma = 4.
"""
import math

import pytest
import torch

from medmix_ops import gaussian_blend
from medmix_ops import reference

from _common import DEVICES, kernel_backends, run_benchmark

SIGMA = 4.0


def inputs(device):
    B = 256 if device == "cuda" else 32
    g = torch.Generator().manual_seed(0)
    a = torch.rand(B, 3, 224, 224, generator=g)
    b = torch.rand(B, 3, 224, 224, generator=g)
    mask = torch.zeros(B, 1, 224, 224)
    mask[:, :, 56:168, 40:150] = 1.0
    return a.to(device), b.to(device), mask.to(device)


def composite_blend(a, b, mask, sigma=SIGMA):
    """The eager PyTorch composite a user would write: separable blur via conv2d + blend."""
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=a.device)
    w = torch.exp(-t * t / (2 * sigma * sigma))
    w = w / w.sum()
    m = torch.nn.functional.pad(mask, (r, r, r, r), mode="reflect")
    m = torch.nn.functional.conv2d(m, w.view(1, 1, -1, 1))
    alpha = torch.nn.functional.conv2d(m, w.view(1, 1, 1, -1))
    return alpha * a + (1 - alpha) * b, alpha.mean(dim=(1, 2, 3))


def providers(device):
    out = {
        "composite_eager": composite_blend,
        "reference_eager": lambda a, b, m: gaussian_blend(a, b, m, SIGMA, backend="reference"),
    }
    for k in kernel_backends("gaussian_blend", device):
        out[f"medmix_{k}"] = (lambda k: lambda a, b, m: gaussian_blend(a, b, m, SIGMA, backend=k))(k)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("provider", ["composite_eager", "reference_eager", "composite_compiled",
                                      "medmix_cpu", "medmix_cuda", "medmix_triton",
                                      "torchvision", "kornia"])
def test_gaussian_blend(benchmark, device, provider):
    a, b, mask = inputs(device)
    benchmark.group = f"gaussian_blend-{device}-B{a.shape[0]}x3x224x224-fp32"
    table = providers(device)
    if provider == "composite_compiled":
        fn = torch.compile(composite_blend)
    elif provider == "torchvision":
        F = pytest.importorskip("torchvision.transforms.v2.functional")
        k = 2 * math.ceil(3 * SIGMA) + 1

        def fn(a, b, m):
            alpha = F.gaussian_blur(m, [k, k], [SIGMA, SIGMA])
            return alpha * a + (1 - alpha) * b, alpha.mean(dim=(1, 2, 3))
    elif provider == "kornia":
        kornia = pytest.importorskip("kornia")
        k = 2 * math.ceil(3 * SIGMA) + 1

        def fn(a, b, m):
            alpha = kornia.filters.gaussian_blur2d(m, (k, k), (SIGMA, SIGMA), border_type="reflect")
            return alpha * a + (1 - alpha) * b, alpha.mean(dim=(1, 2, 3))
    elif provider in table:
        fn = table[provider]
    else:
        pytest.skip(f"{provider} does not run on {device} here")
    run_benchmark(benchmark, lambda: fn(a, b, mask), device, a.shape[0])


def test_providers_agree():
    """What the benchmark times computes the same thing (so the comparison is fair)."""
    a, b, mask = inputs("cpu")
    a, b, mask = a[:2], b[:2], mask[:2]
    want, lam = reference.gaussian_blend(a, b, mask, torch.full((2,), SIGMA), 12)[:2]
    got, glam = composite_blend(a, b, mask)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(glam, lam, atol=1e-6)
