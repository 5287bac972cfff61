#!/usr/bin/env bash
# The runtime's CUDA backend on the GPU machine, in one call: torch-free build of only what it
# needs, the gpu tests (kernels vs references, CUDA vs CPU engine, graph vs no graph, INT8
# prefill), compute-sanitizer memcheck on the kernel tests, then the 1.3B benchmarks and, in
# the same call, the baselines: HF transformers (scripts/device/bench_hf.py) and the LibTorch
# fp16 teacher (`dfssm bench --engine torch`, from a torch build made in the background while
# the tests run). Logs go to $OUT.
#   usage: scripts/device/cuda_runtime.sh [all|test|bench]   (default all)
set -uo pipefail
cd "$(dirname "$0")/../.."
WHAT=${1:-all}
OUT=${OUT:-/tmp/dfssm-out}
mkdir -p "$OUT"
BUILD=build-cudart
rc=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUT/gpu.txt"
GEN=""; command -v ninja >/dev/null && GEN="-G Ninja"
# Test sources another work in progress lists but has not written yet: stub them in this
# disposable copy only (they are not built here).
for f in $(grep -rhoE "test_[a-z_0-9]+\.cpp" tests/CMakeLists.txt tests/*.cmake 2>/dev/null | sort -u); do
  [[ -f tests/$f ]] || { echo "(stub tests/$f)"; : >"tests/$f"; }
done
t0=$(date +%s)
cmake -S . -B $BUILD $GEN -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >"$OUT/configure.log" 2>&1 \
  || { tail -30 "$OUT/configure.log"; exit 1; }
targets="dfssm test_cuda_runtime test_cuda_prefill"
grep -q test_cuda_kernels "$BUILD"/build.ninja "$BUILD"/Makefile 2>/dev/null && targets="$targets test_cuda_kernels"
cmake --build $BUILD -j "$(nproc)" --target $targets >"$OUT/build.log" 2>&1 \
  || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
TORCH_PID=""
if [[ $WHAT == all || $WHAT == bench ]]; then  # the LibTorch teacher baseline's build, in the background
  ( cmake -S . -B build-device $GEN -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" \
      -DDFSSM_CUDA=ON >"$OUT/configure_torch.log" 2>&1 && \
    nice -n 10 cmake --build build-device -j "$(nproc)" --target dfssm >"$OUT/build_torch.log" 2>&1 ) &
  TORCH_PID=$!
fi

if [[ $WHAT == all || $WHAT == test ]]; then
  timeout 240 $BUILD/bin/test_cuda_runtime >"$OUT/test_cuda_runtime.txt" 2>&1 || rc=1
  grep -E "seed|rel err|engines|FAILED|passed|failed|error" "$OUT/test_cuda_runtime.txt" | grep -v "^  step [3-9]"
  timeout 240 $BUILD/bin/test_cuda_prefill >"$OUT/test_cuda_prefill.txt" 2>&1 || rc=1
  grep -E "rel|FAILED|passed|failed" "$OUT/test_cuda_prefill.txt" | head -40
  [[ -x $BUILD/bin/test_cuda_kernels ]] && { timeout 60 $BUILD/bin/test_cuda_kernels 2>&1 | tail -2 || rc=1; }
  CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [[ -n $CS ]]; then
    # Kernel tests at 1.3B shapes and the session's save/restore path (a few hundred launches).
    for t in "CUDA in_proj path*" "CUDA out_proj path*" "CUDA SSM step*" "CUDA int8 LM head*" "CUDA session state save*"; do
      timeout 150 "$CS" --tool memcheck --leak-check no --error-exitcode 9 $BUILD/bin/test_cuda_runtime "$t" \
        >>"$OUT/memcheck.txt" 2>&1 && echo "memcheck ok: $t" || { echo "memcheck FAILED ($?): $t"; rc=1; }
    done
    [[ -x $BUILD/bin/test_cuda_kernels ]] && { timeout 60 "$CS" --tool memcheck --error-exitcode 9 \
      $BUILD/bin/test_cuda_kernels >>"$OUT/memcheck.txt" 2>&1 && echo "memcheck ok: test_cuda_kernels" \
      || { echo "memcheck FAILED: test_cuda_kernels"; rc=1; }; }
    timeout 200 "$CS" --tool memcheck --leak-check no --error-exitcode 9 $BUILD/bin/test_cuda_prefill \
      >>"$OUT/memcheck.txt" 2>&1 && echo "memcheck ok: test_cuda_prefill" || { echo "memcheck FAILED ($?): test_cuda_prefill"; rc=1; }
    grep -E "ERROR SUMMARY" "$OUT/memcheck.txt" | sort | uniq -c
  else
    echo "compute-sanitizer not found"
  fi
fi
if [[ $WHAT == all || $WHAT == bench ]]; then
  B=$BUILD/bin/dfssm
  TORCH_OK=0  # the background build competes for the CPU: let it finish before timing anything
  if [[ -n $TORCH_PID ]]; then t1=$(date +%s); wait $TORCH_PID && [[ -x build-device/bin/dfssm ]] && TORCH_OK=1; echo "torch build waited $(( $(date +%s) - t1 )) s, ok=$TORCH_OK"; fi
  timeout 150 $B bench --device cuda --geometry mamba2-1.3b --random 2>&1 | tee "$OUT/bench_cuda.txt" || rc=1
  timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --state-dtype f16 --prefill 256 --batches 1,8 \
    --no-membw 2>&1 | grep -E "engine|decode|prefill" | tee -a "$OUT/bench_cuda.txt" || rc=1
  timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --no-pdl --prefill 256 --batches 1 --no-membw 2>&1 \
    | grep -E "engine|decode|prefill" | tee -a "$OUT/bench_cuda.txt" || rc=1
  timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --no-graph --prefill 256 --batches 1 --no-membw 2>&1 \
    | grep -E "engine|decode|prefill" | tee -a "$OUT/bench_cuda.txt" || rc=1
  timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --prefill 2048 --prefill-chunk 2048 --batches 1 \
    --no-membw 2>&1 | grep -E "prefill" | sed 's/^/chunk 2048: /' | tee -a "$OUT/bench_cuda.txt" || rc=1
  # Baselines, same machine, same call.
  PYTHONUNBUFFERED=1 timeout 240 python3 scripts/device/bench_hf.py --prefill 2048 --steps 24 --batches 1,8 2>&1 \
    | grep -v -E "Warning|falling back" | tee "$OUT/bench_hf.txt" || rc=1
  if [[ $TORCH_OK == 1 ]]; then
    timeout 180 build-device/bin/dfssm bench --engine torch --geometry mamba2-1.3b --device cuda --dtype fp16 \
      --batch 1 --prefill 2048 --steps 32 --warmup 2 --reps 5 2>&1 | tee "$OUT/bench_torch.txt" || rc=1
  else
    echo "torch build failed or missing:"; tail -5 "$OUT/build_torch.log" 2>/dev/null; rc=1
  fi
fi
exit $rc
