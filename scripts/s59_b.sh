#!/usr/bin/env bash
# 59th session (about 500 s): the norm kernel reading a residual laid out with two row strides in place
# (3afcfba): its GPU tests, the vit_b_16 sites' measure records (scripts/norm_site_layouts.py), then
# vit_b_16 as the bench decides, from CUDA graphs with fresh compiles, against Inductor in the same run
# (forced norms in s59_a: 4.962 ms float, 4.363 int8; decided 5.373, 4.808). Then bert-base with every norm
# site forced (each measured 1.08x a same-bytes pass at s59_a, all 25 left to Inductor; 6.57 ms float, 5.94
# int8 as decided): whether the stand-in under-prices Inductor's norms there as it did at ViT's.
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s59_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 90 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_norm_residual.py \
  -k "transposed_operand or non_contiguous" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "layouts"
timeout -k 5 80 $PY scripts/norm_site_layouts.py > "$OUT/layouts.log" 2>&1
echo "layouts rc=$?" >> "$OUT/a.log"
stamp "vit"
TRITONFUSE_LOG=summary timeout -k 5 200 $PY -m tritonfuse bench --models vit_b_16 \
  --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/vit.json" > "$OUT/vit.log" 2>&1
echo "vit rc=$?" >> "$OUT/a.log"
grep "^model \|^vit_b_16 " "$OUT/vit.log" >> "$OUT/a.log"
stamp "bert forced"
TRITONFUSE_LOG=summary timeout -k 5 170 $PY scripts/force_norm_bench.py --models bert-base \
  --modes tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/bert-forced.json" \
  > "$OUT/bert-forced.log" 2>&1
echo "bert-forced rc=$?" >> "$OUT/a.log"
grep "^model \|^bert-base " "$OUT/bert-forced.log" >> "$OUT/a.log"
stamp done
