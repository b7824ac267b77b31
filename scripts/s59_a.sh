#!/usr/bin/env bash
# prepared in the 58th session (about 520 s): the GPU tests of the 58th session's CPU work (ViT's transposed
# residual operand read in place, the siblings' stacked bias kept), then vit_b_16 with every supported norm
# site taken untimed (scripts/force_norm_bench.py) against the bench as it decides, both from CUDA graphs with
# fresh compiles: whether our norm kernel (int8 rows out, the residual stream written once) beats Inductor's
# 46-48 us LayerNorm + quantization kernels in the whole model (the site alone measures a tie). Then bert-base
# int8 (its stacked biases no longer cast and concatenated each call: 0.11 ms of GPU time a forward).
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s59_a.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 110 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_norm_residual.py \
  tests/test_linear_act.py -k "transposed_operand or non_contiguous or int8_sibling_linears_stacked" \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
run() {  # name, limit, command...
  local name=$1 limit=$2
  shift 2
  stamp "$name"
  TRITONFUSE_LOG=summary timeout -k 5 "$limit" "$@" --cuda-graphs --no-progress --out "$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" >> "$OUT/a.log"
  grep "^model \|^vit_b_16 \|^bert-base " "$OUT/$name.log" >> "$OUT/a.log"
}
run vit-forced-norms 190 $PY scripts/force_norm_bench.py --models vit_b_16 --modes inductor,tritonfuse,tritonfuse-int8
run vit-decided 150 $PY -m tritonfuse bench --models vit_b_16 --modes tritonfuse,tritonfuse-int8
run bert-int8 130 $PY -m tritonfuse bench --models bert-base --modes inductor,tritonfuse-int8
stamp done
