"""Builds medmix_ops._C: the C++ CPU kernels, plus the CUDA kernels when torch is a CUDA build
and a CUDA toolkit is found. MEDMIX_CUDA=0/1 forces the choice; TORCH_CUDA_ARCH_LIST defaults to
"8.0;9.0" (A100, H100/H200). Install with `pip install --no-build-isolation --no-deps -e .` (build isolation would fetch
another torch). `make` instead installs the package once with MEDMIX_NO_EXT=1 and builds the
extension with `setup.py build_ext --inplace`, whose build/ directory makes rebuilds incremental.
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    """The CUDA toolkit root, or None. torch guesses /usr/local from an nvcc wrapper script in
    /usr/local/bin, which has no headers; prefer a toolkit directory that really has nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.exists(os.path.join(os.environ[var], "bin", "nvcc")):
            return os.environ[var]
    for cand in ("/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)):
        if os.path.exists(os.path.join(cand, "bin", "nvcc")):
            return cand
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    return None


def _want_cuda(torch):
    flag = os.environ.get("MEDMIX_CUDA", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    if flag:
        raise SystemExit(f"MEDMIX_CUDA must be 0 or 1, got {flag!r}")
    return torch.version.cuda is not None and _cuda_home() is not None


def _extensions():
    import torch

    use_cuda = _want_cuda(torch)
    if use_cuda:
        home = _cuda_home()
        if home is None:
            raise SystemExit("MEDMIX_CUDA=1 but no CUDA toolkit (bin/nvcc) was found; set CUDA_HOME")
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp", "csrc/module.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    # The C++ standard comes from BuildExtension (matches torch). -fno-trapping-math lets GCC
    # turn selects (blend_pixel's exact 0 / 1 weights) into vector blends: with FP traps kept,
    # a compare may trap and the loop stays scalar, 3x slower. It changes no value (no
    # reassociation, no FMA contraction): only FP exception flags are no longer promised.
    # -fno-math-errno: sqrt becomes the (correctly rounded, same-bits) instruction without the
    # errno branch that kept loops with a sqrt scalar; nothing here reads errno.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    debug = os.environ.get("MEDMIX_DEBUG") == "1"
    if debug:
        cxx = ["-O0", "-g", "-fopenmp"]
    kwargs = dict(
        name="medmix_ops._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # --fmad=false: no fused multiply-adds, so the CUDA kernels round every product and sum
        # as the C++ CPU kernels do (which never contract: ISO C++ mode), and give their bits.
        # The kernels are memory-bound; FMA would not make them faster. (uint8 saliency rounds
        # a weighted grey sum: a contracted sum can fall on the other side of a .5 tie.)
        nvcc = ["-O3", "-lineinfo", "--fmad=false"]
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    print(f"medmix_ops: building the extension {'with' if use_cuda else 'without'} CUDA kernels")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if os.environ.get("MEDMIX_NO_EXT") == "1":
    # Package + console script only; `make` then builds the extension in place with
    # `setup.py build_ext --inplace`, which keeps build/ and so rebuilds incrementally.
    setup()
else:
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
