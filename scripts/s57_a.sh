#!/usr/bin/env bash
# prepared in the 56th session (about 300 s): the GPU tests not yet run on a GPU, each file in its own pytest
# in parallel, killed 5 s after its limit (56th session: SIGINT alone left a pytest waiting in a compile): the
# 55th session's attention tests (mask-free GQA sites left to SDPA, autocast, the timing's SDPA side, RoPE
# tables), the gate-only bias, the choice store's code key and the float sibling stacks. Then s57_b.sh. Run as
# TRITONFUSE_COMMIT=<head> bash scripts/s57_a.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
t() {  # log name, limit, pytest arguments
  local name=$1 limit=$2
  shift 2
  timeout -k 5 "$limit" $PY -m pytest -q -p no:cacheprovider -rf --tb=short "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(tail -1 "$OUT/$name.log")" >> "$OUT/a.log"
}
t attention 280 tests/test_attention.py -k "without_mask_left or unrepeated_kv or timed_against or rope_tables" &
t int8 200 tests/test_int8.py -k "one_bias_alone or tma_and_pointer" &
t linear_act 200 tests/test_linear_act.py -k "recalled_only or near_tie or float_sibling" &
wait
stamp done
