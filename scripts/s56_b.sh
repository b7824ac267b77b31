#!/usr/bin/env bash
# prepared in the 55th session (about 500 s): the models of issues 5 and 7 from CUDA graphs with the 55th
# session's defaults (RoPE tables stored once, K/V unrepeated for SDPA, MultiheadAttention's q/k/v read in
# place), every mode side by side, for the results table. MODELS and MODES override. Run as
# TRITONFUSE_COMMIT=<head> bash scripts/s56_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
for m in ${MODELS:-vit_b_16 bert-base llama-1b-prefill}; do
  stamp "$m"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout -k 5 190 $PY -m tritonfuse bench --models $m \
    --modes ${MODES:-inductor,tritonfuse,tritonfuse-int8} --cuda-graphs --no-progress --out "$OUT/$m.json" 2>&1 \
    | grep -v "Warn\|warn\|^  $m\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
done
stamp done
