#!/usr/bin/env bash
# On a GPU machine: install (editable, no deps) and run the test suite with its CUDA tests, one file at a
# time so one slow file cannot hide the others. PARALLEL=1 (for a short device lease): each file of more
# than SHARD_SIZE tests (default 20) is split into shards, and at most JOBS pytest processes (default: half
# the CPUs) run at once, files with more tests first, each with its share of the CPUs for Inductor's compile
# workers (TORCHINDUCTOR_COMPILE_THREADS, unless set). Triton's compiles, not the GPU, bound the long files:
# on 16 cores, every shard of every file at once (60 processes, each with 16 compile workers) left most of
# them short of a 220 s limit having run a few tests each.
# FILES (default tests/test_*.py) picks the files. Logs go to ${OUT:-/tmp}/<file>[.<shard>].log; PER_FILE_TIMEOUT (default 300 s) bounds each file or shard.
set -u
cd "$(dirname "$0")/.."
# the interpreter that has torch (on the GPU machines here: python3, not the first `python`/`pip` on PATH)
PY=${PYTHON:-python3}
$PY -m pip install --no-build-isolation --no-deps -e . >/dev/null 2>&1 || { echo "install failed"; exit 3; }
out=${OUT:-/tmp}
per_file=${PER_FILE_TIMEOUT:-300}
shard_size=${SHARD_SIZE:-20}
cpus=$(nproc 2>/dev/null || echo 4)
jobs=${JOBS:-$(( cpus / 2 > 1 ? cpus / 2 : 1 ))}
run_tests() {  # name, then pytest arguments
  local name=$1
  shift
  timeout "$per_file" $PY -m pytest "$@" -q -p no:cacheprovider -rf > "$out/$name.log" 2>&1
  echo "$name rc=$? $(tail -1 "$out/$name.log")"
}
if [ "${PARALLEL:-0}" != 1 ]; then
  for f in ${FILES:-tests/test_*.py}; do run_tests "$(basename "$f" .py)" "$f"; done
  exit 0
fi
# the jobs, from one collection: one per file, or per shard of a long file (round robin: a file's slow
# tests, often neighbours, spread over its shards); a file with more tests first
mapfile -t queue < <($PY -m pytest ${FILES:-tests/test_*.py} --collect-only -q -p no:cacheprovider 2>/dev/null |
  grep "::" | $PY -c '
import collections, os, sys
files = collections.defaultdict(list)
for line in sys.stdin:
    files[line.split("::")[0]].append(line.strip())
size = int(sys.argv[1])
for f, ids in sorted(files.items(), key=lambda kv: -len(kv[1])):
    name = os.path.basename(f)[:-3]
    shards = max(1, -(-len(ids) // size))
    for i in range(shards):
        print((name if shards == 1 else f"{name}.{i}") + "\t" + "\x1f".join(ids[i::shards] if shards > 1 else [f]))
' "$shard_size")
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(( cpus / jobs > 2 ? cpus / jobs : 2 ))}
running=0
for job in "${queue[@]}"; do
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
  name=${job%%$'\t'*}
  IFS=$'\x1f' read -r -a tests <<< "${job#*$'\t'}"  # (a test id may hold spaces: "[pos + 0-True]")
  run_tests "$name" "${tests[@]}" &
  running=$((running + 1))
done
wait
