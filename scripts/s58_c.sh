#!/usr/bin/env bash
# prepared in the 58th session (about 500 s): norm_residual's sites whose sum is laid out as a transposed
# operand (torchvision ViT's residual adds, read through a contiguous copy: Inductor's LayerNorm + int8
# quantization took 46-48 us a site there on the H100, three to four times a pass over the same bytes), now
# matched and timed against Inductor's own code for the site at its layout. Its GPU tests, then vit_b_16 and
# bert-base from CUDA graphs in every mode beside Inductor (fresh compiles); each model's report in $m.log.
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s58_c.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 100 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_norm_residual.py \
  -k "inductors or non_contiguous or vit or cuda" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
for m in ${MODELS:-vit_b_16 bert-base}; do
  stamp "$m"
  TRITONFUSE_LOG=summary timeout -k 5 200 $PY -m tritonfuse bench --models $m \
    --modes ${MODES:-inductor,tritonfuse,tritonfuse-int8} --cuda-graphs --no-progress --out "$OUT/$m.json" \
    > "$OUT/$m.log" 2>&1
  echo "$m rc=$?" >> "$OUT/a.log"
  grep -v "Warn\|warn\|^  $m\|^left to\|^ms: the\|^$" "$OUT/$m.log" | grep "ms\|cos" | uniq -c >> "$OUT/a.log"
done
stamp done
