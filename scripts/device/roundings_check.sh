#!/usr/bin/env bash
# One device call (~9 minutes): the GPU tests under the defaults and again with the two SSD
# roundings flipped by ROUNDINGS (default "DFSSM_SSD_STATES_BF16=0 DFSSM_SSD_BWD_TF32_TRUNC=0"; they
# are on by default since 2026-12-05, when this script checked them with =1 before that), then the
# 1.3B step (16 x 2048, configs/distill_1.3b.yaml's settings) for STEPS steps: defaults, the plain
# student, and the flipped roundings.
#   usage (device tool): [STEPS=8] scripts/device/roundings_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dfssm-out}; mkdir -p "$OUT"
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" \
  -DDFSSM_CUDA=ON -DDFSSM_CUDA_LINEINFO=OFF >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
cmake --build build-device -j "$(nproc)" --target dfssm test_gpu_train_kernels test_gpu_model >"$OUT/build.log" 2>&1 ||
  { grep -A3 error "$OUT/build.log" | head -40; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
tests() {  # label, then env assignments
  local label=$1; shift
  for t in test_gpu_train_kernels test_gpu_model; do
    env "$@" build-device/bin/$t >"$OUT/${t}_$label.log" 2>&1; echo "$t [$label]: rc $?"
    grep -A3 -E "FAILED" "$OUT/${t}_$label.log" | head -30
    tail -2 "$OUT/${t}_$label.log"
  done
}
tests defaults
R=${ROUNDINGS:-DFSSM_SSD_STATES_BF16=0 DFSSM_SSD_BWD_TF32_TRUNC=0}
# shellcheck disable=SC2086
tests roundings $R
echo "tests done ($(( $(date +%s) - t0 )) s)"
K="distill.activation_checkpointing_keep_in_proj=$(seq -s, 0 11)"
PLAIN="student.quantize_in_proj=false student.quantize_out_proj=false student.embedding=fp16"
AC=all PROFILE= VARIANTS="default:$K|plain:$PLAIN $K|flipped:$R $K" \
  bash scripts/device/bench_distill.sh 16 "${STEPS:-8}"
echo "total $(( $(date +%s) - t0 )) s"
