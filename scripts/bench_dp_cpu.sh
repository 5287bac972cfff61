#!/usr/bin/env bash
# CPU data parallelism on the quickstart's models: 1 process vs 2 (--nproc 2) at the same global batch.
set -uo pipefail
cd "$(dirname "$0")/.."
# Needs the quickstart's outputs (runs/quickstart: data and teacher); writes under /tmp/dpb.
D=build/bin/dfssm
mkdir -p /tmp/dpb
common="configs/quickstart.yaml teacher.path=runs/quickstart/teacher data.dir=runs/quickstart/data distill.steps=40 distill.eval_every=0 distill.eval_batches=1 distill.checkpoint_every=0 distill.log_every=1 distill.resume=none"
run() { # name extra...
  name=$1; shift
  rm -rf /tmp/dpb/$name
  $D distill $common run_dir=/tmp/dpb/$name "$@" > /tmp/dpb_$name.log 2>&1 || { echo "$name failed"; tail -5 /tmp/dpb_$name.log; }
  .venv/bin/python - /tmp/dpb/$name/student/metrics.jsonl $name <<'PY'
import json, sys, statistics
rows=[json.loads(l) for l in open(sys.argv[1])]
st=[r for r in rows if r.get("event")=="start"][0]
r=[x for x in rows if "loss" in x]
print(f"{sys.argv[2]:14s} world {st['world']} {st['dp_backend']:6s} threads/rank {st['threads']}: {statistics.median(x['tokens_per_s'] for x in r[5:]):,.0f} tokens/s (median, steps 6-40), loss@40 {r[-1]['loss']:.5f}")
PY
}
run single distill.batch_size=8
run gloo distill.batch_size=4 --nproc 2
run store distill.batch_size=4 distill.dp_backend=store --nproc 2
run gloo_t2 distill.batch_size=4 threads=2 --nproc 2
