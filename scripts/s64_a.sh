#!/usr/bin/env bash
# 64th session (about 520 s; LIMIT, default 560, bounds the last tests): bert-base's padded attention with the mask read
# only at the ends of a run of kept keys (kernels.attention.RUN_PADDING) under the additive mask the model hands it on a
# GPU (0 or finfo.min; the 63rd session timed RUN under a bool mask only: 0.0913 against 0.0973 ms), its GPU time inside
# the model (scripts/profile_model.py), then bert-base float from CUDA graphs beside Inductor (issue 5 asks 6.5 ms;
# 6.742 at d9978b6, where RUN did not serve the model's additive mask), the attention GPU tests that cover RUN and TRIM,
# and the last 21 conv tests the 63rd session's calls did not reach. Run as TRITONFUSE_COMMIT=<head> bash
# scripts/s64_a.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "attention sweep, bert (bool and additive masks)"
timeout -k 5 150 $PY scripts/attn_fwd_sweep.py --shapes bert,bert-additive --kernels pointer \
  --out "$OUT/attn-bert.jsonl" > "$OUT/attn-bert.log" 2>&1
echo "sweep rc=$?" >> "$OUT/a.log"
tail -5 "$OUT/attn-bert.log" >> "$OUT/a.log"
stamp "profile bert-base float (the attention's GPU time a layer in the model: 111 us at 5bf5fa8)"
TRITONFUSE_CUDA_GRAPHS=1 timeout -k 5 120 $PY scripts/profile_model.py --model bert-base --modes tritonfuse \
  > "$OUT/profile-bert-base.txt" 2>&1
echo "profile rc=$?" >> "$OUT/a.log"
grep "^== \|attn" "$OUT/profile-bert-base.txt" | head -8 >> "$OUT/a.log"
stamp "bert-base float, CUDA graphs"
TRITONFUSE_LOG=debug timeout -k 5 200 $PY -m tritonfuse bench --models bert-base --modes inductor,tritonfuse \
  --cuda-graphs --no-progress --out "$OUT/" > "$OUT/bert.log" 2>&1
echo "bench rc=$?" >> "$OUT/a.log"
grep "^model \|^bert-base " "$OUT/bert.log" >> "$OUT/a.log"
grep -m 2 "mask=" "$OUT/bert.log" >> "$OUT/a.log"  # (on a GPU an additive mask, float16, as seen on the H200)
stamp "attention tests"
timeout -k 5 120 $PY -m pytest tests/test_attention.py -q -p no:cacheprovider -rf --tb=short \
  -k "run_of_kept or skips or read_once" > "$OUT/attn-tests.log" 2>&1
echo "rc=$? $(tail -1 "$OUT/attn-tests.log")" >> "$OUT/a.log"
grep "^FAILED\|^E  " "$OUT/attn-tests.log" | head -20 >> "$OUT/a.log"
stamp "the last conv tests"
k="patch_convolution or patch_gather or patch_choice or no_patch_sites or patch_replacement or patch_conv_followed"
left=$(( ${LIMIT:-560} - SECONDS ))
timeout -k 5 $(( left > 30 ? left : 30 )) $PY -m pytest tests/test_conv_bn.py -q -p no:cacheprovider -rf --tb=short \
  -k "$k or vit_and_convnext_patch" > "$OUT/conv-tests.log" 2>&1
echo "rc=$? $(tail -1 "$OUT/conv-tests.log")" >> "$OUT/a.log"
grep "^FAILED" "$OUT/conv-tests.log" >> "$OUT/a.log"
stamp done
