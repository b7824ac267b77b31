#!/usr/bin/env bash
# 60th session (about 330 s): the conv family's int8 timing with the input's quantization charged (f8d8582):
# its GPU tests, resnet50 in three modes from CUDA graphs (at f64dfa4 int8 mode ran 2.648 ms against the float
# backend's 2.292), then scripts/norm_inplace_probe.py (the norm kernel writing over x, as Inductor's does),
# then a third sample of vit_b_16 int8 against Inductor (4.421 and 4.409 so far; issue 7's target 4.4).
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s60_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 70 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_conv_bn.py -k "int8" \
  > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
grep FAILED "$OUT/tests.log" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "resnet50"
TRITONFUSE_LOG=summary timeout -k 5 190 $PY -m tritonfuse bench --models resnet50 \
  --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/resnet50.json" \
  > "$OUT/resnet50.log" 2>&1
echo "resnet50 rc=$?" >> "$OUT/a.log"
grep "^model \|^resnet50 \|int8" "$OUT/resnet50.log" | sort | uniq -c | head -30 >> "$OUT/a.log"
stamp "norm in place probe"
timeout -k 5 60 $PY scripts/norm_inplace_probe.py > "$OUT/inplace.log" 2>&1
echo "probe rc=$?" >> "$OUT/a.log"
tail -4 "$OUT/inplace.log" >> "$OUT/a.log"
stamp "vit"
TRITONFUSE_LOG=summary timeout -k 5 130 $PY -m tritonfuse bench --models vit_b_16 \
  --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/vit.json" > "$OUT/vit.log" 2>&1
echo "vit rc=$?" >> "$OUT/a.log"
grep "^model \|^vit_b_16 " "$OUT/vit.log" >> "$OUT/a.log"
stamp done
