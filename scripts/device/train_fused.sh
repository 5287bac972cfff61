#!/usr/bin/env bash
# One device call for the trainer's fused CUDA kernels (src/kernels/cuda/{ssd,conv,norm}_train.cu, adamw.cu,
# ssd_scan.cu, ssd_scan_bwd.cu):
#   1. build dfssm and the gpu tests against the device's torch; run the tests (their measured
#      errors are printed);
#   2. time the 1.3B distillation step (scripts/device/bench_distill.sh; V13 = its VARIANTS,
#      default: the DF-SSM student (every fused kernel on: the defaults), then the plain
#      student, B=16 x 2048 with activation checkpointing; PROFILE=k adds the kernel
#      profile of step k to the first variant);
#   3. time the 130m geometry's distillation (B=32 x 1024) and pretraining steps, which size the
#      quality run (configs/quality_100m.yaml); V130= skips this;
#   4. RUNTIME=1: the CUDA runtime's gpu test and its 1.3B decode/prefill bench on the same build;
#   BENCH=1: the gpu tests' hidden kernel benchmarks ("[bench]");
#   TEST_FILTER: a Catch2 test spec for the test binaries (e.g. "[ssd_scan]");
#   MEMCHECK=1: compute-sanitizer memcheck on the fused SSD forward and backward kernels (small shapes);
#   NCU=1 (last): Nsight Compute on one launch each of NCU_KERNELS ('|'-separated function
#     names; default: the SSD backward's per-chunk kernel and dB/dC GEMM, the forward's
#     chunk_scan, the gated norm's backward) in the "[ncu]" test at chunk NCU_CHUNK (64): warp
#     states, memory and source-line stall counters (reports land in $OUT; the build gets -lineinfo
#     and ncu_src_*.csv.gz holds the per-instruction source page).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dfssm-out}; mkdir -p "$OUT"
t0=$(date +%s)
TESTS=${TESTS:-test_gpu_train_kernels test_gpu_model}
[[ ${RUNTIME:-0} == 1 ]] && TESTS+=" test_cuda_runtime"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_TORCH_PYTHON="$(command -v python3)" \
  -DDFSSM_CUDA=ON -DDFSSM_CUDA_LINEINFO=$([[ ${NCU:-0} == 1 ]] && echo ON || echo OFF) >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
