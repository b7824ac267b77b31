#!/usr/bin/env bash
# 51st session, second device call (about 560 s):
#   1. the GPU tests of this session's changes: the causal_padded op's first-kept-key reduction (torch 2.11's
#      codegen failed on the where/amin form inlined), the constant-mask tests with CUDA's mask form, and
#      the int8 sibling stacking (q/k/v as one W8A8 GEMM)
#   2. llama-1b-prefill from CUDA graphs, Inductor against tritonfuse-int8 (k and v stacked with q), then
#      bert-base int8 (Q/K/V stacked) as the README's rows time it (no graphs)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp tests
timeout -s INT 170 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py tests/test_linear_act.py \
  -k "constant_mask or causal_padded or finite_fill or sibling_linears or share_one_quantization" 2>&1 \
  | grep -v "^DEBUG" | tail -60 >> "$OUT/a.log"
stamp "llama-1b-prefill int8, CUDA graphs"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 230 $PY -m tritonfuse bench --models llama-1b-prefill \
  --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/graphs/" 2>&1 \
  | grep -v Warn >> "$OUT/a.log"
stamp "bert-base int8"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 150 $PY -m tritonfuse bench --models bert-base \
  --modes inductor,tritonfuse-int8 --no-progress --out "$OUT/plain/" 2>&1 | grep -v Warn >> "$OUT/a.log"
stamp done
