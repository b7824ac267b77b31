#!/usr/bin/env bash
# prepared in the 50th session for the next device call (about 560 s):
#   1. the attention tests whose expectations were fixed for CUDA's mask form (HF's decoder mask is additive
#      with a finite fill there: 9e9479e), the sliding-window and compile-time-constant tests (never on a GPU)
#   2. llama-1b-prefill from CUDA graphs, float and int8: issue 7's 22 ms target was 24.41 there (H200, before
#      the exactly-causal mask); without graphs its int8 op calls pay host time (64 sites lost 3-4x in s50_b)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp tests
timeout -s INT 150 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py \
  -k "packed_sequences or without_cache or sliding_window or constant_mask or inf_additive" 2>&1 \
  | grep -v "^DEBUG" >> "$OUT/a.log"
stamp "llama-1b-prefill, CUDA graphs"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 330 $PY -m tritonfuse bench --models llama-1b-prefill \
  --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/" 2>&1 \
  | grep -v Warn >> "$OUT/a.log"
stamp done
