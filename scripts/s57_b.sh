#!/usr/bin/env bash
# prepared in the 56th session (about 400 s): floating-point sibling Linears as one cuBLAS GEMM
# (patterns.linear_act.FLOAT_SIBLINGS) on and off, each in its own process with fresh compiles (the switch keys
# Inductor's cache anyway), bert-base and llama-1b-prefill from CUDA graphs beside Inductor. MODELS overrides.
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s57_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
for m in ${MODELS:-bert-base llama-1b-prefill}; do
  for s in on off; do
    stamp "$m, FLOAT_SIBLINGS $s"
    timeout -k 5 190 $PY scripts/pass_ab.py linear_act.FLOAT_SIBLINGS linear_act.float_siblings_pass $s bench \
      --models $m --modes inductor,tritonfuse --cuda-graphs --no-progress --out "$OUT/$m-siblings-$s.json" 2>&1 \
      | grep -v "Warn\|warn\|^  $m\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
  done
done
stamp done
