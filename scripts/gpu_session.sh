#!/usr/bin/env bash
# One device call's worth of GPU checks, by phase (each fits the device tool's 10-minute limit):
#   bash scripts/gpu_session.sh tests   # every test file at once (attention last to finish), logs to $OUT
#   bash scripts/gpu_session.sh bench   # host cost per op call, then the model zoo (eager/inductor/tritonfuse/int8)
#     (back here: python benchmarks/common.py --merge <fetched>/kernels.json; python -m tritonfuse.results
#      --merge <fetched>/<gpu>.json)
#   bash scripts/gpu_session.sh graphs  # the zoo again from CUDA graphs
# Set TRITONFUSE_COMMIT=<sha> where the tree has no .git (the device copy), so results name their commit.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/tritonfuse-gpu}
mkdir -p "$out"
python -m pip install --no-build-isolation --no-deps -e . > "$out/install.log" 2>&1 || { tail "$out/install.log"; exit 3; }
models=${MODELS:-resnet50,bert-base,vit_b_16,llama-1b-prefill}
case "${1:-tests}" in
  tests)
    mkdir -p /tmp/tf-logs
    OUT=/tmp/tf-logs PARALLEL=1 PER_FILE_TIMEOUT=${PER_FILE_TIMEOUT:-540} bash scripts/gpu_tests.sh
    cat /tmp/tf-logs/*.log > "$out/tests.log"
    grep -E "^FAILED|^ERROR" "$out/tests.log" | head -40 ;;
  bench)
    timeout 120 python benchmarks/bench_launch.py --out "$out/kernels.json" 2>&1 | grep -v Warn
    # every site timed in its first compile, so the run shows the steady state
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 420 tritonfuse bench --models "$models" \
      --modes eager,inductor,tritonfuse,tritonfuse-int8 --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -20 ;;
  graphs)
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 540 tritonfuse bench --models "$models" \
      --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -20 ;;
  *) echo "phases: tests, bench, graphs"; exit 2 ;;
esac
