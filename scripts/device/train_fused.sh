#!/usr/bin/env bash
# One device call for the fused training kernels: build dfssm + the gpu SSD test, run the test,
# then time the 1.3B distillation step (fused vs ATen SSD, chunk sizes; kernel profile of the
# first variant) and the 130m geometry's step (sizes the quality run).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dfssm-out}; mkdir -p "$OUT"
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" \
  -DDFSSM_CUDA=ON >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
cmake --build build-device -j "$(nproc)" --target dfssm ${EXTRA_TARGETS:-test_gpu_train_kernels test_gpu_model} >"$OUT/build.log" 2>&1 ||
  { grep -A3 error "$OUT/build.log" | head -40; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
for t in ${TESTS:-test_gpu_train_kernels test_gpu_model}; do
  build-device/bin/$t 2>&1 | grep -E "WARN|with expansion|passed|failed|FAILED|REQUIRE|error" | grep -v "^$" | head -60
done
echo "tests done ($(( $(date +%s) - t0 )) s)"
AC=all PROFILE=${PROFILE-1} VARIANTS="${V13:-f128:distill.ssd_chunk=128|f256:|aten128:DFSSM_SSD_FUSED=0 DFSSM_CONV_FUSED=0 DFSSM_NORM_FUSED=0 distill.ssd_chunk=128}" \
  bash scripts/device/bench_distill.sh "${B:-16}" 3
[[ -n ${V130:-x} ]] && GEOM=mamba2-130m L=1024 PROFILE= VARIANTS="${V130:-130m:}" bash scripts/device/bench_distill.sh 32 4
echo "total $(( $(date +%s) - t0 )) s"
