#!/usr/bin/env bash
# 59th session (about 220 s): a Linear's bias added by the norm reading its output (norm_residual.bias_pass,
# off by default until this has run): its GPU tests, then vit_b_16 int8 with the pass on and off in turn
# (scripts/pass_ab.py; CUDA graphs, fresh compiles): ViT's 24 norm sites read the out- and down-projections'
# outputs, whose addmm kept its bias in cuBLAS's epilogue where our norm took the site; last, what the bias
# costs inside cuBLAS (scripts/addmm_bias_probe.py).
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s59_d.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "GPU tests"
timeout -k 5 60 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_norm_residual.py tests/test_inline.py \
  -k "linear_bias or non_contiguous or write_analysis" > "$OUT/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$OUT/tests.log")" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
for setting in on off; do
  stamp "vit bias $setting"
  TRITONFUSE_LOG=summary timeout -k 5 90 $PY scripts/pass_ab.py norm_residual.BIAS_IN_NORM norm_residual.bias_pass \
    $setting bench --models vit_b_16 --modes tritonfuse-int8 --cuda-graphs --no-progress \
    --out "$OUT/vit-bias-$setting.json" > "$OUT/vit-bias-$setting.log" 2>&1
  echo "vit bias $setting rc=$?" >> "$OUT/a.log"
  grep "^model \|^vit_b_16 \|bias_pass" "$OUT/vit-bias-$setting.log" | sort | uniq -c >> "$OUT/a.log"
done
stamp "addmm bias probe"
timeout -k 5 40 $PY scripts/addmm_bias_probe.py > "$OUT/addmm.log" 2>&1
echo "addmm rc=$?" >> "$OUT/a.log"
cat "$OUT/addmm.log" >> "$OUT/a.log"
stamp done
