#!/usr/bin/env bash
# Creates the peer libraries' virtual environments used by
# benchmarks/run_all.py (benchmarks/peers/*.py), at the repository root:
#
#   .venv-deel-lip  : deel-lip 1.5.0 on tensorflow-cpu 2.15 (deel-lip needs
#                     TensorFlow < 2.16, i.e. Keras 2; Python 3.9-3.11)
#   .venv-torchlip  : deel-torchlip on torch 2.13.0 (CPU build)
#   .venv-orthogonium : orthogonium on torch 2.13.0 (CPU build), for
#                     benchmarks/layer_families.py --orthogonium-python
#
# Both are git-ignored. torch is installed FIRST and pinned: an unpinned
# torch pulled in by deel-torchlip would download the CUDA build (GBs).
#
# Usage: benchmarks/setup_peers.sh [deel_lip|torchlip|orthogonium]...
#        (default: deel_lip and torchlip)
#        PYTHON=python3.11 benchmarks/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# The CPU wheel index; harmless when a local wheel or mirror provides torch.
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(deel_lip torchlip)

for target in "${targets[@]}"; do
  case "$target" in
    deel_lip)
      "$PYTHON" -m venv .venv-deel-lip
      .venv-deel-lip/bin/pip install -q "tensorflow-cpu==2.15.*" "deel-lip==1.5.0"
      .venv-deel-lip/bin/python -c "import deel.lip, tensorflow as tf; print('deel-lip', deel.lip.__version__, 'tf', tf.__version__)"
      ;;
    torchlip)
      "$PYTHON" -m venv .venv-torchlip
      .venv-torchlip/bin/pip install -q "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX"
      .venv-torchlip/bin/pip install -q deel-torchlip "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX"
      .venv-torchlip/bin/python -c "import torch, deel.torchlip; from importlib.metadata import version; print('deel-torchlip', version('deel-torchlip'), 'torch', torch.__version__)"
      ;;
    orthogonium)
      "$PYTHON" -m venv .venv-orthogonium
      .venv-orthogonium/bin/pip install -q "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX"
      .venv-orthogonium/bin/pip install -q orthogonium "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX"
      .venv-orthogonium/bin/python -c "import torch, orthogonium; from importlib.metadata import version; print('orthogonium', version('orthogonium'), 'torch', torch.__version__)"
      ;;
    *)
      echo "unknown peer: $target (expected deel_lip, torchlip or orthogonium)" >&2
      exit 2
      ;;
  esac
done
