#!/usr/bin/env bash
# On a GPU machine: install (editable, no deps) and run the test suite with its CUDA tests, one file at a
# time so one slow file cannot hide the others (PARALLEL=1: all at once, for a short device lease, with each
# file of more than SHARD_SIZE tests (default 20) split into shards run side by side: Triton's compiles,
# not the GPU, bound the long files).
# FILES (default tests/test_*.py) picks the files. Logs go to ${OUT:-/tmp}/<file>[.<shard>].log; PER_FILE_TIMEOUT (default 300 s) bounds each file or shard.
set -u
cd "$(dirname "$0")/.."
# the interpreter that has torch (on the GPU machines here: python3, not the first `python`/`pip` on PATH)
PY=${PYTHON:-python3}
$PY -m pip install --no-build-isolation --no-deps -e . >/dev/null 2>&1 || { echo "install failed"; exit 3; }
out=${OUT:-/tmp}
per_file=${PER_FILE_TIMEOUT:-300}
shard_size=${SHARD_SIZE:-20}
run_tests() {  # name, then pytest arguments
  local name=$1
  shift
  timeout "$per_file" $PY -m pytest "$@" -q -p no:cacheprovider -rf > "$out/$name.log" 2>&1
  echo "$name rc=$? $(tail -1 "$out/$name.log")"
}
run_file() {
  local f=$1 name ids n shards i
  name=$(basename "$f" .py)
  if [ "${PARALLEL:-0}" != 1 ]; then run_tests "$name" "$f"; return; fi
  mapfile -t ids < <($PY -m pytest "$f" --collect-only -q -p no:cacheprovider 2>/dev/null | grep "::")
  n=${#ids[@]}
  shards=$(( (n + shard_size - 1) / shard_size ))
  if [ "$shards" -le 1 ]; then run_tests "$name" "$f"; return; fi
  for ((i = 0; i < shards; i++)); do
    # round robin: a file's slow tests (often neighbours) spread over the shards
    local part=()
    for ((j = i; j < n; j += shards)); do part+=("${ids[j]}"); done
    run_tests "$name.$i" "${part[@]}" &
  done
  wait
}
for f in ${FILES:-tests/test_*.py}; do
  if [ "${PARALLEL:-0}" = 1 ]; then run_file "$f" & else run_file "$f"; fi
done
wait
