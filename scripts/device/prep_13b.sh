#!/usr/bin/env bash
# Shared by the device benchmarks: random token ids (vocab 50277) prepared as a dataset, and a
# random Mamba-2 teacher (bf16) of geometry $GEOM (default mamba2-1.3b) in /tmp/dfssm-bench/teacher
# (or teacher-$GEOM for other geometries). Idempotent while the machine stays warm.
set -uo pipefail
W=/tmp/dfssm-bench
D=${D:-build-device/bin/dfssm}
mkdir -p $W
if [ ! -f $W/data/manifest.json ]; then
  python3 -c "import numpy as np; r=np.random.default_rng(0); a=r.integers(1,50277,4_000_000,dtype=np.uint16); a[::5000]=0; a.tofile('$W/ids.bin')"
  cat > $W/data.yaml <<YAML
output: $W/data
overwrite: true
sources: [{path: $W/ids.bin, dtype: uint16}]
tokenizer: {type: none, vocab_size: 50277, eos_id: 0}
val_fraction: 0.01
YAML
  $D data prepare $W/data.yaml --quiet || exit 1
fi
GEOM=${GEOM:-mamba2-1.3b}
T=$W/teacher; [ "$GEOM" = mamba2-1.3b ] || T=$W/teacher-$GEOM
[ -f $T/DONE ] || { $D init -o $T --geometry "$GEOM" --dtype bf16 && touch $T/DONE; } || exit 1
