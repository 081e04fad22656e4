"""Batched saliency against OpenCV-contrib called once per image (what SaliencyMix does) and the
eager PyTorch reference. Images: uint8 RGB, 3 x 224 x 224 (CPU B=32, GPU B=256)."""
import numpy as np
import pytest
import torch

from medmix_ops import saliency

from _common import DEVICES, batch_for, kernel_backends, run_benchmark

METHODS = ["spectral_residual", "fine_grained"]


def images(device):
    g = torch.Generator().manual_seed(0)
    B = batch_for(device)
    low = torch.rand(B, 3, 14, 14, generator=g)
    x = torch.nn.functional.interpolate(low, size=(224, 224), mode="bicubic", align_corners=False)
    x = (x + 0.05 * torch.randn(B, 3, 224, 224, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("provider", ["opencv_per_image", "reference_eager", "medmix_cpu",
                                      "medmix_cuda", "medmix_triton"])
def test_saliency(benchmark, device, method, provider):
    x = images(device)
    benchmark.group = f"saliency-{method}-{device}-B{x.shape[0]}x3x224x224-uint8"
    if provider == "opencv_per_image":
        cv2 = pytest.importorskip("cv2")
        if not hasattr(cv2, "saliency"):
            pytest.skip("opencv-contrib is not installed")
        make = {"spectral_residual": cv2.saliency.StaticSaliencySpectralResidual_create,
                "fine_grained": cv2.saliency.StaticSaliencyFineGrained_create}[method]
        det = make()

        def fn():
            # As SaliencyMix does: one numpy image at a time, and the maps back as a batch.
            host = x.permute(0, 2, 3, 1).cpu().numpy()
            maps = [det.computeSaliency(np.ascontiguousarray(im[..., ::-1]))[1] for im in host]
            return torch.from_numpy(np.stack(maps)).to(device)
    elif provider == "reference_eager":
        def fn():
            return saliency(x, method, backend="reference")
    elif provider.removeprefix("medmix_") in kernel_backends("saliency", device):
        k = provider.removeprefix("medmix_")

        def fn():
            return saliency(x, method, backend=k)
    else:
        pytest.skip(f"{provider} does not run on {device} here")
    run_benchmark(benchmark, fn, device, x.shape[0])
