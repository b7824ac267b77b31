#!/usr/bin/env bash
# 48th session, first device call: the 5 GPU-only failures of the 47th session's run (mended in f2987eb, full
# tracebacks), the attention training tests (joint-graph pass), then the architectures added to scripts/zoo.py
# in the 47th session in fp16, float and int8 (a.log, zoo_hf2.json)
set -u
source "$(dirname "$0")/device_head.sh"
timeout -s INT 170 $PY -m pytest -q -p no:cacheprovider -rf --tb=long \
  tests/test_linear_act.py::test_int8_fused_quantization_is_charged_to_the_gemms_sharing_it \
  tests/test_linear_act.py::test_a_probe_launches_through_the_launcher \
  "tests/test_linear_act.py::test_int8_sites_share_one_quantization" \
  "tests/test_conv_bn.py::test_a_survey_sends_the_compiles_of_a_conv_left_without_its_add" \
  tests/test_launch.py::test_worker_compile_fills_the_disk_cache_a_compile_then_reads >> "$OUT/a.log" 2>&1
echo "=== attention in training graphs (the joint-graph pass)" >> "$OUT/a.log"
timeout -s INT 150 $PY -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_attention.py \
  -k "training_sdpa or llama_training or served_from_the_cache" >> "$OUT/a.log" 2>&1
echo "=== zoo2 (fp16, float and int8, every site replaced)" >> "$OUT/a.log"
TRITONFUSE_MEASURE=0 TRITONFUSE_AUTOTUNE=0 timeout ${ZOO_S:-250} $PY scripts/zoo.py --dtype float16 \
  --models ${ZOO_MODELS:-gemma,qwen3,gpt-neox,falcon,bloom,gptj,mixtral,albert,electra,deberta-v2,bart,vit-hf,clip-vision,whisper-encoder,gemma2} \
  --out "$OUT/zoo_hf2.json" >> "$OUT/a.log" 2>&1
echo "=== done rc=$?" >> "$OUT/a.log"
