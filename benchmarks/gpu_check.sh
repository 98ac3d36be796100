#!/usr/bin/env bash
# GPU check: one command, run on a machine with a GPU, that
#   1. runs a fast subset of the test suite on each backend,
#   2. runs the MNIST epoch ratio (both paddings), the SOC training step and
#      the ℓ∞ throughput benchmarks,
#   3. writes a markdown table (default benchmarks/gpu_check.md) to paste
#      into benchmarks/RESULTS.md.
#
# Usage: bash benchmarks/gpu_check.sh [OUTPUT.md] [BACKENDS]
#   BACKENDS: comma-separated, default tensorflow,jax,torch.
# Environment: PYTHON (default: python), GPU_CHECK_QUICK=1 for short
# benchmark runs (--quick), GPU_CHECK_TIMEOUT seconds per step (default 900),
# GPU_CHECK_TESTS to replace the test files run.
#
# Install the GPU builds first (README, "GPU"): pip install -e ".[gpu-jax]"
# or ".[gpu-tensorflow]", and torch's CUDA wheel from download.pytorch.org.
# Every step runs even when an earlier one fails; the table says which
# failed and the exit code is non-zero if any did.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-benchmarks/gpu_check.md}
BACKENDS=${2:-tensorflow,jax,torch}
PY=${PYTHON:-python}
TIMEOUT=${GPU_CHECK_TIMEOUT:-900}
QUICK=()
[ "${GPU_CHECK_QUICK:-0}" = "1" ] && QUICK=(--quick)
LOGS=$(mktemp -d)
export TF_CPP_MIN_LOG_LEVEL=2
# Fast, device-relevant tests: layers, kernels dispatch, losses, certificates.
# GPU_CHECK_TESTS (space-separated paths) replaces the list.
TESTS=(tests/test_gpu_dispatch.py tests/test_dense.py tests/test_conv.py
       tests/test_activations.py tests/test_pooling.py tests/test_linf.py
       tests/test_soc.py tests/test_aol_sll.py tests/test_losses.py
       tests/test_certification.py)
[ -n "${GPU_CHECK_TESTS:-}" ] && read -r -a TESTS <<< "$GPU_CHECK_TESTS"

status=0
rows=()
step() {  # step NAME LOGFILE COMMAND...
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  if timeout "$TIMEOUT" "$@" > "$log" 2>&1; then
    rows+=("| $name | ok | $((SECONDS - t0)) s | $(tail -n 1 "$log" | tr '|' '/' | cut -c1-120) |")
  else
    status=1
    rows+=("| $name | **failed** | $((SECONDS - t0)) s | see $log |")
  fi
}

{
  echo "# GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || echo 'nvidia-smi not found')"
  echo "- packages: $($PY -m pip list 2>/dev/null | grep -iE '^(keras|jax|jaxlib|tensorflow|torch) ' | awk '{print $1" "$2}' | paste -sd, -)"
} > "$OUT.head"

IFS=, read -r -a BACKEND_LIST <<< "$BACKENDS"
for b in "${BACKEND_LIST[@]}"; do
  # Which device each backend sees (a CPU build on a GPU machine is the
  # most common installation mistake).
  step "$b: device" "$LOGS/device-$b.log" env KERAS_BACKEND=$b "$PY" -c '
import keras
b = keras.config.backend()
if b == "jax":
    import jax; d = jax.devices()
elif b == "tensorflow":
    import tensorflow as tf; d = tf.config.list_logical_devices("GPU")
else:
    import torch; d = [torch.cuda.get_device_name(0)] if torch.cuda.is_available() else []
print(f"{b}: {d}")
raise SystemExit(0 if d and "cpu" not in str(d).lower() else "no GPU visible")'
  step "$b: tests (subset)" "$LOGS/tests-$b.log" \
    env KERAS_BACKEND=$b "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
done
step "MNIST epoch ratio" "$LOGS/mnist.log" "$PY" benchmarks/mnist_deel_tutorial.py \
  --backends "$BACKENDS" --padding both --repeats 3 "${QUICK[@]}" \
  --raw-json "$LOGS/mnist.json"
step "SOC step" "$LOGS/soc.log" "$PY" benchmarks/soc_step.py --backends "$BACKENDS" "${QUICK[@]}"
step "l-inf vs Dense" "$LOGS/linf.log" "$PY" benchmarks/linf_throughput.py \
  --backends "$BACKENDS" --vs-dense --repeats 5
step "l-inf 5120 memory" "$LOGS/linf_mem.log" "$PY" benchmarks/linf_throughput.py \
  --backends "$BACKENDS" --full-memory

{
  cat "$OUT.head"
  echo
  echo "| step | status | time | last line |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  for name in mnist soc linf linf_mem; do
    echo
    echo "## $name"
    echo
    # The benchmarks print their own markdown tables: keep those lines.
    grep -E '^\|' "$LOGS/$name.log" || echo "(no table; see $LOGS/$name.log)"
  done
} > "$OUT"
rm -f "$OUT.head"
echo "wrote $OUT (logs in $LOGS)"
exit $status
