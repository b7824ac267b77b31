#!/usr/bin/env bash
# One device call's worth of GPU checks, by phase (each fits the device tool's 10-minute limit). Before the
# session, here: bash scripts/check_sm90.sh (every kernel variant compiled for sm_90 with the GPU's Triton).
#   bash scripts/gpu_session.sh tests   # every test file at once (attention last to finish), logs to $OUT
#   bash scripts/gpu_session.sh bench   # host cost per op call, then the model zoo (eager/inductor/tritonfuse/int8)
#     (back here: python benchmarks/common.py --merge <fetched>/kernels.json; python -m tritonfuse.results
#      --merge <fetched>/<gpu>.json)
#   bash scripts/gpu_session.sh rounds  # the zoo's inductor/tritonfuse rows in interleaved rounds, resnet50 per block
#   bash scripts/gpu_session.sh verify  # the twenty-third session's changes: the linear_act/conv_bn/inline GPU
#                                       # tests, bench_linear_act --quick (the OCC=2 configs: does one win
#                                       # GEMM+GELU or SwiGLU?), bert-base/vit_b_16/llama-1b-prefill in rounds
#   bash scripts/gpu_session.sh inline  # resnet50 (conv sites inlined: kernels.conv_bn.INLINE, the default)
#                                       # against Inductor: each one's output code (launches by kind), host and
#                                       # GPU time per forward, CUDA time per kernel; MODEL=bert-base INT8=1: the
#                                       # int8 GEMMs inlined (INT8_CONSTANTS) instead; POINTER=1: inlined as the
#                                       # pointer kernels (INLINE_DEVICE_TMA off), launched by Inductor's static
#                                       # launcher
#   bash scripts/gpu_session.sh static  # TRITONFUSE_STATIC_LAUNCH 0 then 1 (inlined kernels from Inductor's static
#                                       # launcher), inductor/tritonfuse in rounds on MODELS (default
#                                       # llama-1b-decode,bert-base: host-bound decode, and a model of inlined sites)
#   bash scripts/gpu_session.sh cudnn_fused # resnet50 (MODEL) with TRITONFUSE_CUDNN_FUSED=1: bench rounds against
#                                       # Inductor, then its output code and host/GPU time per forward
#   bash scripts/gpu_session.sh lpt     # scripts/lpt_probe.py: the causal attention forward in LPT order (on since
#                                       # the 33rd session) against head-major order and SDPA
#   bash scripts/gpu_session.sh graphs  # the zoo again from CUDA graphs
#   bash scripts/gpu_session.sh s43     # the 43rd session's patch-convolution GEMM and padded-attention trim
#   bash scripts/gpu_session.sh s44     # the 44th's: the patch choice's gather kernel, padded-batch attention timing
#   bash scripts/gpu_session.sh zoo     # scripts/zoo.py (11 HF + 8 torchvision architectures), float and int8
#   bash scripts/gpu_session.sh s47     # the 47th's: the 46th's GPU-only test failures (mended), autocast tests, zoo
#   bash scripts/gpu_session.sh s48     # the 48th's: the 47th's five mended failures, then zoo2 (float, int8)
#   bash scripts/gpu_session.sh train48 # the 48th's training changes: their GPU tests, the training zoo, train steps
#   bash scripts/gpu_session.sh zoo2    # the architectures added in the 47th session, float, int8 and autocast
#   bash scripts/gpu_session.sh zoo_modes # its training, dynamic-shape, autocast and decode modes
#   bash scripts/gpu_session.sh audit   # torchvision convnets (tiny, fp16) through the backend against eager and
#                                       # fp64, conv sites inlined: does any model break? (scripts/model_audit.py)
#   bash scripts/gpu_session.sh tiled   # scripts/wonly_tiled_probe.py: the int8 decode GEMM over a tiled weight layout
#   bash scripts/gpu_session.sh autotune # scripts/autotune_bench_probe.py: resnet50's conv configs tuned by three timing methods
#   bash scripts/gpu_session.sh compile # COMPILE_MODEL's (default resnet50) cold and warm compiles, inductor and
#                                       # tritonfuse, with the time per stage (--breakdown: measured choices,
#                                       # kernel compiles, torch's generate_ttir for inlined kernels)
#   bash scripts/gpu_session.sh compile_pairs # cold first compiles of COMPILE_MODELS (default "resnet50 bert-base"),
#                                       # PAIRS (default 3) pairs each, inductor and tritonfuse in alternating
#                                       # order (in the 35th session the later pair of a model ran slower), with
#                                       # each job sent to the workers timed and the compiled model timed; one
#                                       # archive, $OUT/pairs.tgz
#   bash scripts/gpu_session.sh fast_silu # issue 2: the dual GEMM's configs with the approximate-tanh SiLU epilogue
#                                       # (kernels.linear_act.FAST_SILU) off and on, its GPU test, and the
#                                       # probes' compile-sharing GPU tests
#   bash scripts/gpu_session.sh int8_next # issue 7 (38th session's leads): scripts/int8_handoff_probe.py (quantize
#                                       # on load between BERT's MLP GEMMs), the decode kernel's split-K count
#                                       # released (ACQUIRE off), the int8 GPU tests
#   bash scripts/gpu_session.sh int8_profile # issue 7 (39th session): the quantize-on-load producer's atomics,
#                                       # bert-base/vit_b_16 per kernel in float and int8 mode
#   bash scripts/gpu_session.sh quant_fusion # issue 7 (39th session): LayerNorm + fused int8 quantization by
#                                       # decomposition; W8A8 at bert's Q/K/V shapes apart and concatenated
#   bash scripts/gpu_session.sh int8_next40 # issue 7 (prepared in the 39th session): the row kernel by launch
#                                       # shape; vit_b_16 int8 with its Q/K/V input quantized in the LayerNorm
#   bash scripts/gpu_session.sh qload41 # issue 7 (prepared in the 40th session): the int8 handoff between an MLP's
#                                       # GEMMs: GPU tests, bench_int8.py --sections mlp; the LayerNorm + int8
#                                       # quantization without torch.trunc; qload41_models: bert-base/vit_b_16 in
#                                       # int8 with the handoff and without
#   bash scripts/gpu_session.sh int8_42 # issue 7 (prepared in the 42nd session): its changes' GPU tests, then
#                                       # bench_int8.py --sections mlp (the handoff against the row kernel path)
#   bash scripts/gpu_session.sh ws41    # issue 5 (prepared in the 41st session): the warp-specialized attention
#                                       # forward: its GPU tests, then bench_attention.py --sweep (every TMA and
#                                       # warp-specialized config on its own, the op with the flag on and off);
#                                       # ws41_int8: the W8A8 GEMM's warp-specialized configs (bench_int8 --sweep)
#   bash scripts/gpu_session.sh extra   # minilm-l6 (real weights: run scripts/carry_minilm.sh here first and
#                                       # carry .carry), training steps, and a per-layer profile
#   bash scripts/gpu_session.sh pair    # a 2-GPU machine (kind nvidia-h200-x2), each half of the cores pinned to
#                                       # one GPU so neither side's compiles disturb the other's timings:
#                                       # each GPU runs the steps GPU0_STEPS / GPU1_STEPS name, in order
#                                       # (default: zoo / linear attention tests train; also noinline,
#                                       # profile, compile, compile_profile, models, train:MODEL, launch, int8, norm,
#                                       # norm_sweep, probe2, decode_sweep, conv, tma_probe, pad_probe, inline_probe, int8_inline,
#                                       # explain:MODEL[:QUANT]: see run_steps)
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
    # every site timed in its first compile, so the run shows the steady state; the modes are then timed
    # again in 10 interleaved rounds (bench --rounds), about 20 s more per model (MODELS= fewer if it runs out)
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 460 $PY -m tritonfuse bench --models "$models" \
      --modes eager,inductor,tritonfuse,tritonfuse-int8 --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -20 ;;
  rounds)
    # the zoo's inductor and tritonfuse rows timed with interleaved rounds (MODELS=, default the four above),
    # then resnet50's blocks per layer: where Inductor's conv paths and ours differ (PROFILE_WHAT=leaves for
    # each conv alone, if the time allows)
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 400 $PY -m tritonfuse bench --models "$models" --modes inductor,tritonfuse \
      --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -20
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 170 $PY -m tritonfuse profile resnet50 --modes inductor,tritonfuse \
      --what "${PROFILE_WHAT:-blocks}" --no-progress > "$out/profile-resnet50.txt" 2>&1; tail -30 "$out/profile-resnet50.txt" ;;
  verify)
    timeout -s INT 120 $PY -m pytest tests/test_linear_act.py tests/test_conv_bn.py tests/test_inline.py -k cuda -q \
      -p no:cacheprovider -rf --tb=short > "$out/tests.txt" 2>&1; tail -3 "$out/tests.txt"
    timeout 150 $PY benchmarks/bench_linear_act.py --quick > "$out/linear.txt" 2>&1; tail -24 "$out/linear.txt"
    cp benchmarks/results/kernels-*.json "$out/" 2>/dev/null
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 300 $PY -m tritonfuse bench --models bert-base,vit_b_16,llama-1b-prefill \
      --modes inductor,tritonfuse --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -14 ;;
  inline)
    if [ "${INT8:-0}" = 1 ]; then flags=(--int8-inline --modes inductor,tritonfuse-int8); else flags=(); fi
    [ "${POINTER:-0}" = 1 ] && flags+=(--pointer --static-launch)
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 400 $PY scripts/profile_model.py --model "${MODEL:-resnet50}" "${flags[@]}" \
      --code "$out/code" > "$out/inline_profile.txt" 2>&1; grep -A40 "launches by kind" "$out/inline_profile.txt" | head -80
    tar czf "$out/code.tgz" -C "$out" code && rm -rf "$out/code" ;;
  static)
    for s in 0 1; do
      TRITONFUSE_STATIC_LAUNCH=$s TRITONFUSE_MEASURE_BUDGET_S=inf timeout 270 $PY -m tritonfuse bench \
        --models "${MODELS:-llama-1b-decode,bert-base}" --modes inductor,tritonfuse --no-progress \
        --out "$out/static$s/" 2>&1 | grep -v Warn | tail -8
    done ;;
  cudnn_fused)
    # cuDNN's fused conv path (off by default; 31st session: resnet50 0.80x Inductor with it, timed then as GPU
    # time alone): resnet50 with it on, inductor/tritonfuse in rounds, then its output code and per-forward host
    # and GPU time
    TRITONFUSE_CUDNN_FUSED=1 TRITONFUSE_MEASURE_BUDGET_S=inf TRITONFUSE_LOG=summary timeout 240 $PY -m tritonfuse \
      bench --models "${MODEL:-resnet50}" --modes inductor,tritonfuse --no-progress --out "$out/fused/" \
      > "$out/fused_bench.txt" 2>&1; grep -E "^${MODEL:-resnet50} |cudnn_fused" "$out/fused_bench.txt" | head -12
    TRITONFUSE_CUDNN_FUSED=1 TRITONFUSE_MEASURE_BUDGET_S=inf timeout 240 $PY scripts/profile_model.py \
      --model "${MODEL:-resnet50}" --modes tritonfuse --code "$out/code_fused" > "$out/fused_profile.txt" 2>&1
    grep -E "==|launches by kind" -A12 "$out/fused_profile.txt" | head -40
    tar czf "$out/code_fused.tgz" -C "$out" code_fused && rm -rf "$out/code_fused" ;;
  lpt)
    # issue 5: the causal forward in longest-processing-time order (kernels.attention.CAUSAL_LPT, 32nd session,
    # on since the 33rd) against head-major order and SDPA (rows: $OUT/lpt-probe.jsonl)
    timeout 300 $PY scripts/lpt_probe.py > "$out/lpt.txt" 2>&1; tail -14 "$out/lpt.txt" ;;
  graphs)
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 540 $PY -m tritonfuse bench --models "$models" \
      --modes inductor,tritonfuse,tritonfuse-int8 --cuda-graphs --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -20 ;;
  audit)
    timeout 330 $PY scripts/model_audit.py --models resnet18,mobilenet_v3,efficientnet_b0,convnext_tiny,regnet,densenet \
      --dtype float16 --jobs 6 --timeout 300 --out "$out/audit.jsonl" > "$out/audit.txt" 2>&1; tail -8 "$out/audit.txt" ;;
  tiled)
    # issue 7's M=16 decode: a tile-by-tile weight layout against the row-major one (27th session's experiment)
    timeout 540 $PY scripts/wonly_tiled_probe.py --shapes "${TILED_SHAPES:-16x4096x4096,16x14336x4096}" \
      > "$out/tiled.txt" 2>&1; tail -5 "$out/tiled.txt" ;;  # (rows: $OUT/wonly-tiled-probe.jsonl)
  autotune)
    # issue 6: the conv autotuner's timing method at compile time (28th session's probe; rows in
    # $OUT/autotune-bench-probe.jsonl)
    timeout 540 $PY scripts/autotune_bench_probe.py > "$out/autotune.txt" 2>&1; tail -8 "$out/autotune.txt" ;;
  compile)
    timeout 540 $PY scripts/compile_profile.py --model "${COMPILE_MODEL:-resnet50}" --breakdown --profile-modes "" \
      --out "$out/compile" > "$out/compile.txt" 2>&1; tail -20 "$out/compile.txt" ;;
  compile_pairs)
    mkdir -p "$out/pairs"
    i=0
    for pair in $(seq "${PAIRS:-3}"); do
      for m in ${COMPILE_MODELS:-resnet50 bert-base}; do
        i=$((i + 1)); modes=inductor,tritonfuse; [ $((pair % 2)) = 0 ] && modes=tritonfuse,inductor
        timeout 200 $PY scripts/compile_profile.py --model "$m" --modes "$modes" --runs cold --no-again --breakdown \
          --profile-modes "" --time-runs 50 --out "$out/pairs/$m-$i" > "$out/pairs/$m-$i.txt" 2>&1
        (cd "$out" && tar czf pairs.tgz pairs)  # (after each pair: what a cut-off call leaves still comes back)
      done
    done ;;
  fast_silu)
    # issue 2: the dual GEMM's SiLU from the GPU's approximate tanh (kernels.linear_act.FAST_SILU, on since the
    # 37th session): every dual-GEMM config with it off and on at 8192x2048x8192 (rows:
    # $OUT/gated-config-probe.jsonl), then its GPU test beside every TMA config's, and the 36th session's probe
    # tests (a probe compiles nothing its sites do not)
    timeout 300 $PY scripts/gated_config_probe.py --fast-silu > "$out/fast_silu.txt" 2>&1; tail -14 "$out/fast_silu.txt"
    timeout -s INT 200 $PY -m pytest tests/test_linear_act.py tests/test_attention.py tests/test_norm_residual.py \
      tests/test_conv_bn.py -k "fast_silu or every_tma_config or probe_compiles" -q -p no:cacheprovider \
      -rf --tb=short > "$out/fast_silu_tests.txt" 2>&1; tail -3 "$out/fast_silu_tests.txt" ;;
  int8_next)
    # issue 7, prepared in the 38th session: the quantize-on-load path between BERT's MLP GEMMs against today's
    # int8 path and the float one (rows: $OUT/int8-handoff-probe.jsonl), the decode kernel's split-K count
    # released rather than acquired (kernels.int8 ACQUIRE; rows: $OUT/wonly-floor-probe.jsonl), and the int8 tests
    timeout 200 $PY scripts/int8_handoff_probe.py > "$out/handoff.txt" 2>&1; grep -v "^\s*$" "$out/handoff.txt" | tail -14
    timeout 200 $PY scripts/wonly_floor_probe.py --providers cublas,shipped,release --shapes 16x4096x4096,16x14336x4096 \
      > "$out/release.txt" 2>&1; tail -6 "$out/release.txt"
    timeout -s INT 150 $PY -m pytest tests/test_int8.py -m cuda -q -p no:cacheprovider -rf --tb=short > "$out/int8_tests.txt" 2>&1
    tail -3 "$out/int8_tests.txt" ;;
  int8_profile)
    # issue 7 (39th session): the quantize-on-load producer's row-absmax atomics (fenced, relaxed, on the int32
    # bits, none), then bert-base and vit_b_16 (MODELS2) profiled per kernel in float and int8 mode, sites
    # chosen by GPU time as under CUDA graphs: where int8 mode's time goes
    timeout 150 $PY scripts/int8_handoff_probe.py --no-handoff > "$out/handoff.txt" 2>&1
    grep -E "quantize on load|int8 now|float" "$out/handoff.txt" | sed 's/.*commit=[^ ]* //' | tail -16
    for m in ${MODELS2:-bert-base vit_b_16}; do
      TRITONFUSE_CUDA_GRAPHS=1 TRITONFUSE_MEASURE_BUDGET_S=inf timeout 220 $PY scripts/profile_model.py --model "$m" \
        --modes tritonfuse,tritonfuse-int8 > "$out/profile-$m.txt" 2>&1; grep "^==" "$out/profile-$m.txt"
    done ;;
  quant_fusion)
    # issue 7 (39th session): the LayerNorm + int8 quantization kernel Inductor fuses, by decomposition of the
    # quantizer (scripts/quant_fusion_probe.py), then W8A8 at bert's Q/K/V shape apart and concatenated
    timeout 240 $PY scripts/quant_fusion_probe.py > "$out/quant_fusion.txt" 2>&1
    sed 's/.*commit=[^ ]* //' "$out/quant_fusion.txt" | tail -16
    timeout 300 $PY scripts/int8_gemm_probe.py --shapes 16384x768x768,16384x2304x768 --bias --dtype float16 \
      > "$out/qkv.txt" 2>&1; sed 's/.*commit=[^ ]* //' "$out/qkv.txt" | sort -t= -k4 | tail -12 ;;
  int8_next40)
    # issue 7, prepared in the 39th session: the int8 row kernel by launch shape (scripts/quant_rows_probe.py:
    # a 3% faster down-projection site would take BERT's 12 in int8), then vit_b_16 in int8 mode with its
    # Q/K/V input quantized in the LayerNorm's kernel or by the row kernel (scripts/norm_walk_probe.py)
    timeout 120 $PY scripts/quant_rows_probe.py > "$out/quant_rows.txt" 2>&1
    sed 's/.*commit=[^ ]* //' "$out/quant_rows.txt" | tail -30
    for w in "" --walk; do
      TRITONFUSE_LOG=summary TRITONFUSE_MEASURE_BUDGET_S=inf timeout 200 $PY scripts/norm_walk_probe.py $w -- \
        --models vit_b_16 --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress --out "$out/walk${w}/" \
        > "$out/walk${w}.txt" 2>&1; grep -E "norm walk|int8_w8a8|^vit_b_16 " "$out/walk${w}.txt" | head -8
    done ;;
  qload41)
    # issue 7, prepared in the 40th session: the int8 handoff between an MLP's GEMMs (int8_linear_amax ->
    # int8_linear_qload): its GPU tests and bench_int8.py's MLP section (bert/vit/llama MLP shapes, both rounding
    # forms); then the LayerNorm + int8 quantization without torch.trunc (scripts/quant_fusion_probe.py)
    timeout -s INT 200 $PY -m pytest tests/test_int8.py tests/test_linear_act.py -q -p no:cacheprovider \
      -k "quantize_on_load or amax_and_qload or handoff or quantized_on_load or nonfinite or zero_rows or quant_rows" \
      > "$out/qload_tests.txt" 2>&1; tail -3 "$out/qload_tests.txt"
    timeout 170 $PY benchmarks/bench_int8.py --sections mlp --out "$out/kernels.json" > "$out/bench_mlp.txt" 2>&1
    grep -E "int8_mlp|row kernel path|measurement|FAILED|Error" "$out/bench_mlp.txt" | tail -40
    timeout 150 $PY scripts/quant_fusion_probe.py --shapes 16384x768 > "$out/quant_fusion.txt" 2>&1
    sed 's/.*commit=[^ ]* //' "$out/quant_fusion.txt" | tail -10
    timeout 60 $PY scripts/quant_rows_probe.py --shapes 16384x3072 > "$out/quant_rows.txt" 2>&1
    sed 's/.*commit=[^ ]* //' "$out/quant_rows.txt" | tail -14 ;;
  qload41_models)
    # bert-base and vit_b_16 in int8 mode from CUDA graphs, the handoff on (the default) and off
    # (scripts/variant_bench.py); llama-1b-prefill: MODELS=llama-1b-prefill bash scripts/gpu_session.sh graphs
    for v in on off; do
      set_qload=(); [ $v = off ] && set_qload=(--set tritonfuse.patterns.linear_act.QLOAD=False)
      TRITONFUSE_MEASURE_BUDGET_S=inf timeout 270 $PY scripts/variant_bench.py ${set_qload[@]+"${set_qload[@]}"} -- \
        --models bert-base,vit_b_16 --modes inductor,tritonfuse-int8 --cuda-graphs --no-progress \
        --out "$out/qload-$v/" > "$out/qload_$v.txt" 2>&1
      grep -E "^(bert-base|vit_b_16) " "$out/qload_$v.txt" | head -8
    done ;;
  s43)
    # prepared in the 43rd session (no GPU lent): the patch convolutions served as one GEMM (conv_bn: vit_b_16's
    # 16x16 patch embedding took 0.56 ms in cuDNN on the H200) and the attention key blocks a padding mask
    # drops skipped (bert-base). Their GPU tests, then bench_conv_bn.py --only patch and the bert attention
    # sweep with TRIM off / on; then: MODELS=vit_b_16,bert-base bash scripts/gpu_session.sh graphs
    timeout -s INT 200 $PY -m pytest tests/test_conv_bn.py tests/test_attention.py -q -p no:cacheprovider \
      -k "patch or skips_the_key or key_padding or bert or vit or backward" > "$out/s43_tests.txt" 2>&1
    tail -3 "$out/s43_tests.txt"
    timeout 200 $PY benchmarks/bench_conv_bn.py --only patch --out "$out" > "$out/bench_patch.txt" 2>&1
    grep -E "^patch_conv|check|failed" "$out/bench_patch.txt" | tail -20
    timeout 150 $PY scripts/attn_fwd_sweep.py --shapes bert --kernels pointer --out "$out/attn-trim.jsonl" \
      > "$out/attn_trim.txt" 2>&1; tail -6 "$out/attn_trim.txt" ;;
  s44)
    # prepared in the 44th session: its GPU tests (the padded-batch attention timing, the patch gather
    # kernel and the patch choice that times it), then bench_conv_bn.py --only patch (patch_timed: the
    # choice's stand-in for Inductor's fused gather, beside chosen; does Swin's 4x4 stem now take the GEMM?).
    # Then: MODELS=resnet50,llama-1b-prefill bash scripts/gpu_session.sh graphs (H100 rows older than 6b87159)
    timeout -s INT 200 $PY -m pytest tests/test_conv_bn.py tests/test_attention.py -q -p no:cacheprovider \
      -k "patch or gather or timing_masks or padded_and_unpadded or timed_once or loses_unpadded" \
      > "$out/s44_tests.txt" 2>&1
    grep -E "^FAILED|^ERROR" "$out/s44_tests.txt" | head; tail -1 "$out/s44_tests.txt"
    timeout 200 $PY benchmarks/bench_conv_bn.py --only patch --out "$out" > "$out/bench_patch.txt" 2>&1
    grep -E "^patch_conv|check|failed|Error" "$out/bench_patch.txt" | tail -20
    # issue 7's llama-1b-prefill int8: its K/V projections (N=512) lose to cuBLAS alone; would one W8A8 GEMM
    # over the Q, K and V weights joined (N=3072) beat Q in int8 plus K and V in cuBLAS?
    timeout 200 $PY scripts/int8_gemm_probe.py --shapes 8192x2048x2048,8192x512x2048,8192x3072x2048 \
      > "$out/qkv_join_probe.txt" 2>&1; tail -12 "$out/qkv_join_probe.txt" ;;
  zoo)
    # prepared in the 45th session: the architectures of scripts/zoo.py (HF transformers and torchvision at small
    # sizes, random weights) through tritonfuse on the GPU in fp16, float and int8, every servable site replaced
    # (no timing, one config: as the GPU tests run): nothing may break, no new NaN, SQNR vs eager >= 20 dB.
    # The CPU interpreter passed them all (45th session); the GPU's ATen graphs and kernels differ
    export TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0
    timeout 280 $PY scripts/zoo.py --dtype float16 --models bert,bert-eager,roberta,distilbert,gpt2,llama,mistral,qwen2,phi3,opt,t5-encoder \
      --out "$out/zoo_hf.json" > "$out/zoo_hf.txt" 2>&1
    grep -E "^FAIL|passed" "$out/zoo_hf.txt" | tail -25
    timeout 280 $PY scripts/zoo.py --dtype float16 --models resnet18,resnet50,mobilenet_v3_small,efficientnet_b0,convnext_tiny,swin_t,regnet_x_400mf,vit \
      --out "$out/zoo_vision.json" > "$out/zoo_vision.txt" 2>&1
    grep -E "^FAIL|passed" "$out/zoo_vision.txt" | tail -20
    unset TRITONFUSE_MEASURE TRITONFUSE_AUTOTUNE ;;
  s47)
    # prepared in the 47th session (no device came): the GPU-only test failures of the 46th session's run,
    # mended then, with full tracebacks; the autocast tests of prepare_graph; a part of the zoo (a.log)
    OUT=$out timeout 560 bash scripts/s47_a.sh; grep -E "passed|failed|^FAIL" "$out/a.log" | tail -12 ;;
  s48)
    # prepared in the 48th session: the 47th's five mended GPU-only failures, then zoo2's float and int8 modes
    OUT=$out timeout 570 bash scripts/s48_a.sh; grep -E "passed|failed|^FAIL|^=== done" "$out/a.log" | tail -12 ;;
  train48)
    # prepared in the 48th session: the autocast training step's GEMM sites (linear_act.prepare_graph's weight
    # transposes) and the attention training tests on CUDA, the training zoo (train, autocast-train), then the
    # backward at the train steps' attention shapes (two more bwd configs since the 48th), then the train-step
    # bench of vit_b_16 (not yet timed with the joint-graph attention pass) and bert-base again
    # (and the 48th run's linear_act shard with one failure, its log lost: most likely the budget test, mended)
    timeout -s INT 220 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_linear_act.py \
      tests/test_attention.py -k "own_weight_transpose or training_sdpa or llama_training or measuring_budget \
      or fast_silu or tma_gated or same_shape_sites or sites_of_a_cuda_graph or int8_handoff_needs" \
      > "$out/train_tests.txt" 2>&1
    tail -2 "$out/train_tests.txt"
    TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0 timeout 150 $PY scripts/zoo.py --dtype float16 \
      --models llama,gpt2,bert,vit,qwen3,falcon --modes train,autocast-train --out "$out/zoo_train.json" \
      > "$out/zoo_train.txt" 2>&1; grep -E "^FAIL|passed" "$out/zoo_train.txt"
    timeout 120 $PY benchmarks/bench_attention.py --only bwd_model --out "$out/bench_attention_bwd.json" \
      > "$out/bench_attention_bwd.txt" 2>&1; grep -E "backward|sdpa|tritonfuse|best config|FAILED" "$out/bench_attention_bwd.txt" | head -12
    TRITONFUSE_MEASURE_BUDGET_S=inf timeout 270 $PY -m tritonfuse bench --train --models vit_b_16,bert-base \
      --modes eager,inductor,tritonfuse --no-progress --out "$out/" 2>&1 | grep -v Warn | tail -12 ;;
  zoo2)
    # prepared in the 47th session: the zoo's architectures added then (Gemma, Gemma 2, Qwen3, GPT-NeoX, Falcon,
    # BLOOM, GPT-J, Mixtral, ALBERT, ELECTRA, DeBERTa-v2, BART; HF ViT, CLIP's vision tower, Whisper's encoder)
    # on the GPU in fp16, float and int8, then under autocast; the CPU interpreter passed them all
    export TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0
    timeout 400 $PY scripts/zoo.py --dtype float16 --models gemma,gemma2,qwen3,gpt-neox,falcon,bloom,gptj,mixtral,albert,electra,deberta-v2,bart,vit-hf,clip-vision,whisper-encoder \
      --out "$out/zoo_hf2.json" > "$out/zoo_hf2.txt" 2>&1
    grep -E "^FAIL|passed" "$out/zoo_hf2.txt" | tail -25
    timeout 180 $PY scripts/zoo.py --dtype float16 --models gemma,qwen3,gpt-neox,mixtral,bart,clip-vision \
      --modes autocast,int8-autocast --out "$out/zoo_hf2_autocast.json" > "$out/zoo_hf2_autocast.txt" 2>&1
    grep -E "^FAIL|passed" "$out/zoo_hf2_autocast.txt" | tail -12
    unset TRITONFUSE_MEASURE TRITONFUSE_AUTOTUNE ;;
  zoo_modes)
    # prepared in the 46th session: scripts/zoo.py's other modes on the GPU (fp16, every servable site replaced):
    # training steps (float, int8: nothing quantized, frozen Linears), changing shapes, autocast, KV-cache
    # decode. The CPU interpreter passed them all after the 46th session's fixes (GQA under autocast; int8 in
    # training graphs)
    export TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0
    timeout 300 $PY scripts/zoo.py --dtype float16 --models bert,gpt2,llama,phi3 \
      --modes train,int8-train,dynamic,int8-dynamic,autocast,int8-autocast,decode,int8-decode \
      --out "$out/zoo_modes_hf.json" > "$out/zoo_modes_hf.txt" 2>&1
    grep -E "^FAIL|passed" "$out/zoo_modes_hf.txt" | tail -25
    timeout 240 $PY scripts/zoo.py --dtype float16 --models resnet18,vit,convnext_tiny \
      --modes train,dynamic,int8-dynamic,autocast,int8-autocast,nchw --out "$out/zoo_modes_vision.json" \
      > "$out/zoo_modes_vision.txt" 2>&1
    grep -E "^FAIL|passed" "$out/zoo_modes_vision.txt" | tail -20
    unset TRITONFUSE_MEASURE TRITONFUSE_AUTOTUNE ;;
  int8_42)
    # issue 7, prepared in the 42nd session: the GPU tests of its changes (the rounding test's device fix, the
    # LayerNorm walk through a permute, the handoff's report), then bench_int8.py's MLP section (failed before
    # timing in the 42nd: fixed). Then: TRITONFUSE_LOG=summary MODELS=bert-base,vit_b_16 bash
    # scripts/gpu_session.sh graphs (the row kernel's 4 warps and the walk in whole models)
    timeout -s INT 200 $PY -m pytest tests/test_int8.py tests/test_linear_act.py -q -p no:cacheprovider \
      -k "rounds_half or permute_that_keeps or handoff or quant_rows or quantized_on_load" \
      > "$out/int8_42_tests.txt" 2>&1; tail -3 "$out/int8_42_tests.txt"
    timeout 300 $PY benchmarks/bench_int8.py --sections mlp --out "$out/kernels.json" > "$out/bench_mlp.txt" 2>&1
    grep -E "int8_mlp|row kernel path|measurement|FAILED|Error" "$out/bench_mlp.txt" | tail -40 ;;
  ws41)
    # issue 5, prepared in the 41st session: kernels.attention's warp-specialized forward (off by default:
    # TRITONFUSE_WARP_SPECIALIZE). Its GPU tests first (every config against the fp64 reference), then the forward cases
    # of bench_attention.py with the sweep; rows merged with: python benchmarks/common.py --merge kernels.json
    timeout -s INT 200 $PY -m pytest tests/test_attention.py -q -p no:cacheprovider -k "warp_specialized or tma" \
      > "$out/ws_tests.txt" 2>&1; tail -3 "$out/ws_tests.txt"
    timeout 360 $PY benchmarks/bench_attention.py --sweep --only fwd --budget 260 --out "$out/kernels.json" \
      > "$out/bench_attention.txt" 2>&1
    grep -E "^forward|^backward|^decode|tritonfuse|sdpa |sweep|check|best config|FAILED|off:" \
      "$out/bench_attention.txt" | tail -60 ;;
  ws41_int8)
    # issue 7, prepared in the 41st session: the W8A8 TMA GEMM's warp-specialized configs ("ws" in the sweep's
    # labels; each compared with the autotuned kernel's output), at the four GEMM shapes, with the int8 GPU tests
    TRITONFUSE_WARP_SPECIALIZE=1 timeout -s INT 150 $PY -m pytest tests/test_int8.py -q -p no:cacheprovider \
      -k "tma_and_pointer or warp_specialized or int_mm" > "$out/ws_int8_tests.txt" 2>&1; tail -3 "$out/ws_int8_tests.txt"
    timeout 300 $PY benchmarks/bench_int8.py --sweep --sweep-match " ws" --sections gemm --out "$out/kernels-int8.json" \
      > "$out/bench_int8_ws.txt" 2>&1
    grep -E "int8_gemm|sweep|autotuned|differs|FAILED|compile failed" "$out/bench_int8_ws.txt" | tail -70 ;;
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
    lscpu > "$out/lscpu.txt" 2>&1; lscpu -p=CPU,CORE > "$out/cpus.txt" 2>&1
    half_cpus() {  # the CPUs of half the physical cores (both hyperthreads of each), so halves share no core
      local cores m cut
      cores=$(grep -v '^#' "$out/cpus.txt" | cut -d, -f2 | sort -n -u); m=$(echo "$cores" | wc -l)
      cut=$(echo "$cores" | sed -n "$((m / 2))p")
      grep -v '^#' "$out/cpus.txt" | awk -F, -v cut="$cut" -v half="$1" \
        '(($2 + 0 > cut + 0) == (half == 1)) {printf "%s%s", (k++ ? "," : ""), $1}'
    }
    run_steps() {  # run_steps GPU HALF DIR STEPS...: each step's output in DIR
      local gpu=$1 half=$2 dir=$3; shift 3
      export CUDA_VISIBLE_DEVICES=$gpu TORCHINDUCTOR_COMPILE_THREADS=$((h - 4)) TRITONFUSE_MEASURE_BUDGET_S=inf
      local cpus; cpus=$(half_cpus "$half")
      [ -n "$cpus" ] || cpus=$((half * h))-$((half * h + h - 1))
      echo "GPU $gpu: CPUs $cpus" > "$dir/cpus.txt"
      local pin="taskset -c $cpus"
      for step in "$@"; do
        case $step in
          zoo) timeout "${ZOO_TIMEOUT:-520}" $pin $PY -m tritonfuse bench --models "$models" --modes \
                 "${MODES:-eager,inductor,tritonfuse,tritonfuse-int8}" ${ZOO_ARGS:-} --no-progress --out "$dir/" > "$dir/zoo.txt" 2>&1 ;;
          # the same models with every tritonfuse op called, none inlined into Inductor's code
          noinline) mkdir -p "$dir/noinline"; TRITONFUSE_INLINE=0 timeout "${NOINLINE_TIMEOUT:-200}" $pin $PY -m \
                      tritonfuse bench --models "$models" --modes tritonfuse --no-progress --out "$dir/noinline/" \
                      > "$dir/noinline.txt" 2>&1 ;;
          profile) timeout "${PROFILE_TIMEOUT:-200}" $pin $PY -m tritonfuse profile "${PROFILE_MODEL:-bert-base}" \
                     --modes "${PROFILE_MODES:-eager,inductor,tritonfuse}" --what blocks --no-progress > "$dir/profile.txt" 2>&1 ;;
          compile_profile) timeout "${ZOO_TIMEOUT:-520}" $pin $PY scripts/compile_profile.py --model \
                             "${COMPILE_MODEL:-bert-base}" --out "$dir/compile" > "$dir/compile.txt" 2>&1 ;;
          compile) timeout "${COMPILE_TIMEOUT:-240}" $pin $PY scripts/compile_profile.py --model \
                     "${COMPILE_MODEL:-bert-base}" --profile-modes "" --out "$dir/compile" > "$dir/compile.txt" 2>&1 ;;
          launch) timeout 150 $pin $PY benchmarks/bench_launch.py --out "$dir/kernels-launch.json" > "$dir/launch.txt" 2>&1 ;;
          int8) timeout "${INT8_TIMEOUT:-240}" $pin $PY benchmarks/bench_int8.py ${INT8_ARGS:-} \
                  --out "$dir/kernels-int8.json" > "$dir/int8.txt" 2>&1 ;;
          norm) timeout "${NORM_TIMEOUT:-300}" $pin $PY benchmarks/bench_norm_residual.py ${NORM_ARGS:-} \
                  --out "$dir/kernels-norm.json" > "$dir/norm.txt" 2>&1 ;;
          norm_sweep) timeout "${SWEEP_TIMEOUT:-240}" $pin $PY scripts/norm_sweep.py ${SWEEP_ARGS:-} \
                        > "$dir/norm_sweep.jsonl" 2> "$dir/norm_sweep.err" ;;
          probe2) timeout 120 $pin $PY scripts/decode_probe2.py > "$dir/probe2.txt" 2>&1 ;;
          decode_sweep) timeout "${DSWEEP_TIMEOUT:-240}" $pin $PY scripts/decode_sweep.py ${DSWEEP_ARGS:-} \
                          > "$dir/decode_sweep.jsonl" 2> "$dir/decode_sweep.err" ;;
          # explain:MODEL[:QUANT]: every site's decision and reason (the measured choices run, nothing timed after)
          explain:*) em=${step#explain:}; eq=none; [[ $em == *:* ]] && eq=${em#*:} && em=${em%%:*}
                     timeout "${EXPLAIN_TIMEOUT:-240}" $pin $PY -m tritonfuse explain "$em" --quant "$eq" --no-progress \
                       > "$dir/explain-$em-$eq.txt" 2>&1 ;;
          tma_probe) timeout 120 $pin $PY scripts/device_tma_probe.py > "$dir/tma_probe.txt" 2>&1 ;;
          # does shape padding take hand-written attention's GEMMs away (scripts/pad_mm_probe.py)?
          pad_probe) timeout "${PAD_TIMEOUT:-240}" $pin $PY scripts/pad_mm_probe.py --out "$dir/pad_mm.json" \
                       > "$dir/pad_mm.txt" 2>&1 ;;
          # one BERT MLP block: Inductor, int8 GEMMs inlined with graph-constant weights, int8 op calls
          inline_probe) timeout "${PROBE_TIMEOUT:-300}" $pin $PY scripts/int8_inline_probe.py --layers 1 \
                          --out "$dir/p" > "$dir/inline_probe.txt" 2>&1 ;;
          # the zoo's models in int8 with patterns.linear_act.INT8_CONSTANTS on (off by default)
          int8_inline) timeout "${ZOO_TIMEOUT:-520}" $pin $PY -c "import sys; import tritonfuse.patterns.linear_act as L
