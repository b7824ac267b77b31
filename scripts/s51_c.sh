#!/usr/bin/env bash
# 51st session, third device call (about 300 s): where llama-1b-prefill's int8 forward spends its GPU time
# with q/k/v stacked (per-op CUDA time, the report with each stacking's timing, the output code's launches),
# then bert-base int8 from CUDA graphs (its Q/K/V stacked), as the README's int8 row was timed
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "profile llama-1b-prefill"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 260 $PY scripts/profile_model.py --model llama-1b-prefill \
  --modes inductor,tritonfuse-int8 --code /tmp/code 2>&1 | grep -v "Warn\|warn" > "$OUT/profile.txt"
stamp "bert-base int8, CUDA graphs"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 200 $PY -m tritonfuse bench --models bert-base \
  --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/bert.json" 2>&1 | grep -v Warn >> "$OUT/a.log"
stamp done