# shellcheck disable=SC2086
cmake --build build-device -j "$(nproc)" --target dfssm $TESTS >"$OUT/build.log" 2>&1 ||
  { grep -A3 error "$OUT/build.log" | head -40; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
for t in $TESTS; do
  # shellcheck disable=SC2086
  build-device/bin/$t ${TEST_FILTER:-} >"$OUT/$t.log" 2>&1; echo "$t: rc $?"
  grep -A1 -E "^warning:|^[^ ].*(FAILED|failed)" "$OUT/$t.log" | grep -v -E "^--$|^warning:$" | sed 's/^ */  /' | head -40
  tail -2 "$OUT/$t.log"
done
# MEMCHECK=1: compute-sanitizer memcheck on the fused SSD forward and backward kernels (small shapes).
if [[ ${MEMCHECK:-0} == 1 ]]; then
  timeout 240 /usr/local/cuda/bin/compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
    build-device/bin/test_gpu_train_kernels "fused SSD forward kernels (TF32) vs their scalar reference*,fused SSD backward kernels (TF32) vs their scalar reference*" \
    >"$OUT/memcheck.txt" 2>&1 && echo "memcheck ok: ssd_scan forward and backward kernels" || { echo "memcheck FAILED ($?)"; tail -20 "$OUT/memcheck.txt"; }
fi
# BENCH=1: the hidden kernel benchmarks of the gpu tests ("[bench]": printed times, no assertions)
# (Catch wraps a message at 80 columns: the continuation lines are kept.)
[[ ${BENCH:-0} == 1 ]] && build-device/bin/test_gpu_train_kernels "[bench]" 2>&1 | grep -E -A2 "^  bench" |
  grep -v -E "^--$|^/|^$|^\.\.\." | tee "$OUT/kernel_bench.txt"
echo "tests done ($(( $(date +%s) - t0 )) s)"
PLAIN="student.quantize_in_proj=false student.quantize_out_proj=false student.embedding=fp16"
AC=${AC:-all} PROFILE=${PROFILE-} VARIANTS="${V13:-dfssm:|plain:$PLAIN}" \
  bash scripts/device/bench_distill.sh "${B:-16}" "${STEPS:-4}"
echo "1.3B done ($(( $(date +%s) - t0 )) s)"
if [[ -n ${V130-x} ]]; then
  GEOM=mamba2-130m L=1024 PROFILE= VARIANTS="${V130:-130m:}" bash scripts/device/bench_distill.sh 32 4
  W=/tmp/dfssm-bench
  cat > $W/pre.yaml <<YAML
run_dir: $W/pre
device: cuda
data: {dir: $W/data, seq_len: 1024}
model: {geometry: mamba2-130m}
pretrain: {steps: 4, batch_size: 32, log_every: 1, eval_every: 0, eval_batches: 1, warmup_steps: 2,
           checkpoint_every: 0, resume: none}
YAML
  rm -rf $W/pre
  build-device/bin/dfssm pretrain $W/pre.yaml 2>&1 | tail -2
  python3 -c "
import json,statistics
rows=[json.loads(l) for l in open('$W/pre/teacher/metrics.jsonl') if '\"loss\"' in l]
print(f'pretrain 130m batch 32 x 1024: {statistics.median(r[\"tokens_per_s\"] for r in rows[2:]):,.0f} tokens/s (median of {len(rows[2:])} steps), peak {max(r[\"peak_mem_gb\"] for r in rows):.1f} GiB')
" | tee -a "$OUT/bench_distill.txt"
fi
if [[ ${RUNTIME:-0} == 1 ]]; then
  build-device/bin/dfssm bench --device cuda --geometry mamba2-1.3b --random 2>&1 | tail -25
fi
# NCU=1: where the SSD kernels' time goes (one launch each at 16 x 2048). Last: the slowest part
# of the call.
if [[ ${NCU:-0} == 1 ]]; then
  NCUB=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  # Kernels by function name (ncu's demangled names print template arguments as "(int)64"); the
  # "[ncu]" test runs the SSD at chunk NCU_CHUNK (default 64); the second launch is profiled.
  IFS='|' read -ra KERNELS <<<"${NCU_KERNELS:-chunk_bwd_kernel|dbc_kernel|chunk_scan_kernel|norm_bwd_kernel}"
  for k in "${KERNELS[@]}"; do
    f=$(echo "$k" | tr -c 'a-z0-9_\n' '_')
    DFSSM_NCU_CHUNK=${NCU_CHUNK:-64} timeout 150 "$NCUB" --clock-control none --section SpeedOfLight \
      --section WarpStateStats --section MemoryWorkloadAnalysis --section SourceCounters --section Occupancy \
      --section LaunchStats -k regex:"$k" --launch-skip 1 --launch-count 1 -o "$OUT/ncu_$f" -f \
      build-device/bin/test_gpu_train_kernels "ncu: one fused SSD forward + backward*" >"$OUT/ncu_$f.log" 2>&1
    echo "== ncu $k (rc $?)"; tail -3 "$OUT/ncu_$f.log"
    "$NCUB" --import "$OUT/ncu_$f.ncu-rep" --print-details all >"$OUT/ncu_$f.txt" 2>&1
    grep -E "Duration|Issued Warp|Eligible|Stall|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per" \
      "$OUT/ncu_$f.txt" | head -24
    # Per-instruction stall samples and counts, CUDA lines interleaved with SASS (-lineinfo).
    "$NCUB" --import "$OUT/ncu_$f.ncu-rep" --page source --csv --print-source cuda,sass 2>&1 | gzip >"$OUT/ncu_src_$f.csv.gz"
    rm -f "$OUT/ncu_$f.ncu-rep" "$OUT/ncu_$f.log"  # only so many files come back from a call
  done
fi
echo "total $(( $(date +%s) - t0 )) s"
