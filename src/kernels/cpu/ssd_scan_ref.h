// Scalar reference of the fused chunked-SSD forward (kernels/cuda/ssd_scan.h states the math):
// the same chunk decomposition, fp64 accumulation, any P, N and T. Torch-free.
#pragma once

#include "kernels/ssd_scan_args.h"

namespace dfssm::kernels {

void ssd_scan_fwd_ref(const SsdScanArgs& a);

}  // namespace dfssm::kernels
