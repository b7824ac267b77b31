#!/usr/bin/env bash
# 61st session (about 330 s): stems gathered as row runs with the next rows' loads issued ahead (ROW_AHEAD)
# and tuned over their own tile list. Their GPU tests, scripts/stem_probe.py (at 6cb7796 the 7x7 stem ran
# 0.266 ms at best against cuDNN's conv alone 0.162 and with Inductor's epilogue 0.230), then resnet50 in
# three modes from CUDA graphs (at 6cb7796: Inductor 2.775, tritonfuse 2.305, int8 2.303 ms).
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s61_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 70 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_conv_bn.py \
  -k "stem" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
grep FAILED "$OUT/tests.log" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "stem probe"
timeout -k 5 170 $PY scripts/stem_probe.py > "$OUT/stem.log" 2>&1
echo "probe rc=$?" >> "$OUT/a.log"
tail -3 "$OUT/stem.log" | cut -c 1-3000 >> "$OUT/a.log"
stamp "resnet50"
TRITONFUSE_LOG=summary timeout -k 5 190 $PY -m tritonfuse bench --models resnet50 \
  --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/resnet50.json" \
  > "$OUT/resnet50.log" 2>&1
echo "resnet50 rc=$?" >> "$OUT/a.log"
grep "^model \|^resnet50 \|conv1\b\|stem" "$OUT/resnet50.log" | sort | uniq -c | head -30 >> "$OUT/a.log"
stamp done
