#!/usr/bin/env bash
# the 50th session's second device call: HF's no-cache decoder mask (llama-1b-prefill's bench, training
# steps) is now exactly causal (its packed-sequence test computed at compile time, 5be2337): the kernels get
# the causal flag and no mask, and a site left to SDPA gets is_causal without the mask.
#   1. the GPU tests of those paths (the llama forms, the SDPA re-dispatch, training)
#   2. llama-1b-prefill inference (float and int8) and train step against Inductor, measured choices
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp tests
timeout -s INT 150 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py \
  -k "llama or left_to_sdpa or without_cache" >> "$OUT/a.log" 2>&1
stamp "llama-1b-prefill inference"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 220 $PY -m tritonfuse bench --models llama-1b-prefill \
  --modes inductor,tritonfuse,tritonfuse-int8 --no-progress --out "$OUT/" 2>&1 | grep -v Warn >> "$OUT/a.log"
mkdir -p "$OUT/train"
stamp "llama-1b-prefill train step"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 150 $PY -m tritonfuse bench --train --models llama-1b-prefill \
  --modes inductor,tritonfuse --no-progress --out "$OUT/train/" 2>&1 | grep -v Warn >> "$OUT/a.log"
stamp done
