"""The Triton kernels have no race a GPU could expose (triton_race_check.py): every op runs in
Triton's interpreter with each global-memory access recorded, and kernels with known races
show that each rule of the checker fires."""
import pytest
import torch

from medmix_ops import _backend

pytestmark = pytest.mark.skipif(not _backend.triton_interpreted() or _backend.triton_error() is not None,
                                reason="needs Triton's interpreter (TRITON_INTERPRET=1, set without a GPU)")

if _backend.triton_interpreted() and _backend.triton_error() is None:
    import triton
    import triton.language as tl

    from triton_race_check import RaceCheck

    @triton.jit
    def _through_scratch_kernel(x_ptr, scratch_ptr, out_ptr, N: tl.constexpr, CASE: tl.constexpr):
        """CASE 0: reversed through scratch with a barrier; 1: without; 2: each element reads
        back its own store (no barrier needed); 3: in place, load then store reversed with no
        barrier (a store over another element's load)."""
        k = tl.arange(0, N)
        if CASE == 3:
            v = tl.load(x_ptr + N - 1 - k)
            tl.store(x_ptr + k, v)
            tl.store(out_ptr + k, v)
        else:
            tl.store(scratch_ptr + k, tl.load(x_ptr + k))
            if CASE == 0:
                tl.debug_barrier()
            if CASE == 2:
                tl.store(out_ptr + k, tl.load(scratch_ptr + k))
            else:
                tl.store(out_ptr + k, tl.load(scratch_ptr + N - 1 - k))

    @triton.jit
    def _between_programs_kernel(buf_ptr, out_ptr, N: tl.constexpr, CASE: tl.constexpr):
        """CASE 0: program 1 loads what program 0 stores; 1: one scalar stored by one thread
        and loaded by every thread without a barrier; 2: one store, two values to one address;
        3: every program counts into shared bins with atomics (no race); 4: two programs store
        to one address."""
        pid = tl.program_id(0)
        k = tl.arange(0, N)
        if CASE == 0:
            if pid == 0:
                tl.store(buf_ptr + k, k.to(tl.float32))
            else:
                tl.store(out_ptr + k, tl.load(buf_ptr + k))
        elif CASE == 1:
            tl.store(buf_ptr + pid * N, tl.sum(k.to(tl.float32), axis=0))
            tl.store(out_ptr + pid * N + k, tl.load(buf_ptr + pid * N) + k)
        elif CASE == 2:
            tl.store(out_ptr + pid * N + k // 2, k.to(tl.float32))
        elif CASE == 3:
            tl.atomic_add(buf_ptr + k % 4, tl.full([N], 1.0, tl.float32))
        else:
            tl.store(out_ptr + k, k.to(tl.float32))

    @triton.jit
    def _nested_scale(v, k):
        return v * (k + 1).to(tl.float32)

    @triton.jit
    def _nested_kernel(x_ptr, out_ptr, N: tl.constexpr):
        k = tl.arange(0, N)
        tl.store(out_ptr + k, _nested_scale(tl.load(x_ptr + k), k))


def _scratch(case):
    n = 16
    x, scratch, out = torch.arange(n, dtype=torch.float32), torch.zeros(n), torch.zeros(n)
    with RaceCheck() as check:
        _through_scratch_kernel[(1,)](x, scratch, out, N=n, CASE=case)
    return check.races, out


def test_a_barrier_orders_a_block_through_global_memory():
    races, out = _scratch(0)
    assert races == []
    assert out.tolist() == list(range(15, -1, -1))  # (the interpreter's answer is right either way)
    races, out = _scratch(2)
    assert races == []


@pytest.mark.parametrize("case, message", [
    (1, "a load of another element's store with no barrier between"),
    (3, "a store over another element's load with no barrier between"),
])
def test_a_missing_barrier_is_a_race(case, message):
    races, out = _scratch(case)
    assert len(races) == 1 and message in races[0] and "_through_scratch_kernel" in races[0], races
    assert out.tolist() == list(range(15, -1, -1))  # the interpreter alone does not see it


@pytest.mark.parametrize("case, message", [
    (0, "a load of another program's store"),
    (1, "a load of another element's store with no barrier between"),
    (2, "one store writing different values to one address"),
    (4, "stores of two programs to one address"),
])
def test_races_between_programs_and_threads(case, message):
    buf, out = torch.zeros(64), torch.zeros(64)
    with RaceCheck() as check:
        _between_programs_kernel[(2,)](buf, out, N=8, CASE=case)
    assert len(check.races) == 1 and message in check.races[0], check.races


def test_atomics_do_not_race_with_each_other():
    buf, out = torch.zeros(64), torch.zeros(64)
    with RaceCheck() as check:
        _between_programs_kernel[(3,)](buf, out, N=8, CASE=3)
    assert check.races == []
    assert buf[:4].tolist() == [6.0] * 4


def test_the_checker_is_removed_afterwards():
    from triton.runtime import interpreter

    before = interpreter.GridExecutor.__call__
    with RaceCheck():
        assert interpreter.GridExecutor.__call__ is not before
    assert interpreter.GridExecutor.__call__ is before
    assert "create_masked_load" not in vars(interpreter.interpreter_builder)


def test_every_triton_kernel_is_race_free():
    """Every Triton kernel, over the paths of helpers.every_op_path."""
    from helpers import every_op_path

    with RaceCheck() as check:
        every_op_path("triton")
    assert check.races == [], "\n".join(check.races)
    assert check.kernels >= {"gaussian_blend_forward_kernel", "gaussian_blend_backward_kernel",
                             "saliency_source_kernel", "saliency_blur_kernel", "saliency_output_kernel",
                             "saliency_finish_kernel", "spectral_residual_kernel",
                             "fine_grained_contrast_kernel", "fine_grained_intensity_kernel",
                             "adm_minmax_kernel", "adm_apply_kernel", "adm_histogram_kernel",
                             "adm_mix_kernel", "patch_pool_kernel", "patch_ratio_kernel"}, check.kernels


def test_the_interpreter_speedup_keeps_nested_calls_and_restores_the_language():
    """conftest installs triton_interpreter_speedup: a nested @triton.jit call inside a launch
    skips re-patching triton.language and still computes; after the launch the language is
    back as it was (and a pinned Triton whose interpreter changed layout is noticed here)."""
    from conftest import CHECK_OVERFLOW
    from triton.runtime import interpreter
    from triton_interpreter_speedup import install

    assert install(check_overflow=CHECK_OVERFLOW), "the interpreter's layout changed: the speed-up is off"
    arange, load = tl.arange, tl.load
    x, out = torch.arange(8, dtype=torch.float32), torch.zeros(8)
    for _ in range(2):
        _nested_kernel[(1,)](x, out, N=8)
        assert out.tolist() == [k * (k + 1.0) for k in range(8)]
        assert tl.arange is arange and tl.load is load
    # (the overflow check stays on only in the opt-in thorough runs)
    assert interpreter.interpreter_builder.options.sanitize_overflow is CHECK_OVERFLOW
