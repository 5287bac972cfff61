#!/usr/bin/env bash
# The CPU runtime on the GPU machine's host CPU (it has AVX-512, which the dev box lacks):
# builds, runs the kernel-vs-reference tests on every ISA, and benchmarks.
#   usage: scripts/device/runtime_cpu.sh [quick|full]
#   quick: torch-free build (fast): test_cpu_kernels, dfssm bench --kernels, 1.3B decode benches.
#   full:  also the LibTorch build and test_runtime (runtime vs the LibTorch student, every ISA).
set -uo pipefail
cd "$(dirname "$0")/../.."
WHAT=${1:-quick}
OUT=${OUT:-/tmp/dfssm-out}
mkdir -p "$OUT"
rc=0
lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket|NUMA node\(s\)|L3" | tee "$OUT/cpu.txt"
grep -o -w -E "avx512(f|bw|vl|dq|_vnni|vpopcntdq)|avx2" /proc/cpuinfo | sort | uniq -c | tee -a "$OUT/cpu.txt"
GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
if [[ $WHAT == quick || $WHAT == full ]]; then
  cmake -S . -B build-rtdev $GEN -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=OFF \
    >"$OUT/configure_rt.log" 2>&1 || { tail -30 "$OUT/configure_rt.log"; exit 1; }
  cmake --build build-rtdev -j "$(nproc)" --target dfssm test_cpu_kernels >"$OUT/build_rt.log" 2>&1 \
    || { grep -E "error" "$OUT/build_rt.log" | head -30; exit 1; }
  build-rtdev/bin/test_cpu_kernels 2>&1 | tee "$OUT/test_cpu_kernels.txt" | tail -15 || rc=1
  build-rtdev/bin/dfssm bench --kernels --seconds 0.15 2>&1 | tee "$OUT/bench_kernels.txt"
  B=build-rtdev/bin/dfssm
  for act in i16 f32 i8; do
    for th in 1 16; do
      DFSSM_CPU_ISA=avx512 $B bench --geometry mamba2-1.3b --random --threads $th --act $act --prefill 64 --steps 8 \
        --batch2 8 $( [[ $th == 16 && $act == i16 ]] || echo --no-membw ) 2>&1 | tee -a "$OUT/bench_13b.txt" || rc=1
    done
  done
  DFSSM_CPU_ISA=avx512 $B bench --geometry mamba2-1.3b --random --threads 16 --prefill 64 --steps 8 --batch2 0 \
    --state-dtype f16 --no-membw 2>&1 | tee -a "$OUT/bench_13b.txt" || rc=1
fi
if [[ $WHAT == full ]]; then
  PY=$(command -v python3)
  cmake -S . -B build-device $GEN -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$PY" -DDFSSM_CUDA=ON \
    >"$OUT/configure.log" 2>&1 || { tail -50 "$OUT/configure.log"; exit 1; }
  cmake --build build-device -j "$(nproc)" --target test_runtime dfssm >"$OUT/build.log" 2>&1 \
    || { grep -E "error" "$OUT/build.log" | head -40; exit 1; }
  build-device/bin/test_runtime 2>&1 | tee "$OUT/test_runtime.txt" | grep -E "worst|passed|failed|FAILED" || rc=1
  build-device/bin/dfssm bench --engine torch --geometry mamba2-1.3b --device cpu --dtype fp32 --batch 1 \
    --prefill 64 --steps 8 --warmup 1 --reps 2 2>&1 | tee "$OUT/bench_torch_cpu.txt" || rc=1
fi
exit $rc
