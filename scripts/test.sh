#!/usr/bin/env bash
# The test suite. Without a GPU, Triton kernels run through the interpreter and CUDA tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import torch; raise SystemExit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
fi
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
