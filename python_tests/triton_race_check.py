"""A race detector for Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1).

The interpreter runs a launch's programs one after another and each program's block
operations as whole NumPy arrays, so kernels that would race on a GPU give the right answer
here. This records every global-memory access of a launch (program, barrier epoch, and which
element of the block made it) and reports the accesses a GPU would leave unordered:

- between programs: a value one program stores and another loads (or stores, or stores over
  what another loaded) in the same launch. Programs run in any order, and concurrently.
  Atomics are ordered among themselves; a plain access next to another program's atomic is
  not;
- within a program: a value stored by one element of a block and loaded (or stored over) by
  another element, with no ``tl.debug_barrier()`` in between. Elements are threads on a GPU.
  The element is its position in the block (shape and flat index), the way Triton spreads a
  block over threads; a load of one value (a scalar, or a one-element block) is made by every
  thread, a store of one by one thread;
- within one store: two elements writing different values to the same address.

Reductions are not counted as barriers: one inside a warp has none.

    with RaceCheck() as check:
        run_some_triton_ops()
    check.races  # [] when clean; one line per kind of race found, with the kernel's name

``python_tests/test_triton_races.py`` runs every Triton op under it, and holds kernels with
known races to show that each rule works.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Access:
    program: tuple | None  # None: (loads) made by more than one program
    epoch: int
    shape: tuple
    pos: int
    atomic: bool = False
    many: bool = False  # (loads) made by more than one element of the program, or by every thread


@dataclass
class _Launch:
    kernel: str
    epochs: dict = field(default_factory=dict)   # program -> barrier epoch
    stores: dict = field(default_factory=dict)   # address -> _Access of the last store
    loads: dict = field(default_factory=dict)    # address -> _Access of the loads (merged)


class RaceCheck:
    """Context manager: patches the interpreter's builder and executor while active."""

    def __init__(self):
        self.races: list[str] = []
        self.kernels: set[str] = set()  # the kernels launched while active
        self._seen: set[tuple] = set()
        self._launch: _Launch | None = None

    # ---- reporting -------------------------------------------------------------------------
    def _report(self, kind: str, addr: int, detail: str) -> None:
        """Records the first race of each kind per kernel."""
        key = (self._launch.kernel, kind)
        if key in self._seen:
            return
        self._seen.add(key)
        self.races.append(f"{self._launch.kernel}: {kind} at 0x{addr:x}: {detail}")

    # ---- state -----------------------------------------------------------------------------
    def _program(self):
        return tuple(self._builder.grid_idx)

    def _epoch(self, program) -> int:
        return self._launch.epochs.get(program, 0)

    @staticmethod
    def _active(ptrs, mask):
        addrs = np.asarray(ptrs.data).astype(np.uint64, copy=False)
        shape = tuple(addrs.shape)
        flat = addrs.reshape(-1)
        if mask is None:
            pos = np.arange(flat.size)
        else:
            m = np.broadcast_to(np.asarray(mask.data, dtype=bool), addrs.shape).reshape(-1)
            pos = np.nonzero(m)[0]
        return shape, flat, pos

    def _on_load(self, ptrs, mask, atomic=False):
        if self._launch is None:
            return
        shape, flat, pos = self._active(ptrs, mask)
        program = self._program()
        epoch = self._epoch(program)
        everyone = flat.size == 1  # a one-value load is made by every thread
        stores, loads = self._launch.stores, self._launch.loads
        seen_here: dict = {}
        for p, a in zip(pos.tolist(), flat[pos].tolist()):
            w = stores.get(a)
            if w is not None:
                if w.program != program:
                    if not (atomic and w.atomic):
                        self._report("a load of another program's store", a,
                                     f"stored by program {w.program}, loaded by {program}")
                elif w.epoch == epoch and (everyone or w.shape != shape or w.pos != p) and \
                        not (atomic and w.atomic):
                    self._report("a load of another element's store with no barrier between", a,
                                 f"stored by element {w.pos} of a {w.shape} block, loaded by element "
                                 f"{'every' if everyone else p} of a {shape} block, program {program}")
            seen_here[a] = seen_here.get(a, 0) + 1
            r = loads.get(a)
            if r is None:
                loads[a] = _Access(program, epoch, shape, p, atomic, everyone or seen_here[a] > 1)
            elif r.program != program:  # loads by two programs: any store to it races
                r.program, r.atomic = None, r.atomic and atomic
            elif r.epoch != epoch:      # a barrier since this program's last load
                loads[a] = _Access(program, epoch, shape, p, atomic, everyone or seen_here[a] > 1)
            elif r.shape != shape or r.pos != p or everyone:
                r.many = True

    def _on_store(self, ptrs, value, mask, atomic=False):
        if self._launch is None:
            return
        shape, flat, pos = self._active(ptrs, mask)
        program = self._program()
        epoch = self._epoch(program)
        stores, loads = self._launch.stores, self._launch.loads
        vals = None
        if value is not None:
            vals = np.broadcast_to(np.asarray(value.data), shape).reshape(-1)
        first_here: dict = {}
        for p, a in zip(pos.tolist(), flat[pos].tolist()):
            if a in first_here:  # a second element of this store: checked against the first
                q = first_here[a]
                if vals is not None and not atomic and \
                        not (vals[q] == vals[p] or (vals[q] != vals[q] and vals[p] != vals[p])):
                    self._report("one store writing different values to one address", a,
                                 f"elements {q} and {p} of a {shape} block, program {program}")
                continue
            first_here[a] = p
            w = stores.get(a)
            if w is not None and w.program != program and not (atomic and w.atomic):
                self._report("stores of two programs to one address", a,
                             f"programs {w.program} and {program}")
            elif w is not None and w.program == program and w.epoch == epoch and \
                    (w.shape != shape or w.pos != p) and not (atomic and w.atomic):
                self._report("stores of two elements to one address with no barrier between", a,
                             f"elements {w.pos} of {w.shape} and {p} of {shape}, program {program}")
            r = loads.get(a)
            if r is not None and not (atomic and r.atomic):
                if r.program != program:
                    self._report("a store over another program's load", a,
                                 f"loaded by program {r.program or 'several'}, stored by {program}")
                elif r.epoch == epoch and (r.many or r.shape != shape or r.pos != p):
                    self._report("a store over another element's load with no barrier between", a,
                                 f"loaded by element {'several' if r.many else r.pos} of {r.shape}, "
                                 f"stored by element {p} of {shape}, program {program}")
            stores[a] = _Access(program, epoch, shape, p, atomic)

    # ---- patching ----------------------------------------------------------------------------
    def __enter__(self):
        from triton.runtime import interpreter

        self._interpreter = interpreter
        self._builder = b = interpreter.interpreter_builder
        check = self
        orig_load, orig_store = b.create_masked_load, b.create_masked_store
        orig_rmw, orig_cas, orig_barrier = b.create_atomic_rmw, b.create_atomic_cas, b.create_barrier

        def masked_load(ptrs, mask, other, *args, **kwargs):
            check._on_load(ptrs, mask)
            return orig_load(ptrs, mask, other, *args, **kwargs)

        def masked_store(ptrs, value, mask, *args, **kwargs):
            check._on_store(ptrs, value, mask)
            return orig_store(ptrs, value, mask, *args, **kwargs)

        def atomic_rmw(op, ptr, val, mask, *args, **kwargs):
            check._on_load(ptr, mask, atomic=True)
            check._on_store(ptr, None, mask, atomic=True)
            return orig_rmw(op, ptr, val, mask, *args, **kwargs)

        def atomic_cas(ptr, cmp, val, *args, **kwargs):
            check._on_load(ptr, None, atomic=True)
            check._on_store(ptr, None, None, atomic=True)
            return orig_cas(ptr, cmp, val, *args, **kwargs)

        def barrier():
            if check._launch is not None:
                program = check._program()
                check._launch.epochs[program] = check._epoch(program) + 1
            return orig_barrier()

        self._saved = {name: b.__dict__.get(name) for name in
                       ("create_masked_load", "create_masked_store", "create_atomic_rmw",
                        "create_atomic_cas", "create_barrier")}
        b.create_masked_load, b.create_masked_store = masked_load, masked_store
        b.create_atomic_rmw, b.create_atomic_cas, b.create_barrier = atomic_rmw, atomic_cas, barrier

        executor = interpreter.GridExecutor
        self._orig_call = orig_call = executor.__call__

        def call(ex, *args, **kwargs):
            outer = check._launch
            check._launch = _Launch(getattr(ex.fn, "__name__", "?"))
            check.kernels.add(check._launch.kernel)
            try:
                return orig_call(ex, *args, **kwargs)
            finally:
                check._launch = outer

        executor.__call__ = call
        return self

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            if fn is None:
                self._builder.__dict__.pop(name, None)
            else:
                setattr(self._builder, name, fn)
        self._interpreter.GridExecutor.__call__ = self._orig_call
        return False
