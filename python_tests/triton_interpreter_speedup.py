"""Two changes to Triton's interpreter (TRITON_INTERPRET=1) that make the interpreted Triton
tests about twice as fast without changing what any kernel computes:

- A call from one @triton.jit function to another re-patches triton.language on every call
  (`_patch_lang`), although the kernel's launch has patched the same modules already and keeps
  them patched until it returns. About a third of an interpreted blend went there. Here a nested
  call whose language modules are patched already skips it.
- The interpreter checks every 32-bit integer add, sub and mul for overflow (the compiled
  kernels check only with debug=True). At the test shapes no index comes near 2**31, so the
  check costs about a third of the time and cannot fire on index arithmetic. It stays on in
  the opt-in thorough runs: MEDMIX_TRITON_RACES=1 (`make test-triton-races`) and
  MEDMIX_FUZZ=long.

Both reach into triton.runtime.interpreter; on a Triton whose interpreter is laid out
differently, `install` changes nothing (the tests only run slower).
"""
from __future__ import annotations

import dataclasses
import inspect


def install(check_overflow: bool) -> bool:
    """Applies the speed-ups once per process; returns whether the nested-call one applied."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    if getattr(interpreter, "_medmix_speedup", False):
        return True
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if not check_overflow and dataclasses.is_dataclass(options) and hasattr(options, "sanitize_overflow"):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)
    original = getattr(interpreter, "_patch_lang", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    if original is None or scope_type is None:
        return False

    languages = (tl, tl.core)
    patched: dict[int, int] = {}  # id(module) -> how many open launch scopes patched it
    langs_of: dict[object, tuple] = {}

    def _languages(fn) -> tuple:
        found = langs_of.get(fn)
        if found is None:  # (what _patch_lang itself patches: the language modules fn sees)
            found = langs_of[fn] = tuple({id(v) for v in fn.__globals__.values()
                                          if inspect.ismodule(v) and v in languages})
        return found

    def _patch_lang(fn):
        mine = _languages(fn)
        if mine and all(patched.get(m, 0) for m in mine):
            return scope_type()  # already patched by the launch this call runs inside
        scope = original(fn)
        for m in mine:
            patched[m] = patched.get(m, 0) + 1
        restore = scope.restore

        def _restore():
            for m in mine:
                patched[m] -= 1
            restore()

        scope.restore = _restore
        return scope

    interpreter._patch_lang = _patch_lang
    interpreter._medmix_speedup = True
    return True
