set -uo pipefail
mkdir -p /tmp/old && tar -xf old_f0644d5.tar -C /tmp/old
cmake -S /tmp/old -B /tmp/old/b -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFSSM_WITH_TORCH=OFF -DDFSSM_CUDA=ON >/dev/null 2>&1 && cmake --build /tmp/old/b -j 16 --target dfssm >/tmp/old.log 2>&1; echo "old build rc=$?"
A="--device cuda --geometry mamba2-1.3b --random --prefill 16 --batches 1,8 --no-membw"
f() { grep -E "engine|decode b" | sed -E 's/ \| .*//; s/model mamba2.*//'; }
for i in 1 2; do
/tmp/old/b/bin/dfssm bench $A 2>&1 | f
build-cudart/bin/dfssm bench $A --no-fold 2>&1 | f
build-cudart/bin/dfssm bench $A 2>&1 | f
done
