#!/usr/bin/env bash
# For the 62nd session (about 450 s; the tests get what LIMIT, default 560 s, leaves after the sweep and the
# model): bert-base's padded attention at the head with the mask read only at the ends of a run of kept keys
# (kernels.attention.RUN_PADDING; scripts/attn_fwd_sweep.py --shapes bert: TRIM alone 97 us at 72f4cb5, 111 us
# a layer inside the model in the 61st session's profile), bert-base float from CUDA graphs beside Inductor
# (issue 5 asks 6.5 ms), the attention GPU tests that cover it, and the conv tests not GPU-run since d415dff /
# 92864bd. Run as TRITONFUSE_COMMIT=<head> bash scripts/s62_a.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "attention sweep, bert"
timeout -k 5 150 $PY scripts/attn_fwd_sweep.py --shapes bert --kernels pointer --out "$OUT/attn-bert.jsonl" \
  > "$OUT/attn-bert.log" 2>&1
echo "sweep rc=$?" >> "$OUT/a.log"
tail -4 "$OUT/attn-bert.log" >> "$OUT/a.log"
stamp "bert-base float, CUDA graphs"
left=$(( ${LIMIT:-560} - SECONDS ))
left=$(( left < 240 ? (left > 1 ? left : 1) : 240 ))  # (timeout 0 would be no limit)
timeout -k 5 $left $PY -m tritonfuse bench --models bert-base --modes inductor,tritonfuse \
  --cuda-graphs --no-progress --out "$OUT/" > "$OUT/bert.log" 2>&1
echo "bench rc=$?" >> "$OUT/a.log"
grep -v Warn "$OUT/bert.log" | tail -6 >> "$OUT/a.log"
stamp "attention tests"
timeout -k 5 $(( ${LIMIT:-560} - SECONDS > 60 ? 100 : 20 )) $PY -m pytest tests/test_attention.py -q \
  -p no:cacheprovider -k "run_of_kept or skips or read_once" 2>&1 | tail -3 >> "$OUT/a.log"
stamp "conv tests"
left=$(( ${LIMIT:-560} - SECONDS ))
timeout -k 5 $(( left > 30 ? left : 30 )) $PY -m pytest tests/test_conv_bn.py -q -p no:cacheprovider \
  -x 2>&1 | tail -4 >> "$OUT/a.log"
stamp done
