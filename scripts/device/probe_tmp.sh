set -uo pipefail
OUT=${OUT:-/tmp/o}; mkdir -p $OUT
t0=$(date +%s)
mkdir -p /tmp/old && tar -xf old_f0644d5.tar -C /tmp/old
( cmake -S /tmp/old -B /tmp/old/b -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >/dev/null 2>&1 && cmake --build /tmp/old/b -j 8 --target dfssm >/tmp/old.log 2>&1; echo "old build rc=$?" ) &
cmake -S . -B build-cudart -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >/dev/null 2>&1
cmake --build build-cudart -j 8 --target dfssm >$OUT/build.log 2>&1 || { grep error $OUT/build.log | head; exit 1; }
wait
echo "builds $(( $(date +%s) - t0 )) s"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for b in /tmp/old/b/bin/dfssm build-cudart/bin/dfssm; do
  echo "== $b"
  timeout 150 "$NCU" --clock-control none --metrics gpu__time_duration.sum \
    -k regex:"norm_prologue|sign_gemv|ssm_step|lm_head" --launch-skip 2420 --launch-count 10 \
    $b bench --device cuda --geometry mamba2-1.3b --random --no-graph --no-pdl --no-int8-prefill --prefill 8 \
    --batches 1 --steps 8 --warmup 1 --no-membw $( [[ $b == build* ]] && echo --no-persistent ) >$OUT/ncu.txt 2>&1
  grep -E "^  [a-z_ ]+.*\(|gpu__time_duration" $OUT/ncu.txt | sed -E 's/\(SignGemvArgs, int, int\)|\(NormArgs, int\)|\(SsmArgs\)|, Context.*//' | paste - - | head -12
done
B=build-cudart/bin/dfssm
for c in 512 1024 2048; do
  $B bench --device cuda --geometry mamba2-1.3b --random --prefill 2048 --prefill-chunk $c --batches 1 --steps 4 --no-membw --no-persistent 2>&1 | grep -E "^prefill"
done
echo "total $(( $(date +%s) - t0 )) s"
