#!/usr/bin/env bash
# Quick iteration call for the CUDA runtime: torch-free build, the gpu tests (incl. the 1.3B
# layer sweep), the 1.3B decode bench, per-kernel durations from ncu (one decode step, kernels
# serialized). Optional: HF=1 also runs the HF transformers baseline.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dfssm-out}; mkdir -p "$OUT"
BUILD=build-cudart
t0=$(date +%s)
cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
T="dfssm test_cuda_runtime"; [[ -f tests/test_cuda_prefill.cpp && ${PREFILL:-0} == 1 ]] && T="$T test_cuda_prefill"
cmake --build $BUILD -j 16 --target $T >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
timeout 240 $BUILD/bin/test_cuda_runtime >"$OUT/test_cuda_runtime.txt" 2>&1
grep -E "seed|layers|engines|rel err|FAILED|passed|failed" "$OUT/test_cuda_runtime.txt" | grep -v "step [3-9]" | head -80
[[ -x $BUILD/bin/test_cuda_prefill ]] && { timeout 200 $BUILD/bin/test_cuda_prefill >"$OUT/test_cuda_prefill.txt" 2>&1; grep -E "rel|FAILED|passed|failed|error" "$OUT/test_cuda_prefill.txt" | head -60; }
timeout 120 $BUILD/bin/dfssm bench --device cuda --geometry mamba2-1.3b --random --prefill 2048 --no-membw 2>&1 | tee "$OUT/bench_cuda.txt"
timeout 60 $BUILD/bin/dfssm bench --device cuda --geometry mamba2-1.3b --random --no-pdl --prefill 16 --batches 1 --no-membw 2>&1 | grep -E "decode" | sed 's/^/no-pdl: /'
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [[ -n $NCU ]]; then
  timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum \
    -k regex:"norm_prologue|sign_gemv|ssm_step|lm_head" --launch-skip 2420 --launch-count 10 \
    $BUILD/bin/dfssm bench --device cuda --geometry mamba2-1.3b --random --no-graph --no-pdl --prefill 8 --batches 1 --steps 8 --warmup 1 --no-membw \
    >"$OUT/ncu.txt" 2>&1
  grep -E "^  [a-z_ ]+.*\(|gpu__time_duration" "$OUT/ncu.txt" | sed -E 's/\(SignGemvArgs, int, int\)|\(NormArgs, int\)|\(SsmArgs\)|, Context.*//' | paste - - | head -12
fi
[[ ${HF:-0} == 1 ]] && PYTHONUNBUFFERED=1 timeout 200 python3 scripts/device/bench_hf.py --prefill 2048 --steps 24 --batches 1,8 2>&1 | grep -v -E "Warning|falling back" | tee "$OUT/bench_hf.txt"
exit 0
