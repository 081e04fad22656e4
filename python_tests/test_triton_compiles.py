"""Every Triton kernel compiles for the H100/H200 (sm_90) through triton's real pipeline, here,
without a GPU (see triton_compile_check.py): the interpreted tests cannot catch code that only
the compiler rejects, such as a runtime loop bound in tl.static_range."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import FUZZ_LONG

SCRIPT = pathlib.Path(__file__).with_name("triton_compile_check.py")
TRITON_DIR = pathlib.Path(__file__).resolve().parents[1] / "medmix_ops" / "triton"


def launched_kernels() -> set[str]:
    """The @triton.jit functions named *_kernel (the launched ones; helpers have other names)."""
    names = set()
    for path in TRITON_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and any(
                    "jit" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    return names


@pytest.mark.skipif(sys.platform != "linux", reason="triton's CUDA backend (ptxas) ships for Linux")
def test_every_triton_kernel_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # CI compiles contiguous layouts only (a fresh machine has no triton cache: about 30 s
    # instead of 60); MEDMIX_FUZZ=long compiles channels_last too.
    quick = [] if FUZZ_LONG else ["--quick"]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90", *quick], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("sm_90:")][-1]
    compiled = set(line.split(": ")[-1].split(", "))
    expected = launched_kernels()
    assert len(expected) >= 11, sorted(expected)
    assert compiled == expected, f"compiled {sorted(compiled)}, the sources launch {sorted(expected)}"
