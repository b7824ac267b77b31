#!/usr/bin/env bash
# prepared in the 51st session for the next device call (about 560 s): where llama-1b-prefill's int8 forward
# spends its GPU time with the sites chosen as they are from CUDA graphs (TRITONFUSE_CUDA_GRAPHS=1: the
# choices of the bench's --cuda-graphs rows, 22.61 ms against issue 7's 22): per-kernel CUDA time, the
# report with each site's timing, the output code's launches; then vit_b_16 (float and int8) from CUDA
# graphs against Inductor (its int8 row is from 72f4cb5, 5.29 against issue 7's 4.4), and
# llama-1b-decode without graphs (its int8 row, 5.20 against Inductor's 4.66, is host-bound: a step's q, k
# and v now one weight-only launch, 658970b). First the sibling tests on the GPU (the autocast case, 3b2e07a)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "sibling stacking tests (52nd session: under autocast)"
timeout -s INT 70 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_linear_act.py -k "sibling" 2>&1 \
  | grep -v "^DEBUG" | tail -8 >> "$OUT/a.log"
stamp "profile llama-1b-prefill, graph-mode choices"
TRITONFUSE_CUDA_GRAPHS=1 TRITONFUSE_MEASURE_BUDGET_S=inf timeout 220 $PY scripts/profile_model.py \
  --model llama-1b-prefill --modes inductor,tritonfuse-int8 --code /tmp/code 2>&1 | grep -v "Warn\|warn" > "$OUT/profile.txt"
stamp "vit_b_16 int8, CUDA graphs"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 140 $PY -m tritonfuse bench --models vit_b_16 \
  --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/" 2>&1 | grep -v Warn >> "$OUT/a.log"
stamp "llama-1b-decode"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 130 $PY -m tritonfuse bench --models llama-1b-decode \
  --modes inductor,tritonfuse,tritonfuse-int8 --no-progress --out "$OUT/" 2>&1 | grep -v Warn >> "$OUT/a.log"
stamp done
