#!/usr/bin/env bash
# 54th session: strided_inputs_pass's same-run A/B on vit_b_16 from CUDA graphs (MultiheadAttention's copy of
# its packed q/k/v, with the in-projection's bias add Inductor fused into it: three kernels a layer, about 11 us
# each on the H200), the GPU tests, and with LLAMA_CODE=1 llama-1b-prefill int8's output code (its 48 pointwise
# kernels around attention). SETTINGS="on" runs the "on" side alone, SETTINGS="" neither; TESTS=0 skips the tests
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
for s in ${SETTINGS-on off}; do
  stamp "vit_b_16 strided inputs $s"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout $([ $s = on ] && echo 160 || echo 120) $PY scripts/pass_ab.py attention.STRIDED_INPUTS \
    attention.strided_inputs_pass $s bench --models vit_b_16 \
    --modes ${MODES:-inductor,tritonfuse,tritonfuse-int8} --cuda-graphs --no-progress --out "$OUT/vit_b_16-$s.json" 2>&1 \
    | grep -v "Warn\|warn\|^  vit\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
done
[ "${TESTS:-1}" = 1 ] && stamp "tests: packed q/k/v read in place, ViT, the CUDA attention counts" && timeout -s INT 90 $PY -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_attention.py \
  -k "packed_qkv or compose_strides or vit_multihead or cuda_" 2>&1 | grep -E "^E |passed|failed|FAILED" | cut -c1-300 >> "$OUT/a.log"
[ "${LLAMA_CODE:-0}" = 1 ] && stamp "llama-1b-prefill int8 output code" && TRITONFUSE_CUDA_GRAPHS=1 TRITONFUSE_MEASURE_BUDGET_S=inf timeout 100 $PY scripts/profile_model.py \
  --model llama-1b-prefill --modes tritonfuse-int8 --code "$OUT/code-llama" 2>&1 | grep -v "Warn\|warn" \
  > "$OUT/profile-llama.txt"
stamp done
