#!/usr/bin/env bash
# The main job, as far as it exists today (a few minutes on 2 cores after set-up):
#   1. tokenize the embedded default corpus (the local Python standard library);
#   2. write a randomly initialised tiny Mamba-2 teacher with the same vocabulary;
#   3. initialise a DF-SSM student from it (SVID field + int8 low-rank, no training yet);
#   4. export the packed file with the tokenizer embedded, and inspect it.
# The trainer issue inserts pretraining/distillation between 2 and 4.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT=${DFSSM_QUICKSTART_DIR:-runs/quickstart}
D=build/bin/dfssm
$D data prepare configs/data_stdlib.yaml output="${OUT}/data" --quiet
$D init -o "${OUT}/teacher" --geometry tiny --seed 0 vocab_size=4096
$D info "${OUT}/teacher"
$D quantize "${OUT}/teacher" -o "${OUT}/student"
$D export "${OUT}/student" -o "${OUT}/model.dfssm.safetensors" --tokenizer "${OUT}/data/tokenizer.model"
$D inspect "${OUT}/model.dfssm.safetensors" --verify
