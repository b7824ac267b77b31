#!/usr/bin/env bash
# 49th session, fourth device call: the attention backward reading a key-padding mask as one vector of keys
# per tile (the score-sized reads cost bert-base's masked backward 0.414 against 0.265 ms unmasked): its GPU
# tests, scripts/train_pair_probe.py again, the backward benches (now also against SDPA's default backend's
# backward, by autograd), then bert-base's train step with measured choices
set -u
source "$(dirname "$0")/device_head.sh"
timeout -s INT 120 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py \
  -k "test_attention_backward or padding_mask_read_as_its_keys or training_sdpa_served or llama_training" >> "$OUT/a.log" 2>&1
echo "=== scripts/train_pair_probe.py" >> "$OUT/a.log"
timeout 80 $PY scripts/train_pair_probe.py 2>&1 | grep -v Warn >> "$OUT/a.log"
echo "=== bench_attention.py --only bwd,bwd_model" >> "$OUT/a.log"
timeout 120 $PY benchmarks/bench_attention.py --only bwd,bwd_model --out "$OUT/bench_attention_bwd.json" 2>&1 | grep -v Warn >> "$OUT/a.log"
echo "=== tritonfuse bench --train (measured choices)" >> "$OUT/a.log"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout ${TRAIN_S:-170} $PY -m tritonfuse bench --train \
  --models ${TRAIN_MODELS:-bert-base} --modes inductor,tritonfuse --no-progress --out "$OUT/" \
  2>&1 | grep -v Warn >> "$OUT/a.log"
echo "=== done" >> "$OUT/a.log"
