#!/usr/bin/env bash
# 60th session (about 200 s): issue 6's int8 conv at every distinct ResNet-50 shape, b64 fp16 channels_last
# (benchmarks/bench_conv_bn.py --only int8: the int8 kernel alone and with its input's per-tensor quantization
# as Inductor compiles it, beside cuDNN + Inductor's epilogue and the fp16 Triton kernel). Shows how far the
# int8 conv is from paying for its quantization, which resnet50's int8 target (2.0 ms) needs.
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s60_c.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "bench_conv_bn --only int8"
timeout -k 5 200 $PY benchmarks/bench_conv_bn.py --only int8 --budget 170 --out "$OUT" > "$OUT/conv-int8.log" 2>&1
echo "rc=$?" >> "$OUT/a.log"
grep "conv_bn_relu_int8\|FAIL\|failed" "$OUT/conv-int8.log" >> "$OUT/a.log"
stamp done
