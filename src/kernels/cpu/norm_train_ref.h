// Scalar references for the training RMSNorm kernels, gated and plain (src/kernels/cuda/norm_train.h
// has the math and layouts). fp32, fp64 accumulation, z contiguous. Torch-free.
#pragma once

#include <cstdint>

namespace dfssm::kernels {

void gated_norm_fwd_ref(const float* y, const float* z, const float* w, float* out, int64_t R, int D, int gs, float eps);
// dy, dz and dw (D) are overwritten.
void gated_norm_bwd_ref(const float* y, const float* z, const float* w, const float* dout, float* dy, float* dz,
                        float* dw, int64_t R, int D, int gs, float eps);

// The plain RMSNorm over rows of D: out = y * rsqrt(mean(y^2) + eps) * w; dy and dw overwritten.
void rms_norm_fwd_ref(const float* y, const float* w, float* out, int64_t R, int D, float eps);
void rms_norm_bwd_ref(const float* y, const float* w, const float* dout, float* dy, float* dw, int64_t R, int D,
                      float eps);

}  // namespace dfssm::kernels
