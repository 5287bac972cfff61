#!/usr/bin/env bash
# The standing device call for the trainer (one `run`, ~8-9 minutes on an H100/H200): build, the
# GPU tests under the current defaults (with their measured errors), the kernels' "[bench]"
# timings, then the 1.3B distillation step (16 x 2048, every layer recomputed, layers 0-11 keep
# in_proj: configs/distill_1.3b.yaml's settings) in three variants side by side:
#   default  - the defaults;
#   tf32     - without the two SSD roundings that are default since 2026-12-05
#              (DFSSM_SSD_STATES_BF16=0 DFSSM_SSD_BWD_TF32_TRUNC=0): what they are worth;
#   plain    - the non-binarized student (the issue's baseline), same settings.
# Results: $OUT/bench_distill.txt, $OUT/kernel_bench.txt, the tests' logs in $OUT.
#   usage (device tool): scripts/device/standing_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
K="distill.activation_checkpointing_keep_in_proj=$(seq -s, 0 11)"
PLAIN="student.quantize_in_proj=false student.quantize_out_proj=false student.embedding=fp16"
TESTS=${TESTS:-"test_gpu_train_kernels test_gpu_model"} BENCH=${BENCH:-1} V130= STEPS=${STEPS:-4} \
  V13="default:$K|tf32:DFSSM_SSD_STATES_BF16=0 DFSSM_SSD_BWD_TF32_TRUNC=0 $K|plain:$PLAIN $K" \
  bash scripts/device/train_fused.sh
