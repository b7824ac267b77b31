#!/usr/bin/env bash
# 53rd session, second device call (about 560 s): the norm kernels writing the int8 rows their W8A8 GEMMs
# read (quant_out_pass) on the GPU: its tests, then llama-1b-prefill and bert-base int8 from CUDA graphs with
# the pass on and off (scripts/quant_out_ab.py), each against Inductor in the same run
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "tests: norm int8 output, siblings, shared quantization"
timeout -s INT 100 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_norm_residual.py \
  tests/test_linear_act.py -k "int8_norm_quantizes or int8_hook or sibling or share_one" 2>&1 \
  | grep -v "^DEBUG" | tail -8 >> "$OUT/a.log"
for m in llama-1b-prefill bert-base; do
  for s in on off; do
    stamp "$m int8 quant_out $s"
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout $([ $s = on ] && echo 150 || echo 110) $PY scripts/quant_out_ab.py $s \
      bench --models $m --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/$m-$s.json" 2>&1 \
      | grep -v "Warn\|warn\|^  llama\|^  bert\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
  done
done
stamp done
