#pragma once
// Mamba-2's two RMSNorms as autograd functions over the CUDA kernels of
// src/kernels/cuda/norm_train.h, one kernel each way:
// - gated (mamba_ssm's RMSNormGated: RMSNorm(y * silu(z)), one RMS per group), z read in place
//   from in_proj's output (ATen's fp32 version made about ten passes);
// - plain (each block's pre-norm and norm_f), where ATen made six passes forward and as many back.
// Both can write their output in bf16 directly: what a bf16 autocast matmul would cast it to
// (the same rounding, so the same result), without the extra pass or the cast's backward.
#include <ATen/ATen.h>

namespace dfssm {

// A CUDA build and tensor, group size a multiple of 4 up to 8192, and DFSSM_NORM_FUSED != 0.
bool gated_norm_fused_available(const at::Tensor& like, int64_t group_size);
void set_gated_norm_fused_enabled(bool on);  // tests compare against the ATen path (both norms)

// y: (b, l, D) fp32; z: (b, l, D) with unit channel stride, fp32 or bf16; w: (D) fp32.
// Returns (b, l, D) in out_dtype (fp32 or bf16).
at::Tensor gated_norm_fused(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w, int64_t group_size,
                            double eps, at::ScalarType out_dtype = at::kFloat);

// The plain RMSNorm over the last dimension (D a multiple of 4 up to 8192) of a CUDA tensor of
// any leading shape (fp32, or cast to it). Returns the same shape in out_dtype (fp32 or bf16).
bool rms_norm_fused_available(const at::Tensor& x);
at::Tensor rms_norm_fused(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype);

}  // namespace dfssm
