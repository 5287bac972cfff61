// Scalar references for the chunked SSD's diagonal-block kernels (src/kernels/cuda/ssd_train.h
// states the math and the layouts). fp32 in and out, fp64 accumulation. Torch-free.
#pragma once

#include <cstdint>

namespace dfssm::kernels {

void ssd_mask_fwd_ref(const float* acs, const float* cb, float* M, int64_t Z, int H, int G, int T);
// dacs is overwritten (not accumulated), dcb too.
void ssd_mask_bwd_ref(const float* acs, const float* cb, const float* dM, float* dacs, float* dcb, int64_t Z, int H,
                      int G, int T);

}  // namespace dfssm::kernels
