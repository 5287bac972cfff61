#!/usr/bin/env bash
# The runtime's CUDA backend on the GPU machine, in one device call: torch-free build, the
# determinism check at the 1.3B widths, every gpu test, compute-sanitizer memcheck on the kernel
# tests and the engine, the 1.3B benchmarks, per-kernel durations from ncu (kernels serialized),
# and with HF=1 the HF transformers baseline (scripts/device/bench_hf.py). Logs to $OUT.
# QUICK=1: build, tests and benches only (no memcheck, no ncu).
# KBENCH=1: also the per-kernel prefill timings (test_cuda_prefill "[bench]", every scan variant).
# VARIANTS="ENV=V ...": after the benches, for each debug switch (A=1,B=2: two at once): test_cuda_runtime and the
#            batch 1 / 8 decode bench under it (A/B of a kernel variant in the same call);
#            with TRACE=1 also the timeline of one step (DFSSM_CUDA_TRACE) with and without it.
# STUDENT=1: also test_cuda_student (the engine against the LibTorch student; a torch build in
#            build-device, started in the background at once and run after the benches).
# (The LibTorch fp16 teacher baseline needs the torch build: scripts/device/build_and_test.sh bench.)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/o}; mkdir -p $OUT
BUILD=build-cudart
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
if [[ ${STUDENT:-0} == 1 ]]; then
  ( cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" \
      -DDFSSM_CUDA=ON >$OUT/configure_torch.log 2>&1 &&
    nice cmake --build build-device -j 8 --target test_cuda_student >$OUT/build_torch.log 2>&1; echo $? >$OUT/torch_build.rc ) &
