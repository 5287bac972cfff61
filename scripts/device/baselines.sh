#!/usr/bin/env bash
# The 1.3B-geometry runtime numbers and their baselines in ONE device call (issue 7's benchmark):
#   1. the dfssm CUDA runtime: prefill 1x2048, decode at batch 1, 4, 8 (folded norms at batch 1),
#      and the five-kernel layers (--no-fold) at batch 1 and 2;
#   2. the LibTorch fp16 teacher (the trainer's model, no CUDA graphs), batch 1, prefill 2048;
#   3. HF transformers Mamba2 (torch path, fp16): scripts/device/bench_hf.py.
# Builds dfssm against the device's torch (the LibTorch engine needs it; that build also has
# the CUDA runtime). Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dfssm-out}; mkdir -p "$OUT"
BUILD=build-device
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" -DDFSSM_CUDA=ON \
  >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
cmake --build $BUILD -j "$(nproc)" --target dfssm >"$OUT/build.log" 2>&1 || { grep error "$OUT/build.log" | head; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
B=$BUILD/bin/dfssm
G="--device cuda --geometry mamba2-1.3b"
timeout 120 $B bench $G --random --prefill 2048 2>&1 | tee "$OUT/bench_cuda.txt"
timeout 60 $B bench $G --random --no-fold --prefill 16 --batches 1,2 --no-membw 2>&1 | grep -E "engine|decode b" |
  tee -a "$OUT/bench_cuda.txt"
timeout 60 $B bench $G --random --prefill 16 --batches 2 --no-membw 2>&1 | grep -E "decode b" | tee -a "$OUT/bench_cuda.txt"
timeout 150 $B bench --engine torch $G --dtype fp16 --batch 1 --prefill 2048 --steps 32 --warmup 2 --reps 3 2>&1 |
  tee "$OUT/bench_torch.txt"
PYTHONUNBUFFERED=1 timeout 200 python3 scripts/device/bench_hf.py --prefill 2048 --steps 24 --batches 1,8 2>&1 |
  grep -v -E "Warning|falling back" | tee "$OUT/bench_hf.txt"
echo "total $(( $(date +%s) - t0 )) s"
