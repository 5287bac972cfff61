#pragma once
// mamba_ssm's gated RMSNorm (RMSNorm(y * silu(z)), one RMS per group) as one autograd function
// over the CUDA kernels of src/kernels/cuda/gated_norm_train.h: z is read in place from
// in_proj's output, and the backward is one pass. ATen's fp32 version made about ten passes.
#include <ATen/ATen.h>

namespace dfssm {

// A CUDA build and tensor, group size a multiple of 32 up to 6144, and DFSSM_NORM_FUSED != 0.
bool gated_norm_fused_available(const at::Tensor& like, int64_t group_size);
void set_gated_norm_fused_enabled(bool on);  // tests compare against the ATen path

// y: (b, l, D) fp32; z: (b, l, D) with unit channel stride, fp32 or bf16; w: (D) fp32.
// Returns (b, l, D) fp32.
at::Tensor gated_norm_fused(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w, int64_t group_size,
                            double eps);

}  // namespace dfssm
