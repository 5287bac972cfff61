#!/usr/bin/env bash
# Decode A/B experiments on the GPU machine in one device call (shorter than cuda_runtime.sh):
# torch-free build of dfssm (+ test_cuda_runtime when TESTS=1), the default batch-1/8 decode
# bench, then for each VARIANTS entry ("ENV=V,ENV2=W ...") the same bench twice under it and,
# with TRACE=1, the timeline of one step (DFSSM_CUDA_TRACE) for the default and each variant.
# TESTV="ENV=V ...": test_cuda_runtime under those variants too (the default always runs with TESTS=1).
# MEMCHECK="<Catch filter>": compute-sanitizer memcheck on those test_cuda_runtime cases (needs TESTS=1).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/o}; mkdir -p $OUT
BUILD=build-cudart
t0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader
cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >/tmp/configure.log 2>&1 || { tail -20 /tmp/configure.log; exit 1; }
TGT="dfssm"; [[ ${TESTS:-0} == 1 ]] && TGT="dfssm test_cuda_runtime test_cuda_kernels"
cmake --build $BUILD -j 16 --target $TGT >/tmp/build.log 2>&1 || { grep -A3 error /tmp/build.log | head -30; exit 1; }
echo "build ok ($(( $(date +%s) - t0 )) s)"
B=$BUILD/bin/dfssm
G="--device cuda --geometry mamba2-1.3b --random --prefill 16 --no-membw"
bench() { for r in 1 2; do env "$@" timeout 60 $B bench $G --batches ${BATCHES:-1,8} 2>&1 | grep -E "decode b" | sed "s/^/[$*] /"; done; }
trace() { env "$@" DFSSM_CUDA_TRACE=1 timeout 60 $B bench $G --batches 1 2>&1 | grep -A4 "trace (" | sed "s/^/[$*] /"; }
bench X=0
[[ ${TRACE:-0} == 1 ]] && trace X=0
for v in ${VARIANTS:-}; do
  bench ${v//,/ }
  [[ ${TRACE:-0} == 1 ]] && trace ${v//,/ }
done
bench X=0
if [[ ${TESTS:-0} == 1 ]]; then
  for v in X=0 ${TESTV:-}; do
    env ${v//,/ } timeout 200 $BUILD/bin/test_cuda_runtime >$OUT/test_cuda_runtime_${v//[=,]/_}.txt 2>&1
    echo "test_cuda_runtime [$v] rc=$? $(tail -1 $OUT/test_cuda_runtime_${v//[=,]/_}.txt)"
  done
  timeout 100 $BUILD/bin/test_cuda_kernels >$OUT/test_cuda_kernels.txt 2>&1; echo "test_cuda_kernels rc=$? $(tail -1 $OUT/test_cuda_kernels.txt)"
fi
if [[ -n ${MEMCHECK:-} ]]; then  # compute-sanitizer memcheck on the test_cuda_runtime cases named (a Catch filter)
  timeout 200 /usr/local/cuda/bin/compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
    $BUILD/bin/test_cuda_runtime "$MEMCHECK" >$OUT/memcheck.txt 2>&1; echo "memcheck [$MEMCHECK] rc=$?"; tail -3 $OUT/memcheck.txt
fi
echo "total $(( $(date +%s) - t0 )) s"
