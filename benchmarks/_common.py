"""Helpers shared by the benchmark files: device list, synchronised runners, inputs."""
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def batch_for(device: str) -> int:
    return 256 if device == "cuda" else 32


def synced(fn, device):
    """fn, followed by a device synchronisation on CUDA (so the timer sees the kernel)."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def kernel_backends(op: str, device: str) -> list:
    """The compiled kernels of op on device (never the Triton interpreter)."""
    from medmix_ops import _backend

    return [k for k in _backend.available_backends(op, device)
            if k != "reference" and not (k == "triton" and device == "cpu")]


def run_benchmark(benchmark, fn, device, images):
    run = synced(fn, device)
    run()  # warm-up / compile
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                images=images)
    benchmark.pedantic(run, rounds=10 if device == "cpu" else 50, warmup_rounds=1)
