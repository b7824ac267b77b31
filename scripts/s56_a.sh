#!/usr/bin/env bash
# prepared in the 55th session (about 400 s): the gated MLP's W8A8 GEMM over its rows in pairs
# (kernels.int8.GATED_PAIRS, off by default) against two accumulators, at llama's shapes
# (scripts/gated_pairs_probe.py), then llama-1b-prefill int8 from CUDA graphs with the switch on and off in one
# process each, the GPU test of the pairs and the 55th session's attention tests. Run as
# TRITONFUSE_COMMIT=<head> bash scripts/s56_a.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "gated MLP GEMM: pairs against two accumulators"
timeout 150 $PY scripts/gated_pairs_probe.py 2>&1 | grep -v "Warn\|warn" >> "$OUT/a.log"
for s in True False; do
  stamp "llama-1b-prefill int8, GATED_PAIRS=$s"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout 120 $PY -c "import sys; from tritonfuse.kernels import int8; \
int8.GATED_PAIRS = $s; from tritonfuse.cli import main; sys.exit(main(sys.argv[1:]))" bench --models llama-1b-prefill \
    --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/llama-pairs-$s.json" 2>&1 \
    | grep -v "Warn\|warn\|^  llama\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
done
stamp "tests: gated pairs; the 55th session's attention tests not yet run on a GPU"
timeout -s INT 60 $PY -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_int8.py \
  -k "gated_pairs or tma_and_pointer" 2>&1 | grep -E "^E |passed|failed|FAILED" | cut -c1-300 >> "$OUT/a.log"
timeout -s INT 90 $PY -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_attention.py \
  -k "without_mask_left or unrepeated_kv or timed_against or rope_tables" 2>&1 \
  | grep -E "^E |passed|failed|FAILED" | cut -c1-300 >> "$OUT/a.log"
stamp done
