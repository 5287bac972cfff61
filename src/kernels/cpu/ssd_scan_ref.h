// Scalar reference of the fused chunked-SSD forward (kernels/cuda/ssd_scan.h states the math):
// the same chunk decomposition, fp64 accumulation, any P, N and T. Torch-free.
#pragma once

#include "kernels/ssd_scan_args.h"

namespace dfssm::kernels {

void ssd_scan_fwd_ref(const SsdScanArgs& a);

// Every gradient of ssd_scan_fwd_ref's outputs (y + D·x and the final state), by the chunk
// decomposition run backwards (docs/training.md, "The SSD backward, chunk by chunk"): the
// math the fused backward kernels implement, in fp64.
void ssd_scan_bwd_ref(const SsdScanArgs& a, const SsdScanGrads& g);

}  // namespace dfssm::kernels
