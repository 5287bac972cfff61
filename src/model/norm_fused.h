#pragma once
// Mamba-2's two RMSNorms as autograd functions over the CUDA kernels of
// src/kernels/cuda/norm_train.h, one kernel each way:
// - gated (mamba_ssm's RMSNormGated: RMSNorm(y * silu(z)), one RMS per group), z read in place
//   from in_proj's output (ATen's fp32 version made about ten passes);
// - plain (each block's pre-norm and norm_f), where ATen made six passes forward and as many back.
// Both can write their output in bf16 directly: what a bf16 autocast matmul would cast it to
// (the same rounding, so the same result), without the extra pass or the cast's backward.
#include <ATen/ATen.h>

#include "model/split_grad.h"

namespace dfssm {

// A CUDA build and tensor, group size a multiple of 4 up to 8192, and DFSSM_NORM_FUSED != 0.
bool gated_norm_fused_available(const at::Tensor& like, int64_t group_size);
void set_gated_norm_fused_enabled(bool on);  // tests compare against the ATen path (both norms)

// y: (b, l, D) fp32 (or bf16); z: (b, l, D) with unit channel stride, fp32 or bf16; w: (D) fp32.
// Returns (b, l, D) in out_dtype (fp32 or bf16). A bf16 y with a bf16 z is read as is, both ways.
// y_values (optional, y's shape, fp32 or bf16, no gradient): the values to read in place of y's,
// where y only carries the graph (ssd_scan_train's y with y_given); y's gradient keeps y's dtype.
// dz_into (optional, split_columns): z's gradient is written into those columns of the split's
// shared buffer instead of a tensor of its own.
at::Tensor gated_norm_fused(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w, int64_t group_size,
                            double eps, at::ScalarType out_dtype = at::kFloat, const at::Tensor& y_values = {},
                            const GradInto& dz_into = {});

// The plain RMSNorm over the last dimension (D a multiple of 4 up to 8192) of a CUDA tensor of
// any leading shape (fp32, or cast to it). Returns the same shape in out_dtype (fp32 or bf16).
bool rms_norm_fused_available(const at::Tensor& x);
at::Tensor rms_norm_fused(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype);

// The residual add fused into the plain norm (mamba_ssm's fused add + RMSNorm), one kernel each
// way: returns {res + h, rmsnorm(res + h) in out_dtype}; its backward adds the new stream's
// gradient to the norm's and writes the block output's gradient in h's dtype in the same pass.
// res: (..., D) fp32; h: the same shape, fp32 or bf16. Available where rms_norm_fused is and
// DFSSM_ADD_NORM_FUSED != 0 (on by default).
bool add_rms_norm_fused_available(const at::Tensor& res, const at::Tensor& h);
void set_add_rms_norm_fused_enabled(bool on);  // tests compare against the add, then the norm
std::pair<at::Tensor, at::Tensor> add_rms_norm_fused(const at::Tensor& res, const at::Tensor& h, const at::Tensor& w,
                                                     double eps, at::ScalarType out_dtype);

// rms_norm_fused whose backward also adds `dres` (fp32, x's shape) to x's gradient and writes
// that sum, in dh's dtype, into `dh` (preallocated, x's shape, contiguous): an activation-
// checkpointed block's recomputed norm (recompute.cpp), where the stream's gradient from above
// and the block output's gradient below are known before its backward runs. Neither dres nor dh
// takes a gradient.
at::Tensor rms_norm_fused_add_grad(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype,
                                   const at::Tensor& dres, const at::Tensor& dh);

}  // namespace dfssm
