#!/usr/bin/env bash
# 59th session (about 350 s): the H100's norm kernel rows again (benchmarks/bench_norm_residual.py; the rows in
# the results date from 2026-11-25, before the kernel's settings were tuned, and show it 2-3x behind Inductor at
# 32768x768/1024 where the H200's rows of e66fd0e tie), then a second fresh-compile sample of vit_b_16 int8
# against Inductor (s59_b: 4.421 ms, issue 7's target 4.4). Between them scripts/addmm_bias_probe.py: what
# the bias costs an addmm whose output a tritonfuse norm reads (Inductor would have moved it into the norm).
# Run as TRITONFUSE_COMMIT=<head> bash scripts/s59_c.sh
set -u
source "$(dirname "$0")/device_head.sh"
stamp() { echo "=== $(date +%T) $*" >> "$OUT/a.log"; }
stamp "bench_norm_residual"
timeout -k 5 160 $PY benchmarks/bench_norm_residual.py --budget 110 --out "$OUT/kernels.json" > "$OUT/norm.log" 2>&1
echo "norm rc=$?" >> "$OUT/a.log"
tail -60 "$OUT/norm.log" >> "$OUT/a.log"
stamp "addmm bias probe"
timeout -k 5 60 $PY scripts/addmm_bias_probe.py > "$OUT/addmm.log" 2>&1
echo "addmm rc=$?" >> "$OUT/a.log"
cat "$OUT/addmm.log" >> "$OUT/a.log"
export TORCHINDUCTOR_FX_GRAPH_CACHE=0 TORCHINDUCTOR_AUTOGRAD_CACHE=0 TRITONFUSE_MEASURE_BUDGET_S=inf
stamp "vit"
TRITONFUSE_LOG=summary timeout -k 5 170 $PY -m tritonfuse bench --models vit_b_16 \
  --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$OUT/vit.json" > "$OUT/vit.log" 2>&1
echo "vit rc=$?" >> "$OUT/a.log"
grep "^model \|^vit_b_16 " "$OUT/vit.log" >> "$OUT/a.log"
stamp done
