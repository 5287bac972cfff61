#!/usr/bin/env bash
# One call on the GPU machine (device tool): build against the device's own torch
# (python3's torch.utils.cmake_prefix_path) and system packages, run the gpu-labelled tests
# and the CPU tests, then the 1.3B-geometry benchmarks. Logs go to $OUT when it is set.
#   usage: scripts/device/build_and_test.sh [build|test|bench|all]   (default all)
set -uo pipefail
cd "$(dirname "$0")/../.."
WHAT=${1:-all}
OUT=${OUT:-/tmp/dfssm-out}
mkdir -p "$OUT"
BUILD=build-device
PY=$(command -v python3)
rc=0

if [[ $WHAT == all || $WHAT == build ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
  cmake -S . -B $BUILD $GEN -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$PY" -DDFSSM_CUDA=ON \
    >"$OUT/configure.log" 2>&1 || { tail -50 "$OUT/configure.log"; exit 1; }
  grep -E "^-- dfssm" "$OUT/configure.log"
  cmake --build $BUILD -j "$(nproc)" >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
  echo "build ok"
fi
if [[ $WHAT == all || $WHAT == test ]]; then
  ctest --test-dir $BUILD --output-on-failure -j 4 -LE gpu >"$OUT/ctest_cpu.log" 2>&1 || rc=1
  tail -5 "$OUT/ctest_cpu.log"
  ctest --test-dir $BUILD --output-on-failure -V -L gpu >"$OUT/ctest_gpu.log" 2>&1 || rc=1
  grep -E "rel err|passed|failed|Passed|Failed|FAILED" "$OUT/ctest_gpu.log" | head -40
fi
if [[ $WHAT == all || $WHAT == bench ]]; then
  for dt in fp16 bf16; do
    $BUILD/bin/dfssm bench --engine torch --geometry mamba2-1.3b --device cuda --dtype $dt \
      --batch 1 --prefill 2048 --steps 32 --warmup 2 --reps 5 2>&1 | tee -a "$OUT/bench_torch.txt" || rc=1
  done
fi
exit $rc
