#!/usr/bin/env bash
# prepared in the 58th session (about 450 s): the GPU tests mended after s58_a.sh (int8 siblings by their
# sites' modules, the group handoff's wrong-scales case), then where vit_b_16's and bert-base's int8
# forwards spend their GPU time now (scripts/profile_model.py: kernels by GPU time; issue 7's gaps, 4.78 vs
# 4.4 and 6.06 vs 5.0 ms). Run as TRITONFUSE_COMMIT=<head> bash scripts/s58_b.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 120 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_int8.py tests/test_linear_act.py \
  -k "group_handoff or stack_within_one_module" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
export TRITONFUSE_MEASURE_BUDGET_S=inf TRITONFUSE_CUDA_GRAPHS=1  # (sites chosen as for the bench's CUDA graphs)
for m in ${MODELS:-vit_b_16 bert-base}; do
  stamp "profile $m int8"
  timeout -k 5 200 $PY scripts/profile_model.py --model $m --modes tritonfuse-int8 > "$OUT/profile-$m.txt" 2>&1
  echo "profile $m rc=$?" >> "$OUT/a.log"
done
stamp done
