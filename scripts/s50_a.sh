#!/usr/bin/env bash
# prepared in the 49th session for the next device call: HF Llama without a KV cache (llama-1b-prefill's
# bench, training steps) reads its causal & packed-sequence mask with the causal flag now (1645707); the
# 49th's backward key-vector mask read got only 6 of its GPU tests in (the call was cut at 120 s).
#   1. the attention GPU tests those changes touch (backward variants, training, llama forms)
#   2. llama-1b-prefill inference and train step against Inductor, measured choices (was its attention served
#      at inference with the full mask? now causal: half the key blocks)
#   3. bench_attention.py --only bwd,bwd_model: the backward and the new forward+backward pair rows (SDPA by
#      autograd on its default backend: never run yet; a failed capture prints and goes on)
set -u
source "$(dirname "$0")/device_head.sh"
timeout -s INT 200 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py \
  -k "backward or training or llama or padding_mask or timed" >> "$OUT/a.log" 2>&1
echo "=== llama-1b-prefill, inference then train step (measured choices)" >> "$OUT/a.log"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 170 $PY -m tritonfuse bench --models llama-1b-prefill \
  --modes inductor,tritonfuse --no-progress --out "$OUT/" 2>&1 | grep -v Warn >> "$OUT/a.log"
mkdir -p "$OUT/train"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 150 $PY -m tritonfuse bench --train --models llama-1b-prefill \
  --modes inductor,tritonfuse --no-progress --out "$OUT/train/" 2>&1 | grep -v Warn >> "$OUT/a.log"
echo "=== bench_attention.py --only bwd,bwd_model" >> "$OUT/a.log"
timeout 100 $PY benchmarks/bench_attention.py --only bwd,bwd_model --out "$OUT/bench_attention_bwd.json" 2>&1 \
  | grep -v Warn >> "$OUT/a.log"
echo "=== done" >> "$OUT/a.log"
