#!/usr/bin/env bash
# 49th session, first device call: the 48th's training changes on the GPU (its train48 phase, split to fit one
# call): the autocast-training GEMM sites and attention training tests, the lost linear_act shard's likely
# failure, the attention backward's configs at the train steps' shapes, then the training zoo (one log, a.log)
set -u
source "$(dirname "$0")/device_head.sh"
echo "=== training tests, the budget test and neighbours" >> "$OUT/a.log"
timeout -s INT 220 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_linear_act.py \
  tests/test_attention.py -k "own_weight_transpose or training_sdpa or llama_training or measuring_budget \
  or fast_silu or tma_gated or same_shape_sites or sites_of_a_cuda_graph or int8_handoff_needs" >> "$OUT/a.log" 2>&1
echo "=== bench_attention.py --only bwd_model" >> "$OUT/a.log"
timeout 130 $PY benchmarks/bench_attention.py --only bwd_model --out "$OUT/bench_attention_bwd.json" >> "$OUT/a.log" 2>&1
echo "=== training zoo (fp16, every site replaced)" >> "$OUT/a.log"
TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0 timeout ${ZOO_S:-170} $PY scripts/zoo.py --dtype float16 \
  --models llama,gpt2,bert,vit,qwen3,falcon --modes train,autocast-train --out "$OUT/zoo_train.json" >> "$OUT/a.log" 2>&1
echo "=== done rc=$?" >> "$OUT/a.log"
