#!/usr/bin/env bash
# The main job. Until the trainer lands this builds dfssm, writes a randomly initialised
# tiny Mamba-2 checkpoint and prints what `dfssm info` sees in it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT=${DFSSM_QUICKSTART_DIR:-runs/quickstart}
build/bin/dfssm init -o "${OUT}/teacher" --geometry tiny --seed 0
build/bin/dfssm info "${OUT}/teacher"
