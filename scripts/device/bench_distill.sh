#!/usr/bin/env bash
# Distillation throughput at the Mamba-2 1.3B geometry on the GPU machine (random teacher, random
# token ids): the DF-SSM student and, in the same run, a plain (non-binarized) student as the
# baseline. Needs a build in build-device (scripts/device/build_and_test.sh build).
#   usage: [AC=all] scripts/device/bench_distill.sh [batch] [steps]     (defaults 4, 8)
#   AC: distill.activation_checkpointing (none, all, or layer indices)
#   VARIANTS: runs as "name:overrides|name:overrides" (VAR=value tokens set the environment) (default: the DF-SSM student, then the plain
#     one), e.g. VARIANTS="c256:|c128:distill.ssd_chunk=128"
#   GEOM (default mamba2-1.3b), L (sequence length, default 2048): another geometry's random teacher
#   PROFILE=k: DFSSM_PROFILE_STEP=k for the first variant (the kernel profile of step k, and
#     scripts/device/trace_ops.py's breakdown of it by the launching autograd node and op; the
#     trace comes back gzipped in $OUT)
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${1:-4}
STEPS=${2:-8}
OUT=${OUT:-/tmp/dfssm-out}
W=/tmp/dfssm-bench
D=build-device/bin/dfssm
mkdir -p $W "$OUT"
GEOM=${GEOM:-mamba2-1.3b}
L=${L:-2048}
TDIR=$W/teacher; [ "$GEOM" = mamba2-1.3b ] || TDIR=$W/teacher-$GEOM
GEOM=$GEOM bash scripts/device/prep_13b.sh || exit 1
cat > $W/job.yaml <<YAML
run_dir: $W/run
device: cuda
data: {dir: $W/data, seq_len: $L}
teacher: {path: $TDIR, dtype: bf16}
distill: {steps: $STEPS, batch_size: $B, log_every: 1, eval_every: 0, eval_batches: 1, warmup_steps: 2,
          checkpoint_every: 0, resume: none, activation_checkpointing: ${AC:-none}}
YAML
$D distill $W/job.yaml --dry-run
PLAIN="student.quantize_in_proj=false student.quantize_out_proj=false student.embedding=fp16"
IFS='|' read -ra RUNS <<< "${VARIANTS:-dfssm:|plain:$PLAIN}"
first=1
for run in "${RUNS[@]}"; do
  variant=${run%%:*}
  extra="" envs=()
  for tok in ${run#*:}; do  # UPPER_CASE=value tokens are environment variables, the rest overrides
    if [[ $tok =~ ^[A-Z_][A-Z0-9_]*= ]]; then envs+=("$tok"); else extra+=" $tok"; fi
  done
  rm -rf $W/run
  echo "== $variant ($extra), $GEOM, batch $B x $L"
  if [[ $first == 1 && -n ${PROFILE:-} ]]; then
    # shellcheck disable=SC2086
    env "${envs[@]}" DFSSM_PROFILE_STEP=$PROFILE $D distill $W/job.yaml $extra 2>&1 | grep -v "^\[distill" | tail -75
    # which model code launched the hot kernels (autograd node or model scope, then the aten op)
    python3 scripts/device/trace_ops.py "$W/run/student/profile-step$PROFILE.json" 45 | tee "$OUT/trace_ops.txt"
    # The trace itself (the next variant's run replaces $W/run): chrome://tracing or trace_ops.py.
    gzip -c "$W/run/student/profile-step$PROFILE.json" >"$OUT/profile-step$PROFILE.json.gz"
  else
    # shellcheck disable=SC2086
    env "${envs[@]}" $D distill $W/job.yaml $extra 2>&1 | tail -3
  fi
  first=0
  python3 - "$W/run/student/metrics.jsonl" "$variant" "$L" <<'PY' | tee -a "$OUT/bench_distill.txt"
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steady = rows[2:] or rows
tps = statistics.median(r["tokens_per_s"] for r in steady)
L = int(sys.argv[3])
print(f"{sys.argv[2]:6s} batch {steady[0]['tokens']//steady[0]['step']//L} x {L}: {tps:,.0f} tokens/s (median of {len(steady)} steps), "
      f"peak {max(r['peak_mem_gb'] for r in rows):.1f} GiB, loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}")
PY
done
