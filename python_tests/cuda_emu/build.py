"""Builds the CUDA kernels of csrc/cuda as CPU code under the emulator in cuda_emu.h and
registers them as torch.ops.medmix_cuda_emu (the CPU dispatch key, the schemas of csrc/ops.cpp).

The .cu files are not edited by hand for this: they are rewritten mechanically (launch syntax,
shared-memory declarations, c10/cuda includes, launch-bounds checks, the registration's
namespace and key). A CUDA construct the rewrite does not know is an error here, so the
emulation cannot quietly drift from the sources. Build products go to build/cuda_emu/ (ninja: rebuilt only when a source or
the emulator changes).
"""
from __future__ import annotations

import fcntl
import functools
import os
import pathlib
import re

NAMESPACE = "medmix_cuda_emu"
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CSRC = ROOT / "csrc"

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;<>()]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w:\s]*?)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+([A-Za-z_][\w:<>,\s]*?)\s+(\w+)\s*\[([^\]]+)\]\s*;")
_CUDA_INCLUDE = re.compile(r"#include\s*<(?:c10/cuda/[^>]+|cuda_runtime\.h|cuda_runtime_api\.h)>\n")
_LIBRARY_IMPL = "TORCH_LIBRARY_IMPL(medmix, CUDA, m)"
# What must not survive the rewrite: CUDA-only syntax or headers the emulator does not provide.
_LEFTOVERS = re.compile(r"<<<|>>>|__shared__|c10/cuda|cuda_runtime|__shfl_(?!xor_sync)\w*|"
                        r"atomic(?!Add\b)[A-Z]\w*|cooperative_groups|__ldg|__syncwarp")
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\(")
_BODY_OPEN = re.compile(r"\s*\{")


def _balanced(text: str, open_at: int) -> int:
    """The index just past the parenthesis that closes the one at text[open_at]."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise RuntimeError("unbalanced parentheses")


def _check_launch_bounds(text: str, name: str) -> str:
    """`__global__ void __launch_bounds__(N) k(...) {` gets `check_launch_bounds(N);` as the
    first statement of its body: a GPU refuses a launch of more threads than the bound the
    kernel was compiled for (its registers were allotted for N), and so does the emulation."""
    out, pos = [], 0
    for m in _LAUNCH_BOUNDS.finditer(text):
        bounds_end = _balanced(text, m.end() - 1)
        params = text.index("(", bounds_end)
        body = _balanced(text, params)
        brace = _BODY_OPEN.match(text, body)
        if brace is None:
            line = text.count("\n", 0, m.start()) + 1
            raise RuntimeError(f"{name}:{line}: a __launch_bounds__ kernel without a body here "
                               "is not handled by the CUDA emulation")
        bound = text[m.end():bounds_end - 1]
        out += [text[pos:brace.end()], f" ::medmix_emu::check_launch_bounds({bound});"]
        pos = brace.end()
    return "".join(out) + text[pos:]


def rewrite_cuda(text: str, name: str, registers_medmix: bool = True) -> str:
    """One .cu / .cuh file as C++ for the emulator. A library .cu file (registers_medmix) must
    hold the block that registers its CUDA kernels; it is moved to the emulation's namespace."""
    out = _CUDA_INCLUDE.sub("\n", text)  # (every rewrite keeps the line numbers)
    out = _check_launch_bounds(out, name)
    out = _DYNAMIC_SHARED.sub(
        lambda m: f"{m[1]}* {m[2]} = reinterpret_cast<{m[1]}*>(::medmix_emu::dynamic_shared());", out)
    out = _STATIC_SHARED.sub(
        lambda m: (f"static char {m[2]}_emu_key; {m[1]} (&{m[2]})[{m[3]}] = "
                   f"::medmix_emu::static_shared<{m[1]}[{m[3]}]>(&{m[2]}_emu_key);"), out)
    out = _LAUNCH.sub(lambda m: f"::medmix_emu::launch({m[2]}, {m[1]})(", out)
    out = out.replace(".is_cuda()", ".is_cpu()")
    if _LIBRARY_IMPL in text:
        out = out.replace(_LIBRARY_IMPL, f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m)")
    elif registers_medmix and name.endswith(".cu"):
        raise RuntimeError(f"{name}: no `{_LIBRARY_IMPL}` block to register under emulation")
    left = _LEFTOVERS.search(out)
    if left:
        line = out.count("\n", 0, left.start()) + 1
        raise RuntimeError(f"{name}:{line}: `{left[0]}` is not handled by the CUDA emulation "
                           "(python_tests/cuda_emu); extend cuda_emu.h and build.py")
    # #line: compiler messages and the emulator's barrier reports name the original file.
    return f'#include "cuda_emu.h"\n#line 1 "{name}"\n' + out


def write_sources(dest: pathlib.Path) -> list[str]:
    """Writes the rewritten tree into dest (cuda/, common/, ops.cpp); returns the sources to
    compile. Files are only rewritten when their text changes, which keeps ninja's rebuilds
    incremental."""
    def put(path: pathlib.Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)

    # Trees built before cuda_emu.h was included in place hold a copy of it here, which the
    # quoted includes would find before the real one.
    (dest / "cuda_emu.h").unlink(missing_ok=True)
    for header in sorted((CSRC / "common").glob("*.h")):
        put(dest / "common" / header.name, header.read_text())
    sources = []
    for cu in sorted((CSRC / "cuda").glob("*.cu*")):
        text = rewrite_cuda(cu.read_text(), f"csrc/cuda/{cu.name}")
        target = dest / "cuda" / (cu.stem + ".cpp" if cu.suffix == ".cu" else cu.name)
        put(target, text)
        if cu.suffix == ".cu":
            sources.append(str(target))
    # The emulator's own checks: kernels with known bugs (test_cuda_emulation.py).
    selftest = dest / "selftest.cpp"
    put(selftest, rewrite_cuda((HERE / "selftest.cu").read_text(), "python_tests/cuda_emu/selftest.cu",
                             registers_medmix=False))
    sources.append(str(selftest))
    schemas = (CSRC / "ops.cpp").read_text()
    if "TORCH_LIBRARY(medmix, m)" not in schemas:
        raise RuntimeError("csrc/ops.cpp: no `TORCH_LIBRARY(medmix, m)` block")
    put(dest / "ops.cpp", schemas.replace("TORCH_LIBRARY(medmix, m)", f"TORCH_LIBRARY({NAMESPACE}, m)"))
    return [str(dest / "ops.cpp"), *sources]


@functools.lru_cache(maxsize=None)
def load(selftest_only: bool = False) -> None:
    """Builds (incrementally) and loads the emulated kernels: torch.ops.medmix_cuda_emu.*.
    selftest_only: just the emulator's own buggy kernels (torch.ops.medmix_cuda_emu_selftest),
    one translation unit instead of six: what `make test` needs to check the ASan mode."""
    # MEDMIX_EMU_ASAN=1 (`make test-cuda-asan`, which also preloads libasan): every memory
    # access of the emulated kernels checked by AddressSanitizer.
    asan = os.environ.get("MEDMIX_EMU_ASAN") == "1"
    suffix = "_selftest" if selftest_only else ""
    build = ROOT / "build" / (("cuda_emu_asan" if asan else "cuda_emu") + suffix)
    build.mkdir(parents=True, exist_ok=True)
    # One process at a time (pytest-xdist workers load it concurrently): write_sources rewrites
    # files that another process's compiler may be reading.
    with open(build / "build.lock", "w") as lock:  # (closing it releases the lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_and_load(build, selftest_only, asan, suffix)


def _build_and_load(build: pathlib.Path, selftest_only: bool, asan: bool, suffix: str) -> None:
    from torch.utils import cpp_extension

    sources = write_sources(build / "src")
    if selftest_only:
        sources = [s for s in sources if s.endswith("selftest.cpp")]
    objects = build / "obj"
    objects.mkdir(parents=True, exist_ok=True)
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
    cpp_extension.load(
        # (cuda_emu.h is included from here; ninja's depfiles track it like any header)
        name=NAMESPACE + suffix, sources=sources, extra_include_paths=[str(build / "src"), str(HERE)],
        # -O1: compiles in about half the time of -O3; the test shapes are small.
        extra_cflags=["-O1", "-Wno-unused-variable", *sanitize], extra_ldflags=sanitize[:1],
        build_directory=str(objects),
        is_python_module=False, verbose=os.environ.get("MEDMIX_EMU_VERBOSE") == "1")
