#!/usr/bin/env bash
# Reconstruction error of every student format on a random teacher of the Mamba-2 1.3B geometry
# (CPU), plus the packed size of each configuration. Results are recorded in docs/benchmarks.md.
#   usage: scripts/bench_quant.sh [geometry]   (default mamba2-1.3b)
set -euo pipefail
cd "$(dirname "$0")/.."
G=${1:-mamba2-1.3b}
run() {
  echo "== $*"
  build/bin/dfssm inspect --geometry "$G" "$@" | tail -1
  build/bin/dfssm quantize --geometry "$G" --random --teacher-seed 0 "$@" | tail -2
}
run format=binary
for r in 8 19 64; do run format=binary_lowrank rank=$r; done
run format=ternary
run format=int4
