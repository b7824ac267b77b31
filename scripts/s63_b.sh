#!/usr/bin/env bash
# 63rd session (about 300 s): the stems' kernel rows with a site whose output the graph returns charged with
# Inductor's epilogue pass (d415dff; at 5bf5fa8 the bench's 3x3 stem kept Inductor's path, ours 0.0721 ms against
# 0.0916), then resnet50 from CUDA graphs beside Inductor (2.290 against 2.750 at 25615e9; issue 6 asks 2.5 float,
# 2.0 int8). Run as TRITONFUSE_COMMIT=<head> bash scripts/s63_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "bench_conv_bn --only stem"
timeout -k 5 100 $PY benchmarks/bench_conv_bn.py --only stem --out "$OUT" > "$OUT/stem-bench.log" 2>&1
echo "rc=$?" >> "$OUT/a.log"
grep "^conv_bn\|FAIL\|failed" "$OUT/stem-bench.log" >> "$OUT/a.log"
stamp "resnet50"
TRITONFUSE_LOG=summary timeout -k 5 ${MODEL_S:-170} $PY -m tritonfuse bench --models resnet50 \
  --modes inductor,tritonfuse --cuda-graphs --no-progress --out "$OUT/resnet50.json" > "$OUT/resnet50.log" 2>&1
echo "resnet50 rc=$?" >> "$OUT/a.log"
grep "^model \|^resnet50 " "$OUT/resnet50.log" | sort | uniq -c | head -20 >> "$OUT/a.log"
stamp done
