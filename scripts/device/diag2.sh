#!/usr/bin/env bash
# Diagnosis of the CUDA engine's run-to-run differences at the 1.3B widths (debug switches).
set -uo pipefail
OUT=${OUT:-/tmp/o}; mkdir -p $OUT
BUILD=build-cudart
cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >$OUT/configure.log 2>&1 || { tail -20 $OUT/configure.log; exit 1; }
cmake --build $BUILD -j 16 --target test_cuda_runtime >$OUT/build.log 2>&1 || { grep error $OUT/build.log | head; exit 1; }
T=$BUILD/bin/test_cuda_runtime
run() { echo "== $*"; env "$@" DFSSM_DIAG_LAYERS=8 timeout 100 $T "[.diag]" 2>&1 | grep -E "^diag" | sed -E 's/diag 8 layers //'; }
run X=1
run DFSSM_CUDA_SYNC_EACH=1
run DFSSM_CUDA_MT=1
run DFSSM_CUDA_MT=1 DFSSM_CUDA_SYNC_EACH=1
timeout 60 $T "CUDA in_proj path*" 2>&1 | grep -E "in_proj B"
DFSSM_CUDA_DUMP=1 DFSSM_DIAG_LAYERS=8 timeout 100 $T "[.diag]" >$OUT/dump.txt 2>&1
awk -v out=$OUT '/^dump/ {buf = buf $0 "\n"} /^diag .* run/ {f = out "/run" $5; printf "%s", buf > f; close(f); buf = ""}' $OUT/dump.txt
ls $OUT; grep "^diag" $OUT/dump.txt
echo "first differences run1 vs run3:"; diff $OUT/run1 $OUT/run3 | head -20
echo "count lines: $(wc -l < $OUT/run1) $(wc -l < $OUT/run3)"
