#!/usr/bin/env bash
# Runs deel-lip's own test suite (its `keras3` branch) against
# keras_lipschitz.compat.deel_lip, as a user switching from deel-lip would.
#
# Fetches nothing. Give it a deel-lip checkout (or any folder holding
# deel-lip's `tests/`), e.g.
#
#   git clone -b keras3 https://github.com/deel-ai/deel-lip /tmp/deel-lip
#   benchmarks/peers/run_deel_lip_suite.sh /tmp/deel-lip [tensorflow|jax|torch]... \
#       [-- PYTEST_ARGS...]
#
# It copies the tests into a temporary folder next to a two-file shim
# package `deel.lip` that aliases every module of
# keras_lipschitz.compat.deel_lip (`deel.lip.layers`, `deel.lip.losses`,
# ...), runs pytest once per backend (default: tensorflow) and prints the
# passed/failed/error/skipped counts. deel-lip's test helpers import
# TensorFlow whatever the backend, so TensorFlow must be installed.
#
# REFERENCE=1 runs the same tests against deel-lip itself (the checkout's
# `deel/` package, on the TensorFlow backend only as deel-lip requires), in
# the same environment: a test that fails there too fails because of the
# environment (NumPy, Keras or TensorFlow versions), not because of us.
#
# Environment: PYTHON (default: the repository's .venv/bin/python),
# KEEP_LOGS (a folder that receives each backend's pytest log and JUnit XML).
set -euo pipefail
if [ $# -lt 1 ] || [ ! -d "$1/tests" ]; then
  echo "usage: $0 DEEL_LIP_CHECKOUT [tensorflow|jax|torch]... [-- PYTEST_ARGS]" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=$(cd "$1" && pwd)
shift
backends=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  backends+=("$1")
  shift
done
[ $# -gt 0 ] && shift  # "--": the rest goes to pytest.
pytest_args=("$@")
[ ${#backends[@]} -eq 0 ] && backends=(tensorflow)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/deel_lip_suite.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/shim/deel/lip" "$WORK/suite" "$WORK/run"
cp -r "$SRC/tests" "$WORK/suite/tests"

cat >"$WORK/shim/deel/__init__.py" <<'EOF'
EOF
cat >"$WORK/shim/deel/lip/__init__.py" <<'EOF'
"""`deel.lip` -> keras_lipschitz.compat.deel_lip (test shim, not a package)."""
import importlib
import pkgutil
import sys

import keras_lipschitz.compat.deel_lip as _compat

for _info in pkgutil.walk_packages(_compat.__path__, _compat.__name__ + "."):
    if _info.name.rsplit(".", 1)[-1].startswith("_"):
        continue
    _module = importlib.import_module(_info.name)
    sys.modules["deel.lip" + _info.name[len(_compat.__name__):]] = _module
sys.modules["deel.lip"] = _compat
EOF

SHIM="$WORK/shim"
if [ -n "${REFERENCE:-}" ]; then
  [ -d "$SRC/deel/lip" ] || { echo "REFERENCE=1 needs $SRC/deel/lip" >&2; exit 2; }
  SHIM="$SRC"
fi

status=0
for backend in "${backends[@]}"; do
  log="$WORK/run/pytest-$backend.log"
  start=$(date +%s)
  (cd "$WORK/run" && KERAS_BACKEND=$backend TF_CPP_MIN_LOG_LEVEL=3 \
    PYTHONPATH="$SHIM:$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    nice -n 19 "$PYTHON" -m pytest -q -p no:cacheprovider -rfE \
    --junitxml="$WORK/run/junit-$backend.xml" \
    ${pytest_args[@]+"${pytest_args[@]}"} "$WORK/suite/tests") >"$log" 2>&1 \
    || status=1
  end=$(date +%s)
  summary=$( (grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped)' "$log" \
    || true) | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
  echo "== $backend ($((end - start)) s): ${summary:-no summary, see below}"
  grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/   /' || true
  [ -n "$summary" ] || tail -30 "$log"
  if [ -n "${KEEP_LOGS:-}" ]; then
    cp "$log" "$WORK/run/junit-$backend.xml" "$KEEP_LOGS/" 2>/dev/null || true
  fi
done
exit $status
