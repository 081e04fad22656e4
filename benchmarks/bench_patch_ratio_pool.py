"""patch_ratio_pool (SPMix ratios, expanded pixel map) against its eager composite and
torch.compile of it. Maps float32 1 x 224 x 224, patch 16 (CPU B=32, GPU B=256)."""
import pytest
import torch

from medmix_ops import patch_ratio_pool
from medmix_ops.reference import expand_ratios
from medmix_ops.reference import patch_ratio_pool as reference_ratios

from _common import DEVICES, batch_for, kernel_backends, run_benchmark


def composite(s_a, s_b):
    r, mean = reference_ratios(s_a, s_b, 16, 0.8)
    return r, mean, expand_ratios(r, 16, (224, 224))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("provider", ["composite_eager", "composite_compiled", "medmix_cpu",
                                      "medmix_cuda", "medmix_triton"])
def test_patch_ratio_pool(benchmark, device, provider):
    g = torch.Generator().manual_seed(0)
    B = batch_for(device)
    s_a = torch.rand(B, 1, 224, 224, generator=g).to(device)
    s_b = torch.rand(B, 1, 224, 224, generator=g).to(device)
    benchmark.group = f"patch_ratio_pool-{device}-B{B}x1x224x224-p16"
    if provider == "composite_eager":
        fn = composite
    elif provider == "composite_compiled":
        fn = torch.compile(composite)
    elif provider.removeprefix("medmix_") in kernel_backends("patch_ratio_pool", device):
        k = provider.removeprefix("medmix_")

        def fn(a, b):
            return patch_ratio_pool(a, b, 16, 0.8, expand=True, backend=k)
    else:
        pytest.skip(f"{provider} does not run on {device} here")
    run_benchmark(benchmark, lambda: fn(s_a, s_b), device, B)
