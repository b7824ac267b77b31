#!/usr/bin/env bash
# 49th session, third device call: the training pair timed as GPU time (graphed: the two ops are inlined) and
# padding masks in training graphs read as their keys: the GPU tests, then the train steps with measured
# choices (bert-base, llama-1b-prefill, vit_b_16)
set -u
source "$(dirname "$0")/device_head.sh"
timeout -s INT 100 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py \
  -k "padding_mask_read_as_its_keys or training_sdpa_served or timed_padded_and_unpadded" >> "$OUT/a.log" 2>&1
echo "=== tritonfuse bench --train (measured choices)" >> "$OUT/a.log"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout ${TRAIN_S:-430} $PY -m tritonfuse bench --train \
  --models ${TRAIN_MODELS:-bert-base,llama-1b-prefill,vit_b_16} --modes inductor,tritonfuse --no-progress --out "$OUT/" \
  2>&1 | grep -v Warn >> "$OUT/a.log"
echo "=== done" >> "$OUT/a.log"
