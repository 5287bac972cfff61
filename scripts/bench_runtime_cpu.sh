#!/usr/bin/env bash
# The CPU runtime at the Mamba-2 1.3B geometry on this machine, in one run: kernel micro-
# benchmarks, the runtime (random packed model, every activation precision, fp32 and fp16 state,
# 1 and all threads) with the STREAM-like bandwidth and the fraction of the bandwidth floor, and
# the LibTorch fp32 teacher's CPU prefill/decode on the same geometry for comparison.
# Run it on an otherwise idle machine. Output: stdout (and runs/bench_runtime_cpu.txt).
#   usage: scripts/bench_runtime_cpu.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}/bin/dfssm
mkdir -p runs
exec > >(tee runs/bench_runtime_cpu.txt) 2>&1
echo "== $(date -u +%FT%TZ)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)  $(nproc) cores  git $(git rev-parse --short HEAD)"
$B bench --kernels --seconds 0.2
for act in i16 f32 i8; do
  $B bench --geometry mamba2-1.3b --random --act $act --prefill 128 --steps 16 --batch2 8
done
$B bench --geometry mamba2-1.3b --random --act i16 --state-dtype f16 --prefill 128 --steps 16 --batch2 0
$B bench --geometry mamba2-1.3b --random --act i16 --threads 1 --prefill 64 --steps 8 --batch2 0 --no-membw
echo "== LibTorch fp32 teacher (the trainer's model), CPU, same geometry"
$B bench --engine torch --geometry mamba2-1.3b --device cpu --dtype fp32 --batch 1 --prefill 128 --steps 6 --warmup 1 --reps 1
