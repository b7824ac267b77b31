#!/usr/bin/env bash
# 64th session (about 400 s): issue 5's kernel rows on the H100 at the head. The H100 table's forward rows date
# from 473ccc2, where the TMA kernel fell back to the pointer kernel; the 504 TFLOP/s of the forward at D=128
# (and the backward's 8.02 against SDPA's 9.06 ms) were measured on the H200. bench_attention.py's forward,
# decode and backward cases beside SDPA (and Inductor at the first), in its priority order within a budget.
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s64_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0
stamp "bench_attention.py --only fwd,decode,bwd"
timeout -k 5 ${LIMIT:-420} $PY benchmarks/bench_attention.py --only fwd,decode,bwd --budget 300 \
  --out "$OUT/bench-attention.json" > "$OUT/bench-attention.txt" 2>&1
echo "rc=$?" >> "$OUT/a.log"
grep -i "forward\|backward\|decode\|TFLOP\| ms\|FAILED" "$OUT/bench-attention.txt" | head -60 >> "$OUT/a.log"
stamp done
