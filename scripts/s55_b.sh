#!/usr/bin/env bash
# 55th session (about 450 s): the same-run A/Bs from CUDA graphs of SDPA given K/V unrepeated (enable_gqa) on
# llama-1b-prefill (the 55th session's output code had HF's repeat_kv as two kernels a layer, 19 and 19 us) and
# of strided_inputs_pass on vit_b_16 (MultiheadAttention's q/k/v read without their copy), then the GPU tests
# of both. MODES sets the bench modes (llama's "on" also runs tritonfuse in floating point)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
ab() {  # ab SWITCH PASS MODEL SETTING SECONDS [MODES]
  stamp "$3 $1 $4"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout $5 $PY scripts/pass_ab.py $1 $2 $4 bench --models $3 \
    --modes ${6:-${MODES:-inductor,tritonfuse-int8}} --cuda-graphs --no-progress --out "$OUT/$3-$4.json" 2>&1 \
    | grep -v "Warn\|warn\|^  llama\|^  vit\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
}
ab attention.SDPA_GQA attention._sdpa_without_mask llama-1b-prefill on 160 inductor,tritonfuse,tritonfuse-int8
ab attention.SDPA_GQA attention._sdpa_without_mask llama-1b-prefill off 90
ab attention.STRIDED_INPUTS attention.strided_inputs_pass vit_b_16 on 100
ab attention.STRIDED_INPUTS attention.strided_inputs_pass vit_b_16 off 75
stamp "tests: SDPA's causal flag with GQA, packed q/k/v read in place, ViT, the CUDA attention counts"
timeout -s INT 90 $PY -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_attention.py \
  -k "causal_mask_left_to_sdpa or packed_qkv or compose_strides or vit_multihead or cuda_" 2>&1 \
  | grep -E "^E |passed|failed|FAILED" | cut -c1-300 >> "$OUT/a.log"
stamp done
