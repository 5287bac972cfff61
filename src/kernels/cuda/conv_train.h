// Mamba-2's causal depthwise conv1d + SiLU for training (forward and backward) on CUDA, reading
// the conv channels straight out of in_proj's output. The LibTorch autograd wrapper is
// src/model/conv_fused.cpp; the scalar reference twins are src/kernels/cpu/conv_train_ref.h.
//
//   pre[b,t,c] = bias[c] + sum_k w[c,k] * x[b, t-K+1+k, c]   (x = 0 before t = 0)
//   out[b,t,c] = silu(pre[b,t,c])
//
// Layout: x (B, L, C) with row stride ldx elements (a column slice of in_proj's output), fp32 or
// bf16; w (C, K) and bias (C) fp32; out (B, L, C) contiguous fp32 (or bf16, the forward on request);
// dout (B, L, C) contiguous fp32; dx (B, L, C) in x's
// dtype at row stride lddx. Plain C++ header: the CUDA runtime only.
#pragma once

#ifndef DFSSM_CUDA_EMULATE  // tests/cuda_emu/cuda_emu.h stands in for it
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace dfssm::kernels {

enum class ConvDtype { f32, bf16 };

// out: fp32, or bf16 (rounded to nearest even) where out_dt says so: for passes without a
// backward whose SSD forward reads bf16 x, B and C (ssd_scan.h, DFSSM_SSD_SEQ_VERSION=4).
cudaError_t conv_silu_fwd_cuda(const void* x, ConvDtype dt, int64_t ldx, const float* w, const float* bias, void* out,
                               int64_t B, int64_t L, int C, int K, cudaStream_t stream,
                               ConvDtype out_dt = ConvDtype::f32);

// Number of floats conv_silu_bwd_cuda needs in `partial` (per-block sums of dw and dbias).
int64_t conv_silu_bwd_partial_size(int64_t B, int64_t L, int C, int K);

// dx = the input gradient, rows lddx elements apart (>= C; 0: C, contiguous: a column slice of
// in_proj's output gradient, written in place, model/split_grad.h); partial receives per-block
// sums, rows of C*(K+1): dw (C,K) then dbias (C). Sum its rows (leading dimension
// conv_silu_bwd_partial_size / (C*(K+1))) for dw and dbias: deterministic, no atomics.
cudaError_t conv_silu_bwd_cuda(const void* x, ConvDtype dt, int64_t ldx, const float* w, const float* bias,
                               const float* dout, void* dx, float* partial, int64_t B, int64_t L, int C, int K,
                               cudaStream_t stream, int64_t lddx = 0);

}  // namespace dfssm::kernels
