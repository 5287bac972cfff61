// Mamba-2's gated RMSNorm for training (forward and backward) on CUDA: mamba_ssm's
// RMSNormGated(norm_before_gate=False),
//   x = y * silu(z);  out = x * rsqrt(mean_group(x^2) + eps) * w
// with one RMS per group of gs = d_inner / ngroups channels. The LibTorch autograd wrapper is
// src/model/gated_norm_fused.cpp; the scalar reference twins are
// src/kernels/cpu/gated_norm_train_ref.h.
//
// Layout: y (R, D) contiguous fp32; z (R, D) with row stride ldz (a column slice of in_proj's
// output), fp32 or bf16; w (D) fp32; out, dout, dy (R, D) contiguous fp32; dz (R, D) contiguous
// in z's dtype; rstd (R, D/gs) fp32. R = batch x length. Plain C++ header: the CUDA runtime only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dfssm::kernels {

enum class NormDtype { f32, bf16 };

// gs must be a multiple of 32 and at most 6144.
cudaError_t gated_norm_fwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w, float* out,
                                float* rstd, int64_t R, int D, int gs, float eps, cudaStream_t stream);

// Floats gated_norm_bwd_cuda needs in `partial`: rows of D per-block sums of dout*n for dw.
int64_t gated_norm_bwd_partial_size(int64_t R, int D);

// dy, dz, and partial (sum its rows for dw). rstd is the forward's.
cudaError_t gated_norm_bwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                const float* rstd, const float* dout, float* dy, void* dz, float* partial, int64_t R,
                                int D, int gs, cudaStream_t stream);

}  // namespace dfssm::kernels
