#!/usr/bin/env bash
# On a GPU machine: install (editable, no deps) and run the test suite with its CUDA tests, one file at a
# time so one slow file cannot hide the others (PARALLEL=1: all files at once, for a short device lease).
# Logs go to ${OUT:-/tmp}/<file>.log; PER_FILE_TIMEOUT (default 300 s) bounds each file.
set -u
cd "$(dirname "$0")/.."
# the interpreter that has torch (on the GPU machines here: python3, not the first `python`/`pip` on PATH)
PY=${PYTHON:-python3}
$PY -m pip install --no-build-isolation --no-deps -e . >/dev/null 2>&1 || { echo "install failed"; exit 3; }
out=${OUT:-/tmp}
per_file=${PER_FILE_TIMEOUT:-300}
run_file() {
  local f=$1 name
  name=$(basename "$f" .py)
  timeout "$per_file" $PY -m pytest "$f" -q -p no:cacheprovider -rf > "$out/$name.log" 2>&1
  echo "$name rc=$? $(tail -1 "$out/$name.log")"
}
for f in tests/test_*.py; do
  if [ "${PARALLEL:-0}" = 1 ]; then run_file "$f" & else run_file "$f"; fi
done
wait
