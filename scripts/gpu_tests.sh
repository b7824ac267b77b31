#!/usr/bin/env bash
# On a GPU machine: install (editable, no deps) and run the test suite with its CUDA tests, one file at a
# time so one slow file cannot hide the others. Logs go to ${OUT:-/tmp}/tests-<file>.log.
set -u
cd "$(dirname "$0")/.."
python -m pip install --no-build-isolation --no-deps -e . >/dev/null 2>&1 || { echo "install failed"; exit 3; }
out=${OUT:-/tmp}
per_file=${PER_FILE_TIMEOUT:-300}
for f in tests/test_*.py; do
  name=$(basename "$f" .py)
  timeout "$per_file" python -m pytest "$f" -q -p no:cacheprovider -x > "$out/$name.log" 2>&1
  echo "$name rc=$? $(tail -1 "$out/$name.log")"
done
