#!/usr/bin/env bash
# 49th session, second device call: the mended autocast-training test; the attention backward at issue 5's
# shapes (B8 H16 S4096 D128, causal and not; never timed on the H100) and the train steps' shapes; then the
# bert-base and llama-1b-prefill train steps with measured choices (the backward's new configs won both its
# train-shape benches in the first call: does the forward+backward pair now beat SDPA's in the model?)
set -u
source "$(dirname "$0")/device_head.sh"
timeout -s INT 100 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_linear_act.py \
  -k "own_weight_transpose" >> "$OUT/a.log" 2>&1
echo "=== bench_attention.py --only bwd,bwd_model" >> "$OUT/a.log"
timeout 150 $PY benchmarks/bench_attention.py --only bwd,bwd_model --out "$OUT/bench_attention_bwd.json" >> "$OUT/a.log" 2>&1
echo "=== tritonfuse bench --train (measured choices)" >> "$OUT/a.log"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout ${TRAIN_S:-300} $PY -m tritonfuse bench --train \
  --models ${TRAIN_MODELS:-bert-base,llama-1b-prefill} --modes inductor,tritonfuse --no-progress --out "$OUT/" \
  2>&1 | grep -v Warn >> "$OUT/a.log"
echo "=== done" >> "$OUT/a.log"
