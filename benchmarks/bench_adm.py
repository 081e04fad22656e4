"""adm_mix against the public VariMix per-sample loop (rewritten here, it is not a dependency)
and the eager reference. Images float32 3 x 224 x 224 (CPU B=32, GPU B=256)."""
import pytest
import torch

from medmix_ops import adm_mix
from medmix_ops.reference.adm import varimix_public_loop as varimix_loop

from _common import DEVICES, batch_for, kernel_backends, run_benchmark


def inputs(device):
    g = torch.Generator().manual_seed(0)
    B = batch_for(device)
    x = torch.rand(B, 3, 224, 224, generator=g)
    x_hat = (x + 0.2 * torch.randn(B, 3, 224, 224, generator=g)).clamp(0, 1)
    perm = torch.randperm(B, generator=g)
    return x.to(device), x_hat.to(device), perm.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("provider", ["varimix_loop", "reference_eager", "medmix_cpu",
                                      "medmix_cuda", "medmix_triton", "medmix_cpu_out",
                                      "medmix_cuda_out", "medmix_triton_out"])
def test_adm_mix(benchmark, device, provider):
    x, x_hat, perm = inputs(device)
    benchmark.group = f"adm_mix-{device}-B{x.shape[0]}x3x224x224-fp32"
    if provider == "varimix_loop":
        def fn():
            return varimix_loop(x, x_hat, perm, 0.4)
    elif provider == "reference_eager":
        def fn():
            return adm_mix(x, x_hat, perm, 0.4, backend="reference", validate=False)
    elif provider.removeprefix("medmix_").removesuffix("_out") in kernel_backends("adm", device):
        k = provider.removeprefix("medmix_").removesuffix("_out")
        # *_out: one output buffer reused across calls (no fresh-page faults per call)
        out = torch.empty((2 * x.shape[0], *x.shape[1:]), device=device) if provider.endswith("_out") else None

        def fn():
            return adm_mix(x, x_hat, perm, 0.4, out=out, backend=k, validate=False)
    else:
        pytest.skip(f"{provider} does not run on {device} here")
    run_benchmark(benchmark, fn, device, x.shape[0])


def test_loop_and_kernel_agree():
    x, x_hat, perm = inputs("cpu")
    x, x_hat, perm = x[:4], x_hat[:4], torch.tensor([2, 3, 0, 1])
    want = varimix_loop(x, x_hat, perm, 0.4)
    got = adm_mix(x, x_hat, perm, 0.4)
    assert torch.equal(got[0], want[0]) and torch.allclose(got[2], want[2])
