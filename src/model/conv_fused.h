#pragma once
// Mamba-2's causal depthwise conv1d + SiLU as one autograd function over the CUDA kernels of
// src/kernels/cuda/conv_train.h. It reads the conv channels in place from in_proj's output
// (no transpose, no padded copy) and returns fp32 channels-last activations, which the SSD takes
// as they are. ATen's path (pad, transpose, depthwise conv2d, SiLU, transpose back, casts) took
// about 7% of a 1.3B distillation step.
#include <ATen/ATen.h>

#include "model/split_grad.h"

namespace dfssm {

// Whether conv_silu_fused can run on `like` (b, l, ...): a CUDA build, a CUDA tensor, d_conv in
// {2, 3, 4}, b <= 65535, l <= 2M, and the debug switch DFSSM_CONV_FUSED is not 0.
bool conv_fused_available(const at::Tensor& like, int64_t d_conv);
void set_conv_fused_enabled(bool on);  // tests compare against the ATen path

// x: (b, l, c) with unit channel stride (a column slice of a (b, l, n) tensor is fine), fp32
// or bf16; w: (c, 1, k) fp32; bias: (c) fp32 or undefined. Returns silu(causal conv(x)) as
// (b, l, c) fp32, zero left context. dx_into (optional, split_columns): x's gradient is written
// into those columns of the split's shared buffer instead of a tensor of its own.
at::Tensor conv_silu_fused(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                           const GradInto& dx_into = {});
// The same forward with a bf16 output (the fp32 result rounded to nearest even), without autograd:
// for passes with no gradient whose SSD forward reads bf16 (DFSSM_SSD_SEQ_VERSION=4, ssd_scan.h).
at::Tensor conv_silu_fused_bf16(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

}  // namespace dfssm
