#!/usr/bin/env bash
# 51st session, sixth device call (about 330 s): the int8 sibling stacking across architectures on the GPU —
# the HF zoo in int8 (fp16, every servable site replaced, no timing: sibling Linears all int8, so stacked),
# then the int8 GPU tests of linear_act (siblings, sharing, the handoff)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "zoo int8"
TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0 timeout 200 $PY scripts/zoo.py --dtype float16 --modes int8 \
  --models bert,gpt2,llama,mistral,qwen2,phi3,opt,t5-encoder,gemma,gpt-neox,falcon,gptj,bart,vit-hf,clip-vision \
  --out "$OUT/zoo_int8.json" 2>&1 | grep -E "^(ok|FAIL)|passed|failed" >> "$OUT/a.log"
stamp "linear_act int8 tests"
timeout -s INT 110 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_linear_act.py -k "int8" -x 2>&1 \
  | grep -v "^DEBUG" | tail -25 >> "$OUT/a.log"
stamp done
