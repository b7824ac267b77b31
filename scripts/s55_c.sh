#!/usr/bin/env bash
# 55th session (about 200 s): the same-run A/B of SDPA given K/V unrepeated (enable_gqa) on llama-1b-prefill
# int8 from CUDA graphs, again: s55_b.sh's runs had pass_ab.py's wrapper of attention._sdpa_causal (now
# _sdpa_without_mask) take one argument, so every attention site fell back with a TypeError (counted in the
# report) and kept its mask
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
for s in on off; do
  stamp "llama-1b-prefill attention.SDPA_GQA $s"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout $([ $s = on ] && echo 130 || echo 90) $PY scripts/pass_ab.py \
    attention.SDPA_GQA attention._sdpa_without_mask $s bench --models llama-1b-prefill --modes ${MODES:-inductor,tritonfuse-int8} \
    --cuda-graphs --no-progress --out "$OUT/llama-1b-prefill-$s.json" 2>&1 \
    | grep -v "Warn\|warn\|^  llama\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
  grep -o '"attention: [^"]*": [0-9]*' "$OUT/llama-1b-prefill-$s.json" | sort | uniq -c >> "$OUT/a.log"
done
stamp done
