#!/usr/bin/env bash
# 51st session, fourth device call (about 450 s): int8 sibling stacking on and off, each against Inductor in
# its own run, from CUDA graphs: bert-base (Q/K/V stacked: was its 6.74 against the README's 6.07 the
# stacking's columns read back at other strides?), then llama-1b-prefill (q with k and v)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
for m in bert-base llama-1b-prefill; do
  for s in on off; do
    stamp "$m int8 siblings $s"
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 140 $PY scripts/siblings_ab.py $s bench --models $m \
      --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/$m-$s.json" 2>&1 \
      | grep -v "Warn\|warn\|^  llama\|^  bert\|^left to\|^ms: the\|^$" >> "$OUT/a.log"
  done
done
stamp done
