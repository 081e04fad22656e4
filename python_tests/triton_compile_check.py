"""Compiles every Triton kernel for real GPU targets on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1) runs kernels as NumPy and accepts code the compiler
rejects (types, constexpr use, layouts), so interpreted tests alone leave the GPU build
unchecked. Here triton's real pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, with the
ptxas that ships with triton) runs for each requested architecture: a stand-in driver reports
the target, and every launch is turned into a compile-only warm-up. A kernel compiled with FMA
contraction on fails too (the launches turn it off; see LAUNCH_OPTIONS). The ops are called
through their public API with ``backend="triton"`` over the dtypes, layouts and options that
select distinct kernel specialisations; their outputs are meaningless (nothing runs) and unused.

    python python_tests/triton_compile_check.py [--arch 90]

prints one line per compiled specialisation and exits non-zero when a compile fails.
``python_tests/test_triton_compiles.py`` runs it in a subprocess (triton must be imported here
without the interpreter, which the test process has already switched on).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be real JIT functions

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


class CompileOnlyDriver:
    """Just enough of a triton driver for JITFunction.run to compile: target, device, stream."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILED: list[tuple[str, str]] = []  # (kernel, specialisation key)


def compile_only(run):
    def wrapper(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        if kernel is None or "cubin" not in kernel.asm:
            raise RuntimeError(f"{self.fn.__name__}: no cubin was produced")
        # LAUNCH_OPTIONS (medmix_ops/triton/_common.py) turn off FMA contraction, so the GPU
        # rounds `acc += w * v` as the C++ kernels do. (The PTX itself still holds the FMAs of
        # libdevice's log / exp / sqrt, so it is the compile option that is checked.)
        if kernel.metadata.enable_fp_fusion:
            raise RuntimeError(f"{self.fn.__name__} was compiled with FMA contraction on; launch it "
                               "with **LAUNCH_OPTIONS")
        COMPILED.append((self.fn.__name__, kernel.hash))
        return kernel
    return wrapper


def exercise(layouts=(False, True)) -> None:
    """Every public entry point that launches Triton, over the specialisations that matter.
    layouts: channels_last off / on for the images (--quick: contiguous only, about half the
    specialisations; channels_last changes only the strides' specialisation hints)."""
    # Imported only now: the modules' @triton.jit must see the interpreter switched off.
    import medmix_ops.triton.adm  # noqa: F401
    import medmix_ops.triton.gaussian_blend  # noqa: F401
    import medmix_ops.triton.patch_ratio_pool  # noqa: F401
    import medmix_ops.triton.saliency  # noqa: F401
    # medmix_ops accepts CPU tensors for backend="triton" only under the interpreter flag; the
    # kernels above are already compiled JIT functions, so setting it now changes only that check.
    os.environ["TRITON_INTERPRET"] = "1"
    from medmix_ops import adm_mask, adm_mix, gaussian_blend, patch_ratio_pool, saliency
    from medmix_ops.ops.gaussian_blend import blend_trusted

    g = torch.Generator().manual_seed(0)
    B, C, H, W = 2, 3, 37, 53
    T = "triton"

    def images(dtype, channels_last=False, c=C):
        x = torch.rand(B, c, H, W, generator=g)
        x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    mask = torch.rand(B, 1, H, W, generator=g)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.uint8):
        for cl in layouts:
            a, b = images(dtype, cl), images(dtype, cl)
            for sigma in (0.0, 2.5):
                for ret in (False, True):
                    gaussian_blend(a, b, mask, sigma, return_alpha=ret, backend=T)
            blend_trusted(a, a, mask, 0.0, torch.tensor([1, 0]), T)
            if dtype != torch.uint8:
                ga, gb = a.clone().requires_grad_(), b.clone().requires_grad_()
                gaussian_blend(ga, gb, mask, 2.5, backend=T)[0].sum().backward()
            x = images(dtype, cl)
            for method in ("spectral_residual", "fine_grained"):
                saliency(x, method, backend=T)
            if dtype != torch.uint8:
                xf = images(dtype, cl)
                for reduce in ("max", "sum"):
                    saliency(xf - 0.5, "gradient", reduce=reduce, sigma=3.0, backend=T)  # x: input grads
                acts = torch.rand(B, 8, 7, 7, generator=g).to(dtype)
                saliency(acts, "gradcam", grads=torch.randn(acts.shape, generator=g).to(dtype),
                         size=(H, W), backend=T)
                x_hat = images(dtype, cl)
                for mode in ("lambda", "otsu", "quantile"):
                    adm_mask(x, x_hat, 0.4, mode, backend=T)
                adm_mix(x, x_hat, torch.tensor([1, 0]), 0.4, backend=T)
                adm_mix(x, x_hat, torch.tensor([1, 0]), torch.tensor([0.3, 0.6]), stacked=True, backend=T)
    s_a, s_b = torch.rand(B, 1, 64, 48, generator=g), torch.rand(B, 1, 64, 48, generator=g)
    for expand in (False, True):
        patch_ratio_pool(s_a, s_b, 16, 0.8, expand=expand, backend=T)
    patch_ratio_pool(s_a[..., :60, :45], s_b[..., :60, :45], 16, 0.8, pad=True, backend=T)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90,
                   help="compute capability x 10 (default 90: H100/H200; one per process, since "
                        "triton caches compiled kernels per device)")
    p.add_argument("--quick", action="store_true",
                   help="contiguous images only (make test); the default also compiles channels_last")
    args = p.parse_args(argv)
    arch = args.arch
    JITFunction.run = compile_only(JITFunction.run)
    driver.set_active(CompileOnlyDriver(arch))
    start = time.time()
    try:
        exercise((False,) if args.quick else (False, True))
    except Exception as e:  # noqa: BLE001 - report which kernel and why, then fail
        print(f"sm_{arch}: FAILED after {len(set(COMPILED))} specialisations: {type(e).__name__}: {e}",
              flush=True)
        raise
    kernels = sorted({name for name, _ in COMPILED})
    print(f"sm_{arch}: {len(set(COMPILED))} specialisations of {len(kernels)} kernels compiled in "
          f"{time.time() - start:.0f} s (triton {triton.__version__}, torch {torch.__version__}): "
          + ", ".join(kernels), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
