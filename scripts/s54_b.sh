#!/usr/bin/env bash
# prepared in the 53rd session, the call after s54_a.sh (about 400 s): the norm kernel with its int8 output
# against the norm then the row kernel and Inductor's fused form (bench_norm_residual's add_rms_norm_int8 rows
# at 8192 rows: Llama's 2048, bert's 768, 4096), then llama-1b-prefill's int8 forward profiled with the sites
# as CUDA graphs choose them (the 52nd session's profile: the row kernel 1.89 of 22.53 ms)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "bench_norm_residual int8 rows"
timeout 150 $PY benchmarks/bench_norm_residual.py --rows 8192 --hidden 768,2048,4096 --dtypes bfloat16 \
  --bwd-hidden none --no-models --out "$OUT/kernels.json" 2>&1 | grep -v "Warn\|warn" >> "$OUT/a.log"
stamp "profile llama-1b-prefill int8, graph-mode choices"
TRITONFUSE_CUDA_GRAPHS=1 TRITONFUSE_MEASURE_BUDGET_S=inf timeout 220 $PY scripts/profile_model.py \
  --model llama-1b-prefill --modes tritonfuse-int8 --code /tmp/code 2>&1 | grep -v "Warn\|warn" > "$OUT/profile.txt"
stamp done