fi
cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >$OUT/configure.log 2>&1 || { tail -20 $OUT/configure.log; exit 1; }
cmake --build $BUILD -j 16 --target dfssm test_cuda_runtime test_cuda_prefill test_cuda_kernels >$OUT/build.log 2>&1 || { grep error $OUT/build.log | head; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
T=$BUILD/bin/test_cuda_runtime
for L in 8 48; do DFSSM_DIAG_LAYERS=$L timeout 100 $T "[.diag]" 2>&1 | grep -E "^diag"; done
timeout 200 $T >$OUT/test_cuda_runtime.txt 2>&1; echo "test_cuda_runtime rc=$?"
grep -E "layers|engines|int8 prefill|per position|restore|FAILED|passed|failed" $OUT/test_cuda_runtime.txt | head -40
timeout 150 $BUILD/bin/test_cuda_prefill >$OUT/test_cuda_prefill.txt 2>&1; echo "test_cuda_prefill rc=$?"; tail -2 $OUT/test_cuda_prefill.txt
timeout 60 $BUILD/bin/test_cuda_kernels >$OUT/test_cuda_kernels.txt 2>&1; echo "test_cuda_kernels rc=$?"; tail -2 $OUT/test_cuda_kernels.txt
B=$BUILD/bin/dfssm
timeout 120 $B bench --device cuda --geometry mamba2-1.3b --random --prefill 2048 2>&1 | tee $OUT/bench_cuda.txt
timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --state-dtype f16 --prefill 2048 --batches 1,8 --no-membw 2>&1 | grep -E "engine|decode|prefill" | tee -a $OUT/bench_cuda.txt
timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --no-fold --prefill 16 --batches 1,8 --no-membw 2>&1 | grep -E "engine|decode b" | tee -a $OUT/bench_cuda.txt
timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --no-pdl --prefill 16 --batches 1 --no-membw 2>&1 | grep -E "engine|decode b" | tee -a $OUT/bench_cuda.txt
for v in ${VARIANTS:-}; do
  echo "== variant $v"
  env ${v//,/ } timeout 200 $T >$OUT/test_cuda_runtime_$v.txt 2>&1; echo "test_cuda_runtime ($v) rc=$?"
  for r in 1 2; do
    env ${v//,/ } timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --prefill 16 --batches 1,8 --no-membw 2>&1 |
      grep -E "decode b|launch floor"
  done
  timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --prefill 16 --batches 1,8 --no-membw 2>&1 |
    grep -E "decode b" | sed 's/^/(default) /'
  if [[ ${TRACE:-0} == 1 ]]; then  # the timeline of one step, variant and default
    env ${v//,/ } DFSSM_CUDA_TRACE=1 timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --prefill 16 --batches 1 \
      --no-membw 2>&1 | grep -A4 "trace ("
    DFSSM_CUDA_TRACE=1 timeout 60 $B bench --device cuda --geometry mamba2-1.3b --random --prefill 16 --batches 1 \
      --no-membw 2>&1 | grep -A4 "trace (" | sed 's/^/(default) /'
  fi
done
if [[ ${KBENCH:-0} == 1 ]]; then
  timeout 120 $BUILD/bin/test_cuda_prefill "[bench]" 2>&1 | grep -E "us$|layer total" | tee $OUT/kbench.txt
fi
if [[ ${STUDENT:-0} == 1 ]]; then
  wait
  echo "torch build rc=$(cat $OUT/torch_build.rc 2>/dev/null) ($(( $(date +%s) - t0 )) s)"
  grep -E "error" $OUT/build_torch.log | head -5
  timeout 240 build-device/bin/test_cuda_student >$OUT/test_cuda_student.txt 2>&1; echo "test_cuda_student rc=$?"
  grep -E "rel|err|FAILED|passed|failed" $OUT/test_cuda_student.txt | tail -30
fi
[[ ${QUICK:-0} == 1 ]] && { echo "total $(( $(date +%s) - t0 )) s"; exit 0; }
CS=/usr/local/cuda/bin/compute-sanitizer
for t in "CUDA in_proj path*" "CUDA out_proj path*" "CUDA SSM step*" "CUDA int8 LM head*" "CUDA session state save*" \
  "Lean batch-1 GEMV*"; do
  timeout 100 $CS --tool memcheck --leak-check no --error-exitcode 9 $T "$t" >>$OUT/memcheck.txt 2>&1 && echo "memcheck ok: $t" || echo "memcheck FAILED ($?): $t"
done
DFSSM_DIAG_LAYERS=8 timeout 150 $CS --tool memcheck --error-exitcode 9 $T "[.diag]" >>$OUT/memcheck.txt 2>&1 && echo "memcheck ok: engine 8 layers at 1.3B widths" || echo "memcheck FAILED: engine"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [[ -n $NCU ]]; then  # one layer's kernels of a decode step, launched one by one
  timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum \
    -k regex:"norm_prologue|sign_gemv|ssm_step|lm_head" --launch-skip 2420 --launch-count 10 \
    $B bench --device cuda --geometry mamba2-1.3b --random --no-graph --no-pdl --no-int8-prefill --prefill 8 \
    --batches 1 --steps 8 --warmup 1 --no-membw >$OUT/ncu.txt 2>&1
  grep -E "^  [a-z_ ]+.*\(|gpu__time_duration" $OUT/ncu.txt | sed -E 's/\(SignGemvArgs, int, int\)|\(NormArgs, int\)|\(SsmArgs\)|, Context.*//' | paste - - | head -12
  # Warp states and where the stalls are (source lines: the kernels carry -lineinfo) of one
  # layer's folded batch-1 kernels; the full report in $OUT/ncu_stalls.ncu-rep.
  timeout 150 "$NCU" --clock-control none --section WarpStateStats --section SchedulerStats --section SourceCounters \
    -k regex:"sign_gemv|ssm_step" --launch-skip 150 --launch-count 3 -o $OUT/ncu_stalls -f \
    $B bench --device cuda --geometry mamba2-1.3b --random --no-graph --no-int8-prefill --prefill 4 --batches 1 \
    --steps 4 --warmup 1 --no-membw >/dev/null 2>&1
  "$NCU" --import $OUT/ncu_stalls.ncu-rep --print-details all 2>/dev/null >$OUT/ncu_stalls.txt
  grep -E "_kernel<|Issued Warp|Eligible Warps|barrier|Stall|stall" $OUT/ncu_stalls.txt | head -30
  # per source line (CUDA source, -lineinfo) and per SASS instruction: the stall samples
  "$NCU" --import $OUT/ncu_stalls.ncu-rep --page source --csv --print-source cuda >$OUT/ncu_source_cuda.csv 2>&1
  "$NCU" --import $OUT/ncu_stalls.ncu-rep --page source --csv --print-source sass >$OUT/ncu_source_sass.csv 2>&1
  ls -la $OUT/ncu_source_*.csv
fi
[[ ${HF:-0} == 1 ]] && PYTHONUNBUFFERED=1 timeout 200 python3 scripts/device/bench_hf.py --prefill 2048 --steps 24 \
  --batches 1,8 2>&1 | grep -v -E "Warning|falling back" | tee $OUT/bench_hf.txt
echo "total $(( $(date +%s) - t0 )) s"
