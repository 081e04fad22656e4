#!/usr/bin/env bash
# One GPU session in three long commands, each under the device tool's 10-minute limit:
#
#   bash benchmarks/gpu_session.sh build   # versions, nvidia-smi, pip install -e . (CUDA kernels)
#   bash benchmarks/gpu_session.sh test    # GPU tests first, then the rest of the suite
#   bash benchmarks/gpu_session.sh bench   # medmix bench --device cuda --save (+ plot), make bench
#
# Everything it writes goes to $OUT (the device tool's return folder; default gpu_session_out/):
# logs, junit XML, the results JSON / PNG, so a session that runs out of time still brings back
# what finished. Runs against the machine's preinstalled torch (no network there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_session_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
STAGE_LIMIT_S=${STAGE_LIMIT_S:-570}  # a stage stops itself before the tool's 600 s limit

case "${1:-}" in
build)
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  $PY - > "$OUT/versions.txt" 2>&1 <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton missing")
for name in ("timm", "numpy", "kornia", "cv2", "mixup"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:  # noqa: BLE001 - a report, not a check
        print(name, "missing:", type(e).__name__)
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
EOF
  # Only this GPU's architecture: half the nvcc time of the default 8.0;9.0.
  arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  start=$(date +%s)
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-$(nproc)} MEDMIX_CUDA=1 \
    timeout "$STAGE_LIMIT_S" $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
  rc=$?
  echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
  $PY -c "import torch, medmix_ops; print(torch._C._dispatch_dump('medmix::gaussian_blend'))" \
    > "$OUT/dispatch.txt" 2>&1
  tail -n 5 "$OUT/build.log"
  exit $rc
  ;;
test)
  # The GPU cases first (their ids hold "cuda"), so a time limit cuts CPU tests, not GPU ones.
  # SIGINT at the limit: pytest still prints its summary and writes the junit XML.
  # Every GPU-only test's id matches this (python_tests/test_bench.py checks that it does).
  GPU_TESTS="cuda or beyond_int32 or mismatched_devices or never_sync or without_a_sync or labels_on_a_gpu"
  start=$(date +%s)
  timeout -s INT -k 30 $(( STAGE_LIMIT_S * 2 / 3 )) $PY -m pytest python_tests -q -p no:cacheprovider -rfE \
    -k "$GPU_TESTS" --junitxml="$OUT/junit-gpu.xml" > "$OUT/pytest-gpu.log" 2>&1
  echo "gpu tests rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest-gpu.log"
  left=$(( STAGE_LIMIT_S - 40 - ($(date +%s) - start) ))
  if [ "$left" -gt 30 ]; then
    timeout -s INT -k 30 "$left" $PY -m pytest python_tests -q -p no:cacheprovider -rfE \
      -k "not ($GPU_TESTS)" --junitxml="$OUT/junit-rest.xml" > "$OUT/pytest-rest.log" 2>&1
    echo "other tests rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest-rest.log"
  else
    echo "no time left for the other tests" | tee "$OUT/pytest-rest.log"
  fi
  tail -n 3 "$OUT/pytest-gpu.log" "$OUT/pytest-rest.log"
  ;;
bench)
  start=$(date +%s)
  touch "$OUT/.bench-start"
  # The copy of the tree on the device machine may lack .git: pass MEDMIX_COMMIT=<sha> so the
  # JSON records the commit measured.
  timeout $(( STAGE_LIMIT_S * 3 / 4 )) $PY -m medmix_ops.cli bench --device cuda --save \
    --plot "$OUT/bench.png" > "$OUT/bench.log" 2>&1
  echo "bench rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.log"
  find benchmarks/results -name '*.json' -newer "$OUT/.bench-start" -exec cp {} "$OUT/" \;
  left=$(( STAGE_LIMIT_S - 40 - ($(date +%s) - start) ))
  if [ "$left" -gt 60 ]; then
    timeout "$left" $PY -m pytest benchmarks -q -p no:cacheprovider --benchmark-only --benchmark-json="$OUT/pytest-benchmark.json" \
      > "$OUT/pytest-benchmark.log" 2>&1
    echo "pytest-benchmark rc=$?" | tee -a "$OUT/pytest-benchmark.log"
  fi
  tail -n 40 "$OUT/bench.log"
  ;;
*)
  echo "usage: $0 build|test|bench  (writes to \$OUT, default gpu_session_out/)" >&2
  exit 2
  ;;
esac
