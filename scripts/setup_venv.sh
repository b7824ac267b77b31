#!/usr/bin/env bash
# Creates .venv with torch, torchvision, transformers, pytest (with xdist) and tritonfuse (editable). Idempotent.
# On a machine without a GPU the torch==2.14.1 build runs on the CPU and brings triton 3.8, whose
# interpreter (TRITON_INTERPRET=1) runs tritonfuse's kernels there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, triton" >/dev/null 2>&1; then
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/pip install -q "transformers>=4.45" pytest pytest-xdist "numpy<3"
.venv/bin/pip install -q --no-deps -e .
