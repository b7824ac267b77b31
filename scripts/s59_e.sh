#!/usr/bin/env bash
# prepared in the 59th session (about 200 s): where bert-base loses about 12 us a norm site when every norm is
# taken (s59_b: 6.890 ms forced against 6.57 decided). scripts/profile_model.py with and without --force-norms,
# each mode's output code under $OUT/code-*: the kernels around the norm op calls show what Inductor no longer
# fuses there.
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s59_e.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
for force in "" --force-norms; do
  name=bert${force:+-forced}
  stamp "$name"
  timeout -k 5 100 $PY scripts/profile_model.py --model bert-base --modes tritonfuse $force --code "$OUT/code-$name" \
    > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" >> "$OUT/a.log"
done
stamp done
