// Scalar references for the training conv1d + SiLU kernels (src/kernels/cuda/conv_train.h has
// the math and layouts). fp32, fp64 accumulation, x contiguous (ldx = C). Torch-free.
#pragma once

#include <cstdint>

namespace dfssm::kernels {

void conv_silu_fwd_ref(const float* x, const float* w, const float* bias, float* out, int64_t B, int64_t L, int C, int K);
// dx, dw (C,K) and dbias (C) are overwritten.
void conv_silu_bwd_ref(const float* x, const float* w, const float* bias, const float* dout, float* dx, float* dw,
                       float* dbias, int64_t B, int64_t L, int C, int K);

}  // namespace dfssm::kernels
