#!/usr/bin/env bash
# 54th session: where vit_b_16's and bert-base's int8 forwards spend their GPU time now (issue 7's 4.4 and
# 5.0 ms), each beside Inductor's in the same process, with the sites as CUDA graphs choose them; then
# llama-1b-prefill's int8 output code (what its 48 pointwise kernels around attention are: 1.98 ms a forward)
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
for m in vit_b_16 bert-base llama-1b-prefill; do
  stamp "profile $m inductor, tritonfuse-int8 (graph-mode choices)"
  TRITONFUSE_CUDA_GRAPHS=1 TRITONFUSE_MEASURE_BUDGET_S=inf timeout 230 $PY scripts/profile_model.py \
    --model $m --modes $([ $m = llama-1b-prefill ] && echo tritonfuse-int8 || echo inductor,tritonfuse-int8) \
    --code "$OUT/code-$m" 2>&1 | grep -v "Warn\|warn" > "$OUT/profile-$m.txt"
done
stamp done
