#!/usr/bin/env bash
# One device call: build the dfssm binary against the device's torch, then profile the 1.3B
# distillation step (DFSSM_PROFILE_STEP, src/distill/profile.h) and time training variants.
#   usage: [B=16] [STEPS=3] [AC=all] [PROFILE=1] [VARIANTS="name:overrides|..."] scripts/device/train_profile.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dfssm-out}; mkdir -p "$OUT"
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" \
  -DDFSSM_CUDA=ON >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
cmake --build build-device -j "$(nproc)" --target dfssm ${EXTRA_TARGETS:-} >"$OUT/build.log" 2>&1 || { grep -A3 error "$OUT/build.log" | head -40; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
export PROFILE=${PROFILE-1} AC=${AC:-all}
export VARIANTS=${VARIANTS:-"c256:|c128:distill.ssd_chunk=128|c64:distill.ssd_chunk=64"}
bash scripts/device/bench_distill.sh "${B:-16}" "${STEPS:-3}"
echo "total $(( $(date +%s) - t0 )) s"
