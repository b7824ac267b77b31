#!/usr/bin/env bash
# prepared in the 53rd session for the next device call (about 420 s): the same-run A/B of quant_out_pass (the
# norm op writing the int8 rows its W8A8 GEMMs read, and no float y where only they read it: 92acbb7) on
# llama-1b-prefill int8 from CUDA graphs. The 53rd
# session's "off" runs were served the "on" graphs from Inductor's cache (QUANT_OUT was not in its key,
# 760194c); across sessions llama's ratio to Inductor went from 1.54x to 1.58x. Then the quant_out tests (2 of
# 8 not rerun on the GPU after 9c3cb54) and the cache-key test
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
for s in off on; do
  stamp "llama-1b-prefill int8 quant_out $s"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout $([ $s = off ] && echo 150 || echo 110) $PY scripts/quant_out_ab.py $s \
    bench --models llama-1b-prefill --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress \
    --out "$OUT/llama-1b-prefill-$s.json" 2>&1 | grep -v "Warn\|warn\|^  llama\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
done
stamp "tests: norm int8 output, pass switches in the cache key"
timeout -s INT 120 $PY -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_norm_residual.py \
  -k "int8_norm_quantizes or int8_hook or pass_switches" 2>&1 | grep -E "^E |passed|failed|FAILED" | cut -c1-300 >> "$OUT/a.log"
stamp done
