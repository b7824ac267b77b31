#!/usr/bin/env bash
# 61st session (about 250 s): the conv kernel's GPU tests at the head (the stems' row-run gather and tile list,
# kernels.conv_bn.row_run, int8 stems included), the stems' kernel rows (benchmarks/bench_conv_bn.py --only stem:
# ResNet's 7x7 and MobileNet's 3x3 RGB stems beside eager, Inductor, cuDNN + epilogue and the backend's choice),
# then where bert-base's float forward spends its GPU time against Inductor's (scripts/profile_model.py; issue 5
# asks 6.5 ms, 6.56-6.62 measured since 2274234). Run as TRITONFUSE_COMMIT=<head> bash scripts/s61_c.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 110 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_conv_bn.py \
  -k "stem or int8_kernel" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
grep FAILED "$OUT/tests.log" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "bench_conv_bn --only stem"
timeout -k 5 100 $PY benchmarks/bench_conv_bn.py --only stem --out "$OUT" > "$OUT/stem-bench.log" 2>&1
echo "rc=$?" >> "$OUT/a.log"
grep "^conv_bn\|FAIL\|failed" "$OUT/stem-bench.log" >> "$OUT/a.log"
stamp "profile bert-base float"
TRITONFUSE_CUDA_GRAPHS=1 timeout -k 5 150 $PY scripts/profile_model.py --model bert-base --modes inductor,tritonfuse \
  > "$OUT/profile-bert-base.txt" 2>&1
echo "profile rc=$?" >> "$OUT/a.log"
grep "^== " "$OUT/profile-bert-base.txt" >> "$OUT/a.log"
stamp done