L.INT8_CONSTANTS = True
from tritonfuse.cli import main
sys.exit(main(['bench', '--models', '$models', '--modes', 'inductor,tritonfuse-int8', '--no-progress', '--out', '$dir/inline/']))" \
                         > "$dir/int8_inline.txt" 2>&1 ;;
          conv) timeout "${CONV_TIMEOUT:-300}" $pin $PY benchmarks/bench_conv_bn.py --budget "${CONV_BUDGET:-240}" \
                  ${CONV_ARGS:-} --out "$dir/conv" > "$dir/conv.txt" 2>&1 ;;
          linear) timeout 150 $pin $PY benchmarks/bench_linear_act.py --quick > "$dir/linear.txt" 2>&1 ;;
          attention) timeout 120 $pin $PY benchmarks/bench_attention.py --budget 60 > "$dir/attention.txt" 2>&1 ;;
          # SIGINT: pytest still prints its failures when the time runs out
          tests) timeout -s INT "${TESTS_TIMEOUT:-150}" $pin $PY -m pytest tests -k "${TESTS_K:-cuda}" -q \
                   -p no:cacheprovider -rf --tb=short -p no:logging > "$dir/tests.txt" 2>&1 ;;
          # train or train:MODEL[,MODEL] (this GPU's models; default TRAIN_MODELS)
          train|train:*) tm=${step#train}; tm=${tm#:}; timeout "${TRAIN_TIMEOUT:-150}" $pin $PY -m tritonfuse bench \
                   --train --models "${tm:-${TRAIN_MODELS:-bert-base}}" --modes "${TRAIN_MODES:-eager,inductor,tritonfuse}" \
                   --no-progress --out "$dir/" >> "$dir/train.txt" 2>&1 ;;
          models) timeout "${GPU1_TIMEOUT:-220}" $pin $PY -m tritonfuse bench --models "$GPU1_MODELS" --modes \
                    "${GPU1_MODES:-eager,inductor,tritonfuse}" ${GPU1_ARGS:-} --no-progress --out "$dir/" > "$dir/models.txt" 2>&1 ;;
        esac
      done
      find benchmarks/results -name "kernels-*.json" -newer "$out/install.log" -exec cp {} "$dir/" \;  # this GPU's
    }
    # shellcheck disable=SC2086
    (run_steps 0 0 "$out/zoo" ${GPU0_STEPS:-zoo}) &
    # shellcheck disable=SC2086
    (run_steps 1 1 "$out/k" ${GPU1_STEPS:-linear attention tests train}) &
    wait
    tar czf "$final/pair.tgz" -C "$out" . ;;
  *) echo "phases: tests, bench, rounds, verify, inline, convs, static, graphs, extra, pair"; exit 2 ;;
esac
