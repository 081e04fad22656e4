"""Benchmarks run compiled kernels only: the Triton interpreter is never timed."""
import os

import torch

if not torch.cuda.is_available():
    # Lets the benchmarks import medmix_ops' Triton modules; they skip Triton on CPU anyway.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Records what the numbers were measured on next to pytest-benchmark's own machine info."""
    import platform

    machine_info["torch"] = torch.__version__
    machine_info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["cpu_threads"] = torch.get_num_threads()
    machine_info["node"] = platform.node()
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None
