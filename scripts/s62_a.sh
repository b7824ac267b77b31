#!/usr/bin/env bash
# For the 62nd session (about 300 s): where resnet50's float forward spends its GPU time beside its convs
# (scripts/profile_model.py, sites chosen as for CUDA graphs: the per-shape best of its 53 convs sums to
# 1.89 ms of the 2.29 it runs, bench_conv_bn at 25615e9), and bert-base's padded attention timed alone at the
# head (scripts/attn_fwd_sweep.py --shapes bert: 97 us at 72f4cb5, 111 us a layer inside the model in the
# 61st session's profile). Run as TRITONFUSE_COMMIT=<head> bash scripts/s62_a.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "profile resnet50"
TRITONFUSE_CUDA_GRAPHS=1 timeout -k 5 200 $PY scripts/profile_model.py --model resnet50 --modes inductor,tritonfuse \
  > "$OUT/profile-resnet50.txt" 2>&1
echo "profile rc=$?" >> "$OUT/a.log"
grep "^== " "$OUT/profile-resnet50.txt" >> "$OUT/a.log"
stamp "attention sweep, bert"
timeout -k 5 150 $PY scripts/attn_fwd_sweep.py --shapes bert --kernels pointer --out "$OUT/attn-bert.jsonl" \
  > "$OUT/attn-bert.log" 2>&1
echo "sweep rc=$?" >> "$OUT/a.log"
tail -5 "$OUT/attn-bert.log" >> "$OUT/a.log"
stamp done
