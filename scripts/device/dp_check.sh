#!/usr/bin/env bash
# Data parallelism on 2 GPUs (nvidia-h200-x2): distill the 1.3B geometry for a few steps on one
# GPU with global batch 2B, then on 2 GPUs (--nproc 2, NCCL) with B per GPU; compare the losses
# and the throughput. Needs build-device (scripts/device/build_and_test.sh build).
#   usage: scripts/device/dp_check.sh [B per GPU] [steps]   (defaults 1, 8)
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${1:-1}
STEPS=${2:-8}
OUT=${OUT:-/tmp/dfssm-out}
W=/tmp/dfssm-bench
D=build-device/bin/dfssm
mkdir -p "$OUT"
bash scripts/device/prep_13b.sh || exit 1
cat > $W/dp.yaml <<YAML
run_dir: $W/dp
device: cuda
data: {dir: $W/data, seq_len: 2048}
teacher: {path: $W/teacher, dtype: bf16}
distill: {steps: $STEPS, log_every: 1, eval_every: 0, eval_batches: 1, warmup_steps: 2, checkpoint_every: 0,
          resume: none, activation_checkpointing: all}
YAML
run() {  # name nproc batch
  rm -rf $W/dp
  $D distill $W/dp.yaml distill.batch_size=$3 --nproc $2 2>&1 | grep -vE "^\[distill" | tail -3
  cp $W/dp/student/metrics.jsonl "$OUT/metrics_$1.jsonl"
}
run gpu1 1 $((2 * B))
run gpu2 2 $B
python3 - "$OUT" <<'PY' | tee "$OUT/dp_check.txt"
import json, statistics, sys
def rows(n): return [json.loads(l) for l in open(f"{sys.argv[1]}/metrics_{n}.jsonl") if '"loss"' in l]
a, b = rows("gpu1"), rows("gpu2")
for x, y in zip(a, b):
    print(f"step {x['step']}: 1 GPU loss {x['loss']:.6f}  2 GPUs {y['loss']:.6f}  rel diff {abs(x['loss']-y['loss'])/abs(x['loss']):.2e}")
ta = statistics.median(r["tokens_per_s"] for r in a[2:]); tb = statistics.median(r["tokens_per_s"] for r in b[2:])
print(f"tokens/s: 1 GPU {ta:,.0f}, 2 GPUs {tb:,.0f} (global), scaling {tb/ta:.2f}x; peak GiB 1 GPU {max(r['peak_mem_gb'] for r in a):.1f}, 2 GPUs (rank 0) {max(r['peak_mem_gb'] for r in b):.1f}")
PY
