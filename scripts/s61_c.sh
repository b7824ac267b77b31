#!/usr/bin/env bash
# 61st session (about 250 s): the conv family's GPU tests in full at the head (the stems' row-run gather and
# tile list are new: kernels.conv_bn.row_run), then the stems' kernel rows (benchmarks/bench_conv_bn.py
# --only stem: ResNet's 7x7 and MobileNet's 3x3 RGB stems, eager, Inductor, the kernel, cuDNN + epilogue and
# the backend's choice side by side). Run as TRITONFUSE_COMMIT=<head> bash scripts/s61_c.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
mkdir -p /tmp/gt  # (a log per shard: only 8 files come back from a call)
OUT=/tmp/gt FILES=tests/test_conv_bn.py PARALLEL=1 PER_FILE_TIMEOUT=170 bash scripts/gpu_tests.sh >> "$OUT/a.log" 2>&1
grep -h "^FAILED\|^E  " /tmp/gt/test_conv_bn*.log | head -40 > "$OUT/test-failures.log"
grep -h "^FAILED" /tmp/gt/test_conv_bn*.log >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "bench_conv_bn --only stem"
timeout -k 5 150 $PY benchmarks/bench_conv_bn.py --only stem --out "$OUT" > "$OUT/stem-bench.log" 2>&1
echo "rc=$?" >> "$OUT/a.log"
grep "^conv_bn\|FAIL\|failed\|check" "$OUT/stem-bench.log" >> "$OUT/a.log"
stamp done
