#!/usr/bin/env bash
# Data parallelism on 2 GPUs (nvidia-h200-x2 / nvidia-h100-x2): distill the 1.3B geometry for a
# few steps on one GPU with global batch 2B, then on 2 GPUs (--nproc 2, NCCL) with B per GPU, with
# the gradient buckets overlapping backward (dp_bucket_mb 25) and with one all-reduce after it
# (dp_bucket_mb 0); compare the losses and the throughput. Needs build-device
# (scripts/device/build_and_test.sh build).
#   usage: scripts/device/dp_check.sh [B per GPU] [steps]   (defaults 8, 6: the 1-GPU run is the
#   single-GPU benchmark's 16 x 2048)
#   EXTRA: overrides for every run (default: the benchmark's 12 kept in_proj outputs)
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${1:-8}
STEPS=${2:-6}
EXTRA=${EXTRA-distill.activation_checkpointing_keep_in_proj=$(seq -s, 0 11)}
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
run() {  # name nproc batch [overrides]
  rm -rf $W/dp
  # shellcheck disable=SC2086
  $D distill $W/dp.yaml distill.batch_size=$3 $EXTRA ${4-} --nproc $2 2>&1 | grep -vE "^\[distill" | tail -3
  cp $W/dp/student/metrics.jsonl "$OUT/metrics_$1.jsonl"
}
run gpu1 1 $((2 * B))
run gpu2 2 $B
run gpu2_oneshot 2 $B distill.dp_bucket_mb=0
python3 - "$OUT" <<'PY' | tee "$OUT/dp_check.txt"
import json, statistics, sys
def rows(n): return [json.loads(l) for l in open(f"{sys.argv[1]}/metrics_{n}.jsonl") if '"loss"' in l]
a, b, c = rows("gpu1"), rows("gpu2"), rows("gpu2_oneshot")
for x, y in zip(a, b):
    print(f"step {x['step']}: 1 GPU loss {x['loss']:.6f}  2 GPUs {y['loss']:.6f}  rel diff {abs(x['loss']-y['loss'])/abs(x['loss']):.2e}")
tps = lambda r: statistics.median(x["tokens_per_s"] for x in r[2:])
peak = lambda r: max(x["peak_mem_gb"] for x in r)
ta, tb, tc = tps(a), tps(b), tps(c)
print(f"tokens/s: 1 GPU {ta:,.0f}; 2 GPUs (global) {tb:,.0f} with buckets, scaling {tb/ta:.2f}x; "
      f"{tc:,.0f} with one all-reduce after backward, {tc/ta:.2f}x")
print(f"peak GiB: 1 GPU {peak(a):.1f}, 2 GPUs (rank 0) {peak(b):.1f} with buckets, {peak(c):.1f} one-shot")
PY
