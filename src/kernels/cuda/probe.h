// Launch-floor probe for the decode benchmark: what a chain of K dependent kernels costs when
// they do nothing, i.e. the part of a decode step that no kernel body can remove. The decode step
// at batch 1 is such a chain (3 kernels per layer + 3), so its time minus this floor is what the
// kernel bodies cost.
#pragma once
#include <cuda_runtime.h>

namespace dfssm::kernels::cuda {

// Times `reps` replays of a CUDA graph holding `kernels` launches of an empty kernel (grid
// `blocks` x `threads`; each block triggers its dependents and then waits for the previous
// kernel, as the decode kernels do), each launched with programmatic dependent launch when
// `pdl`. *ms_per_chain: milliseconds per replay (median of 5 timed batches of `reps`).
cudaError_t launch_floor_ms(int kernels, int blocks, int threads, bool pdl, int reps, float* ms_per_chain);

}  // namespace dfssm::kernels::cuda
