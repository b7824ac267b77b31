#!/usr/bin/env bash
# Without a GPU: run the CPU test suite in the Triton interpreter recording every kernel launch, then compile
# each distinct variant for Hopper (sm_90) with the GPU machine's Triton (TRITON_VERSION, default 3.6.0,
# installed once beside the tritonfuse cache). Catches what the interpreter lets through and the compiler does
# not (scripts/compile_sm90.py says what). TESTS picks the test files or node ids (default: tests).
#   bash scripts/check_sm90.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
version=${TRITON_VERSION:-3.6.0}
dir=${XDG_CACHE_HOME:-$HOME/.cache}/tritonfuse/triton-$version
if [ ! -d "$dir/triton" ]; then
  $PY -m pip install --quiet --no-deps --target "$dir" "triton==$version" || { echo "could not install triton $version"; exit 3; }
fi
rec=$(mktemp --suffix=.jsonl)
# shellcheck disable=SC2086
TRITON_INTERPRET=1 TRITONFUSE_RECORD_LAUNCHES=$rec $PY -m pytest ${TESTS:-tests} -q -p no:cacheprovider | tail -3
echo "$(wc -l < "$rec") distinct launches recorded in $rec"
PYTHONPATH=$dir $PY scripts/compile_sm90.py "$rec"
