#!/usr/bin/env bash
# 53rd session, third device call (about 330 s): the quant_out tests alone on the GPU (s53_b.sh's selection ran
# past its 100 s), then vit_b_16 int8 from CUDA graphs with quant_out_pass on and off
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "tests: norm int8 output"
timeout -s INT 120 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_norm_residual.py \
  -k "int8_norm_quantizes or int8_hook" 2>&1 | grep -v "^DEBUG" | tail -8 >> "$OUT/a.log"
for s in on off; do
  stamp "vit_b_16 int8 quant_out $s"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout $([ $s = on ] && echo 150 || echo 110) $PY scripts/quant_out_ab.py $s \
    bench --models vit_b_16 --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/vit-$s.json" 2>&1 \
    | grep -v "Warn\|warn\|^  vit\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
done
stamp done
