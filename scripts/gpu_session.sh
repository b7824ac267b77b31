#!/usr/bin/env bash
# One device call's worth of GPU checks, by phase (each fits the device tool's 10-minute limit). Before the
# session, here: bash scripts/check_sm90.sh (every kernel variant compiled for sm_90 with the GPU's Triton).
#   bash scripts/gpu_session.sh tests   # every test file at once (attention last to finish), logs to $OUT
#   bash scripts/gpu_session.sh bench   # host cost per op call, then the model zoo (eager/inductor/tritonfuse/int8)
#     (back here: python benchmarks/common.py --merge <fetched>/kernels.json; python -m tritonfuse.results
#      --merge <fetched>/<gpu>.json)
#   bash scripts/gpu_session.sh graphs  # the zoo again from CUDA graphs
#   bash scripts/gpu_session.sh extra   # minilm-l6 (real weights: run scripts/carry_minilm.sh here first and
#                                       # carry .carry), training steps, and a per-layer profile
#   bash scripts/gpu_session.sh pair    # a 2-GPU machine (kind nvidia-h200-x2), each half of the cores pinned to
#                                       # one GPU so neither side's compiles disturb the other's timings:
#                                       # GPU 0 the zoo (MODELS, MODES), or with COMPILE_MODEL=<model> that
#                                       # model's compile profiled (scripts/compile_profile.py); GPU 1 the
#                                       # steps GPU1_STEPS names, in order (default: linear attention tests
#                                       # train; also: models = GPU1_MODELS under GPU1_MODES, compile = the
#                                       # compile times of COMPILE_MODEL_1, unprofiled); TESTS_K picks tests
# Write everything to files under $OUT: a pipe into tail or grep shows nothing when the call's time runs out.
# Set TRITONFUSE_COMMIT=<sha> where the tree has no .git (the device copy), so results name their commit.
set -u
cd "$(dirname "$0")/.."
# the interpreter that has torch (on the GPU machines here: python3, not the first `python`/`pip` on PATH)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/tritonfuse-gpu}
mkdir -p "$out"
$PY -m pip install --no-build-isolation --no-deps -e . > "$out/install.log" 2>&1 || { tail "$out/install.log"; exit 3; }
models=${MODELS:-resnet50,bert-base,vit_b_16,llama-1b-prefill}
case "${1:-tests}" in
  tests)
    mkdir -p /tmp/tf-logs
    OUT=/tmp/tf-logs PARALLEL=1 PER_FILE_TIMEOUT=${PER_FILE_TIMEOUT:-540} bash scripts/gpu_tests.sh
    cat /tmp/tf-logs/*.log > "$out/tests.log"
    grep -E "^FAILED|^ERROR" "$out/tests.log" | head -40 ;;
  bench)
    timeout 120 $PY benchmarks/bench_launch.py --out "$out/kernels.json" 2>&1 | grep -v Warn
    # every site timed in its first compile, so the run shows the steady state
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 420 $PY -m tritonfuse bench --models "$models" \
      --modes eager,inductor,tritonfuse,tritonfuse-int8 --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -20 ;;
  graphs)
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 540 $PY -m tritonfuse bench --models "$models" \
      --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -20 ;;
  extra)
    [ -d .carry/site ] && export PYTHONPATH=$PWD/.carry/site${PYTHONPATH:+:$PYTHONPATH}
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 150 $PY -m tritonfuse bench --models minilm-l6 \
      --modes eager,inductor,tritonfuse,tritonfuse-int8 --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -12
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 300 $PY -m tritonfuse bench --train --models bert-base,resnet50 \
      --modes eager,inductor,tritonfuse --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -12
    timeout 120 $PY -m tritonfuse profile bert-base --modes eager,inductor,tritonfuse --what blocks 2>&1 \
      | grep -v Warn | tee "$out/profile-bert-base.txt" | tail -30 ;;
  pair)
    # the device tool returns at most 8 files: everything goes into one archive at the end
    final=$out; out=$(mktemp -d); cp "$final/install.log" "$out/"
    n=$(nproc); h=$((n / 2)); mkdir -p "$out/zoo" "$out/k"
    (export CUDA_VISIBLE_DEVICES=0 TRITONFUSE_MEASURE_BUDGET_S=inf TORCHINDUCTOR_COMPILE_THREADS=$((h - 4))
     if [ -n "${COMPILE_MODEL:-}" ]; then  # where the compile time goes, instead of the zoo
       timeout "${ZOO_TIMEOUT:-520}" taskset -c 0-$((h - 1)) $PY scripts/compile_profile.py --model "$COMPILE_MODEL" \
         --out "$out/zoo" > "$out/zoo.txt" 2>&1
     else
       timeout "${ZOO_TIMEOUT:-520}" taskset -c 0-$((h - 1)) $PY -m tritonfuse bench --models "$models" \
         --modes "${MODES:-eager,inductor,tritonfuse,tritonfuse-int8}" --no-progress --out "$out/zoo/" > "$out/zoo.txt" 2>&1
     fi) &
    (export CUDA_VISIBLE_DEVICES=1 TORCHINDUCTOR_COMPILE_THREADS=$((h - 4)); pin="taskset -c $h-$((n - 1))"
     for step in ${GPU1_STEPS:-linear attention tests train}; do
       case $step in
         linear) timeout 150 $pin $PY benchmarks/bench_linear_act.py --quick > "$out/k/linear.txt" 2>&1 ;;
         attention) timeout 120 $pin $PY benchmarks/bench_attention.py --budget 60 > "$out/k/attention.txt" 2>&1 ;;
         # SIGINT: pytest still prints its failures when the time runs out
         tests) timeout -s INT "${TESTS_TIMEOUT:-150}" $pin $PY -m pytest tests -k "${TESTS_K:-cuda}" -q \
                  -p no:cacheprovider -rf --tb=short -p no:logging > "$out/k/tests.txt" 2>&1 ;;
         train) TRITONFUSE_MEASURE_BUDGET_S=inf timeout 150 $pin $PY -m tritonfuse bench --train --models \
                  "${TRAIN_MODELS:-bert-base}" --modes eager,inductor,tritonfuse --no-progress --out "$out/k/" \
                  > "$out/k/train.txt" 2>&1 ;;
         models) TRITONFUSE_MEASURE_BUDGET_S=inf timeout "${GPU1_TIMEOUT:-220}" $pin $PY -m tritonfuse bench \
                   --models "$GPU1_MODELS" --modes "${GPU1_MODES:-eager,inductor,tritonfuse}" --no-progress \
                   --out "$out/k/" > "$out/k/models.txt" 2>&1 ;;
         compile) TRITONFUSE_MEASURE_BUDGET_S=inf timeout "${COMPILE_TIMEOUT:-240}" $pin $PY scripts/compile_profile.py --model "${COMPILE_MODEL_1:-bert-base}" \
                    --profile-modes "" --out "$out/k/compile" > "$out/k/compile.txt" 2>&1 ;;
       esac
     done
     find benchmarks/results -name "kernels-*.json" -newer "$out/install.log" -exec cp {} "$out/k/" \;) &  # this GPU's only
    wait
    tar czf "$final/pair.tgz" -C "$out" . ;;
  *) echo "phases: tests, bench, graphs, extra, pair"; exit 2 ;;
esac
