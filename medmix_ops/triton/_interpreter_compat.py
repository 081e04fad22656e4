"""Keeps the Triton interpreter (TRITON_INTERPRET=1) working on triton < 3.7 with numpy >= 2.4.

The interpreter passes a scalar int kernel argument as a 1-element 1-D numpy array, and a loop
bound such as ``for c in range(C)`` calls its ``__index__``. triton 3.6 implements that as
``int(data)``, which numpy 2.4 rejects ("only 0-dimensional arrays can be converted to Python
scalars"); triton 3.7+ squeezes the array first. Where the installed interpreter lacks the
squeeze, this wraps its tensor patching to add it. Nothing changes on a GPU, where kernels are
compiled, or on a triton that already squeezes.
"""
from __future__ import annotations

import inspect


def _scalar_index(self) -> int:
    return int(self.handle.data.reshape(-1)[0]) if self.handle.data.size == 1 else int(self.handle.data)


def apply() -> bool:
    """Installs the fix when needed; True when it did (idempotent)."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # a triton without the interpreter module: nothing to fix
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_medmix_scalar_index", False):
        return False
    try:
        if "squeeze" in inspect.getsource(original):  # fixed upstream
            return False
    except (OSError, TypeError):
        return False

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _scalar_index)

    patch_lang_tensor._medmix_scalar_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True


apply()
