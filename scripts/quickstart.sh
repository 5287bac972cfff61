#!/usr/bin/env bash
# The main job (README's first command). After set-up it runs `dfssm run configs/quickstart.yaml`:
# tokenize the local Python standard library, pretrain a tiny Mamba-2 teacher on it, distill the
# teacher into the 1-bit DF-SSM student, export the packed file, print student vs teacher vs the
# init-only (untrained, binarized) student on held-out data (the evaluation of docs/eval.md), and
# sample from the student. Then `dfssm eval --check-export`: the exported file must give the
# LibTorch student's cross-entropy. Re-running skips the stages that finished;
# DFSSM_QUICKSTART_FRESH=1 starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${DFSSM_QUICKSTART_FRESH:-0}" = 1 ]; then rm -rf runs/quickstart; fi
build/bin/dfssm run configs/quickstart.yaml "$@"
build/bin/dfssm eval --check-export --student runs/quickstart/model.dfssm.safetensors \
  --student-checkpoint runs/quickstart/student/final --data runs/quickstart/data --max-length 256
build/bin/dfssm inspect runs/quickstart/model.dfssm.safetensors | tail -4
# The exported file on the LibTorch-free runtime (docs/runtime.md): greedy text from a prompt.
echo; echo "== generate: the packed file on the CPU runtime (dfssm generate)"
build/bin/dfssm generate -m runs/quickstart/model.dfssm.safetensors -p "def parse_args(" --max-tokens 48 \
  --temperature 0
