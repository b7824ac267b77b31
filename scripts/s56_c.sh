#!/usr/bin/env bash
# 56th session (about 350 s on a warm machine): llama-1b-prefill int8 from CUDA graphs, fresh compiles (Inductor's
# FX and autograd caches off), with the 55th session's defaults and with attention.STRIDED_INPUTS off, to find
# what cost the session's first llama run 4 ms against the 55th session's 21.30 (H100). Run as
# TRITONFUSE_COMMIT=<head> bash scripts/s56_c.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
for s in on off; do
  stamp "llama-1b-prefill int8, STRIDED_INPUTS $s"
  timeout -k 5 170 $PY scripts/pass_ab.py attention.STRIDED_INPUTS attention.strided_inputs_pass $s bench \
    --models llama-1b-prefill --modes ${MODES:-tritonfuse-int8} --cuda-graphs --no-progress \
    --out "$OUT/llama-strided-$s.json" 2>&1 | grep -v "Warn\|warn\|^  llama\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
done
stamp done
