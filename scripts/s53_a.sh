#!/usr/bin/env bash
# prepared in the 52nd session for the next device call (about 500 s): the norm kernel's int8 output by the
# row kernel's rule (23b1011) and the sibling stacking under autocast (3b2e07a) on the GPU, then
# llama-1b-decode (the 52nd session's run of it did not finish in 130 s: the weight-only stacking of a decode
# step's q, k and v, 658970b, is still untimed; its int8 row was 5.20 against Inductor's 4.66, host-bound)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "norm int8 hook, siblings tests"
timeout -s INT 90 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_norm_residual.py \
  tests/test_linear_act.py -k "int8_hook or sibling" 2>&1 | grep -v "^DEBUG" | tail -8 >> "$OUT/a.log"
stamp "zoo int8-autocast (stacking under autocast)"
TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0 timeout 120 $PY scripts/zoo.py --dtype float16 --modes int8-autocast \
  --models llama,bert,gpt2 --out "$OUT/zoo_int8_autocast.json" 2>&1 | grep -E "^(ok|FAIL)|passed|failed" >> "$OUT/a.log"
stamp "llama-1b-decode"
TRITONFUSE_MEASURE_BUDGET_S=inf timeout 200 $PY -m tritonfuse bench --models llama-1b-decode \
  --modes inductor,tritonfuse,tritonfuse-int8 --no-progress --out "$OUT/" 2>&1 | grep -v Warn >> "$OUT/a.log"
stamp done
