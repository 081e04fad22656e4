# The two commands: `make demo` (main job on the embedded data) and `make test`.
# Both create .venv on first use (deps from requirements-dev.txt at the exact versions of
# constraints-dev.txt), install the package in it,
# build the C++/CUDA extension in place (incremental: ninja keeps build/), and reuse all of it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
PKG_STAMP := $(VENV)/.package-installed
export MAX_JOBS ?= 2
# No GPU here -> Triton runs its kernels in the interpreter (set before triton is imported).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(HAS_GPU),0)
export TRITON_INTERPRET ?= 1
endif
PYTEST_ARGS ?=
# pytest workers of `make test` (pytest-xdist; 0 = one process). Each file stays on one worker in
# its own order (--dist loadfile), and conftest.py splits the cores between the workers.
TEST_WORKERS ?= 2

.PHONY: help venv build demo test test-cuda-asan test-triton-races test-fast cmake bench clean distclean lock

help:
	@echo "make demo    - blend generated images with every backend: table + demo_out/preview.png"
	@echo "make test    - build, run the C++ standalone check and the pytest suite"
	@echo "make test-cuda-asan - the emulated CUDA kernels' tests under AddressSanitizer"
	@echo "make test-triton-races - every interpreted Triton op test under the race detector"
	@echo "make bench   - pytest-benchmark suite (benchmarks/)"
	@echo "make cmake   - build csrc/ with CMake against libtorch (compile_commands.json)"
	@echo "make clean   - remove build products (keeps .venv)"
	@echo "make lock    - rewrite constraints-dev.txt from .venv (after changing requirements-dev.txt)"

$(DEPS_STAMP): requirements-dev.txt constraints-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -r requirements-dev.txt -c constraints-dev.txt
	@touch $@

$(PKG_STAMP): $(DEPS_STAMP) pyproject.toml setup.py
	MEDMIX_NO_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $@

venv: $(PKG_STAMP)

# Always run: ninja makes a no-op rebuild take a few seconds.
build: $(PKG_STAMP)
	@echo "building medmix_ops._C (MAX_JOBS=$(MAX_JOBS)) ..."
	@$(PY) setup.py -q build_ext --inplace > build.log 2>&1 || { tail -n 60 build.log; exit 1; }
	@grep -h "medmix_ops: building" build.log || true

demo: build
	$(VENV)/bin/medmix demo

test: build cmake
	$(PY) -m pytest python_tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The emulated CUDA kernels (python_tests/cuda_emu) built with AddressSanitizer, so that every
# global-memory access they make is checked (what compute-sanitizer's memcheck does on a GPU).
# Opt-in: a second build of the emulation and a slower run.
test-cuda-asan: build
	# (libstdc++ preloaded too: python does not link it, and ASan must find __cxa_throw at start-up)
	MEDMIX_EMU_ASAN=1 ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		$(PY) -m pytest python_tests -k "cuda-emulated or cuda_emulation" $(PYTEST_ARGS)

test-triton-races: build
	MEDMIX_TRITON_RACES=1 TRITON_INTERPRET=1 $(PY) -m pytest python_tests -k "cpu-triton or triton_races" $(PYTEST_ARGS)

test-fast: build
	$(PY) -m pytest python_tests -x -q $(PYTEST_ARGS)

TORCH_ROOT = $(shell $(PY) -c "import torch, os; print(os.path.dirname(torch.__file__))")
TORCH_ABI = $(shell $(PY) -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
cmake: $(PKG_STAMP)
	@cmake -S . -B cmake-build -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
	    -DTORCH_ROOT=$(TORCH_ROOT) -DTORCH_CXX11_ABI=$(TORCH_ABI) -DCMAKE_BUILD_TYPE=Release \
	    > cmake-build.log 2>&1 || { tail -n 40 cmake-build.log; exit 1; }
	@cmake --build cmake-build -j $(MAX_JOBS) >> cmake-build.log 2>&1 || { tail -n 60 cmake-build.log; exit 1; }
	@ln -sf cmake-build/compile_commands.json compile_commands.json
	./cmake-build/medmix_standalone_check

# Results (with machine, commit and date) go to benchmarks/results/<device>-<date>.json.
BENCH_DEVICE = $(shell nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_-' || true)
BENCH_JSON ?= benchmarks/results/$(if $(BENCH_DEVICE),$(BENCH_DEVICE),cpu-$(shell nproc)core)-$(shell date +%Y-%m-%d)-pytest-benchmark.json
bench: build
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-columns=median,iqr,ops \
	    --benchmark-json=$(BENCH_JSON) $(PYTEST_ARGS)
	@echo "results: $(BENCH_JSON)"

clean:
	rm -rf build cmake-build build.log cmake-build.log compile_commands.json medmix_ops/*.so demo_out

distclean: clean
	rm -rf $(VENV)

# The exact versions of .venv, for fresh clones (unpinned dependencies once changed a test's
# result between two clones a day apart).
lock: $(DEPS_STAMP)
	@{ head -n 3 constraints-dev.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i '^medmix'; } > constraints-dev.txt.new
	@mv constraints-dev.txt.new constraints-dev.txt
	@echo "constraints-dev.txt: $$(grep -vc '^#' constraints-dev.txt) pinned packages"
