#!/usr/bin/env bash
# 47th session, first device call: the GPU-only test failures of the 46th session's run (full tracebacks), today's
# new tests, then a part of the zoo in fp16 (scripts/zoo.py), all into $OUT/a.log
set -u
source "$(dirname "$0")/device_head.sh"
timeout -s INT 240 $PY -m pytest -q -p no:cacheprovider -rf --tb=long \
  "tests/test_linear_act.py::test_the_vendor_side_of_a_timing_runs_the_sites_activation" \
  tests/test_linear_act.py::test_int8_fused_quantization_is_charged_to_the_gemms_sharing_it \
  tests/test_linear_act.py::test_a_probe_launches_through_the_launcher \
  "tests/test_linear_act.py::test_int8_sites_share_one_quantization" \
  tests/test_conv_bn.py::test_choice_mapping \
  "tests/test_conv_bn.py::test_a_survey_sends_the_compiles_of_a_conv_left_without_its_add" \
  tests/test_conv_bn.py::test_int8_is_not_served_in_a_training_graph \
  tests/test_launch.py tests/test_cli.py::test_bench_small_cpu_writes_results_contract \
  tests/test_cli.py::test_profile_names_layers_and_kernels \
  tests/test_int8.py::test_cached_weight_serves_only_its_own_storage \
  "tests/test_int8.py::test_hf_decoder_with_weights_read_through_views" \
  "tests/test_linear_act.py::test_autocast_casts_after_a_view_move_above_it" \
  "tests/test_linear_act.py::test_gated_mlp_under_autocast_reads_one_cast" >> "$OUT/a.log" 2>&1
echo "=== zoo (fp16, float and int8, every site replaced)" >> "$OUT/a.log"
TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0 timeout 170 $PY scripts/zoo.py --dtype float16 \
  --models bert,gpt2,llama,falcon,resnet18,vit --modes float,int8,autocast --out "$OUT/zoo.json" >> "$OUT/a.log" 2>&1
