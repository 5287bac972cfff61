#!/usr/bin/env bash
# The trainer's quality run (configs/quality_100m.yaml) on the GPU machine, in one lease of three
# back-to-back device calls (each call may run 10 minutes; the machine is given back 30 s after a
# call, so the calls must follow each other at once):
#   scripts/device/quality_run.sh start    build, then `dfssm run` in its own process session
#                                          (it outlives the call), progress until ~9.5 min
#   scripts/device/quality_run.sh wait     progress for another ~9.5 min
#   scripts/device/quality_run.sh report   progress until done or ~9 min, then the results
# Every call copies the metrics and the evaluation summary it has to $OUT and prints
# scripts/run_summary.py (teacher, init-only and student held-out CE from the trainer's evals, and
# the fraction of the configured steps that ran), so a run cut short still reports. The pipeline
# resumes from its checkpoints if it is started again on the same (warm) machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dfssm-out}; mkdir -p "$OUT"
PHASE=${1:-start}
LOG=/tmp/quality.log
RUN=runs/quality100m
t0=$(date +%s)
progress() {  # until $1 seconds have passed or the pipeline has finished
  while (( $(date +%s) - t0 < $1 )); do
    if ! pgrep -f "dfssm run configs/quality_100m.yaml" >/dev/null; then echo "pipeline not running"; break; fi
    sleep 30
    tail -c 400 $LOG | tr '\r' '\n' | grep -v '^$' | tail -1
  done
}
collect() {  # (also when the pipeline is cut short: the summary reads the trainer's evals)
  for f in $RUN/teacher/metrics.jsonl $RUN/student/metrics.jsonl $RUN/eval.json; do
    [[ -f $f ]] && cp "$f" "$OUT/$(echo "$f" | tr '/' '_')"
  done
  cp $LOG "$OUT/quality.log" 2>/dev/null
  python3 scripts/run_summary.py $RUN configs/quality_100m.yaml | tee "$OUT/summary.txt"
  true
}
if [[ $PHASE == start ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" \
    -DDFSSM_CUDA=ON >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
  cmake --build build-device -j "$(nproc)" --target dfssm >"$OUT/build.log" 2>&1 || { grep error "$OUT/build.log" | head; exit 1; }
  echo "build ok ($(( $(date +%s) - t0 )) s)"
  setsid nohup build-device/bin/dfssm run configs/quality_100m.yaml >$LOG 2>&1 < /dev/null &
  sleep 5
  progress 560
elif [[ $PHASE == wait ]]; then
  # While the GPU trains, the gpu tests build on spare cores (niced) for the report call.
  setsid nohup nice -n 19 cmake --build build-device -j 8 --target test_gpu_train_kernels test_cuda_student \
    >"$OUT/build_tests.log" 2>&1 < /dev/null &
  progress 570
else
  progress 540
  grep -E "teacher|student|init|CE|ratio" $LOG | tail -30
  # Left-over time after the pipeline: the gpu tests of the training kernels and of the CUDA
  # engine against the LibTorch student (EXTRA_TESTS=0 skips them).
  if [[ ${EXTRA_TESTS:-1} == 1 ]] && ! pgrep -f "dfssm run configs/quality_100m.yaml" >/dev/null && \
     (( $(date +%s) - t0 < 420 )) && [[ -x build-device/bin/test_gpu_train_kernels ]]; then
    (cd build-device && timeout 120 bin/test_gpu_train_kernels 2>&1 | tail -5; \
      timeout 60 bin/test_cuda_student 2>&1 | tail -5) | tee "$OUT/gpu_tests.txt"
  fi
fi
collect
