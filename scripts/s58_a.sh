#!/usr/bin/env bash
# prepared in the 57th session (about 300 s): the group handoff of an MLP's hidden activation in int8
# (kernels.int8.int8_linear_group_out / _in, not yet served by a pattern) timed against int8 mode's served
# pair and cuBLAS at bert-base's, vit_b_16's and a wider MLP; then its GPU tests and the sibling-module tests
# in parallel, each killed 5 s after its limit. Run as TRITONFUSE_COMMIT=<head> bash scripts/s58_a.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "group handoff probe"
timeout -k 5 240 $PY scripts/group_handoff_probe.py >> "$OUT/a.log" 2>&1
echo "probe rc=$?" >> "$OUT/a.log"
stamp "GPU tests"
t() {  # log name, limit, pytest arguments
  local name=$1 limit=$2
  shift 2
  timeout -k 5 "$limit" $PY -m pytest -q -p no:cacheprovider -rf --tb=short "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(tail -1 "$OUT/$name.log")" >> "$OUT/a.log"
}
t int8 150 tests/test_int8.py -k "group_handoff" &
t linear_act 150 tests/test_linear_act.py -k "stack_within_one_module or kept_for_its_sites_own_rows" &
wait
stamp done
