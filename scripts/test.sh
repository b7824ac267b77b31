#!/usr/bin/env bash
# The test suite. Without a GPU, Triton kernels run through the interpreter and CUDA tests are skipped, and
# the files run in TEST_WORKERS pytest-xdist workers (default 2, one per core of the CI machine: 10.4 min
# there against 16.6 serially); on a GPU they run in one process (scripts/gpu_tests.sh is the GPU route).
set -euo pipefail
cd "$(dirname "$0")/.."
workers=()
if ! .venv/bin/python -c "import torch; raise SystemExit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
  if .venv/bin/python -c "import xdist" >/dev/null 2>&1 && [ "${TEST_WORKERS:-2}" -gt 1 ]; then
    workers=(-n "${TEST_WORKERS:-2}")
  fi
fi
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider ${workers[@]+"${workers[@]}"} "$@"
