#!/usr/bin/env bash
# 55th session (about 330 s): tables_pass's same-run A/B on llama-1b-prefill from CUDA graphs (HF's rotary cos
# and sin stored once instead of recomputed by every element of every layer's q and k: the 54th session's
# profile had those RoPE kernels at 53 and 52 us a layer), its GPU tests, then llama int8's profile and output
# code with the pass on. MODES sets the bench modes; PROFILE=0 skips the profile
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
for s in on off; do
  stamp "llama-1b-prefill position tables $s"
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout $([ $s = on ] && echo 150 || echo 110) $PY scripts/pass_ab.py attention.TABLES \
    attention.tables_pass $s bench --models llama-1b-prefill --modes ${MODES:-inductor,tritonfuse-int8} --cuda-graphs \
    --no-progress --out "$OUT/llama-1b-prefill-tables-$s.json" 2>&1 \
    | grep -v "Warn\|warn\|^  llama\|^left to\|^ms: the\|^$" | uniq -c >> "$OUT/a.log"
done
stamp "GQA attention at llama's shape"
timeout 60 $PY scripts/gqa_probe.py 2>&1 | grep -v "Warn\|warn" >> "$OUT/a.log"
stamp "tests: position tables"
timeout -s INT 60 $PY -m pytest -q -p no:cacheprovider -rf --tb=line tests/test_attention.py -k "tables" 2>&1 \
  | grep -E "^E |passed|failed|FAILED" | cut -c1-300 >> "$OUT/a.log"
[ "${PROFILE:-1}" = 1 ] && stamp "profile llama-1b-prefill int8 with output code" && TRITONFUSE_CUDA_GRAPHS=1 \
  TRITONFUSE_MEASURE_BUDGET_S=inf timeout 100 $PY scripts/profile_model.py --model llama-1b-prefill \
  --modes tritonfuse-int8 --code "$OUT/code-llama" 2>&1 | grep -v "Warn\|warn" > "$OUT/profile-llama.txt"
stamp done
