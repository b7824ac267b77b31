#!/usr/bin/env bash
# the 50th session's third device call: the -inf mask forms CUDA shows (91b2b29) and the exactly-causal mask
# (5be2337) in the GPU tests, then the decoder zoo (float, and training steps) for the mask changes
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp tests
timeout -s INT 170 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py \
  -k "llama or inf_additive or left_to_sdpa or without_cache or sdpa_forms" 2>&1 | grep -v "^DEBUG" >> "$OUT/a.log"
stamp "zoo float (decoders)"
timeout 170 $PY scripts/zoo.py --modes float --models llama,mistral,qwen2,phi3,gemma,gemma2,qwen3,gpt-neox,falcon,opt,gpt2,bart \
  --out "$OUT/zoo_float.json" 2>&1 | grep -v Warn | tail -20 >> "$OUT/a.log"
stamp "zoo train"
timeout 100 $PY scripts/zoo.py --modes train --models llama,mistral,qwen2 --dtype float16 \
  --out "$OUT/zoo_train.json" 2>&1 | grep -v Warn | tail -10 >> "$OUT/a.log"
stamp done
