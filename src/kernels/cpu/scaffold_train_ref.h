// Scalar references for the binary scaffold's effective-weight kernels (src/kernels/cuda/
// scaffold_train.h has the math and layouts): fp32 elementwise in the kernels' order, fp64
// accumulation for the rank-r dot products and the row / column sums. Torch-free.
#pragma once

#include <cstdint>

namespace dfssm::kernels {

// W (R, C) fp32. U (R, r), V (C, r) may be null when r = 0.
void scaffold_weight_fwd_ref(const float* w, const float* A, const float* Bc, const float* U, const float* V,
                             int64_t R, int64_t C, int r, float* W);
// dw (R, C), dA (R), dBc (C) overwritten.
void scaffold_weight_bwd_ref(const float* w, const float* A, const float* Bc, const float* dW, int64_t R, int64_t C,
                             float clip, float* dw, float* dA, float* dBc);

}  // namespace dfssm::kernels
