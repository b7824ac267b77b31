#!/usr/bin/env bash
# prepared in the 53rd session for the next device call (about 450 s): quant_out_pass (the norm op writing the
# int8 rows its W8A8 GEMMs read) gained llama-1b-prefill only 0.08 ms from CUDA graphs (22.35 against 22.43)
# where its profile promised 0.3-0.5: time the norm kernel with its int8 output against the norm then the
# row kernel (bench_norm_residual's add_rms_norm_int8 rows, Llama's 8192 x 2048), profile the int8 forward
# again, and run the quant_out tests (2 of 8 not rerun after 9c3cb54)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "tests: norm int8 output"
timeout -s INT 120 $PY -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_norm_residual.py \
  -k "int8_norm_quantizes or int8_hook" 2>&1 | grep -v "^DEBUG" | grep -E "^E |passed|failed|FAILED" | cut -c1-300 >> "$OUT/a.log"
stamp "bench_norm_residual int8 rows"
timeout 150 $PY benchmarks/bench_norm_residual.py --rows 8192 --hidden 768,2048,4096 --dtypes bfloat16 \
  --bwd-hidden none --no-models --out "$OUT/kernels.json" 2>&1 | grep -v "Warn\|warn" >> "$OUT/a.log"
stamp "profile llama-1b-prefill int8, graph-mode choices"
TRITONFUSE_CUDA_GRAPHS=1 TRITONFUSE_MEASURE_BUDGET_S=inf timeout 220 $PY scripts/profile_model.py \
  --model llama-1b-prefill --modes tritonfuse-int8 --code /tmp/code 2>&1 | grep -v "Warn\|warn" > "$OUT/profile.txt"
stamp done
