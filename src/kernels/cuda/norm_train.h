// The RMSNorms of a Mamba-2 model for training (forward and backward) on CUDA:
//   gated (the mixer's, mamba_ssm's RMSNormGated(norm_before_gate=False)):
//     x = y * silu(z);  out = x * rsqrt(mean_group(x^2) + eps) * w
//     with one RMS per group of gs = d_inner / ngroups channels;
//   plain (each block's pre-norm and norm_f): out = y * rsqrt(mean(y^2) + eps) * w (gs = D).
// The LibTorch autograd wrappers are src/model/norm_fused.cpp; the scalar reference twins are
// src/kernels/cpu/norm_train_ref.h.
//
// Layout: y (R, D) contiguous fp32; z (R, D) with row stride ldz (a column slice of in_proj's
// output), fp32 or bf16; w (D) fp32; out and dout (R, D) contiguous in `odt` (fp32, or bf16 when
// the consumer is a bf16 autocast matmul: the same rounding the autocast cast would do); dy (R, D)
// contiguous fp32; dz (R, D) in z's dtype at row stride lddz (D: contiguous); rstd (R, D/gs) fp32. R = batch x length.
// Vector access: D, gs and ldz multiples of 4, every pointer 16-byte aligned (8 for bf16 ones);
// anything else returns cudaErrorInvalidValue. Plain C++ header: the CUDA runtime only.
#pragma once

#ifndef DFSSM_CUDA_EMULATE  // tests/cuda_emu/cuda_emu.h stands in for it
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace dfssm::kernels {

enum class NormDtype { f32, bf16 };

// The largest group (or plain D) the kernels take.
constexpr int kNormMaxGroup = 8192;

// gs a multiple of 4 up to kNormMaxGroup dividing D.
cudaError_t gated_norm_fwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w, void* out,
                                NormDtype odt, float* rstd, int64_t R, int D, int gs, float eps, cudaStream_t stream);

// The gated forward with y in bf16 (8-byte aligned) and z in bf16 (zdt must be bf16): the no-grad
// first pass of an activation-checkpointed block reads the SSD output it keeps in bf16.
cudaError_t gated_norm_fwd_bf16y_cuda(const void* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                      void* out, NormDtype odt, float* rstd, int64_t R, int D, int gs, float eps,
                                      cudaStream_t stream);

// How the kernels hide a row's load latency (norm_train.cu, prefetch()): the next row's loads
// in registers (1) or two blocks per SM (0, the default; anything else means 0). Debug/benchmark
// switch (DFSSM_NORM_PREFETCH=1 sets 1 at the first launch). Not thread-safe.
void set_norm_prefetch(int mode);
// Without the prefetch, the forwards take rows in pairs (both rows' loads in flight, one barrier
// for the two sums; the same result bit for bit): 1 (default), 0 one row at a time, -1 re-reads
// DFSSM_NORM_FWD_PAIRS (A/B switch; 0 turns it off). Not thread-safe.
void set_norm_fwd_pairs(int mode);
// The gated forward with bf16 z as a cp.async pipeline of rows through shared memory (the same
// result bit for bit): 1 (default: faster on the H200), 0, -1 re-reads DFSSM_NORM_FWD_PIPE (A/B
// switch; 0 turns it off). Not thread-safe.
void set_norm_fwd_pipe(int mode);
// The gated backward with bf16 z and dout as the same kind of pipeline (dy and dz bit for bit; dw
// summed over other row sets, so its last bits differ): 1 (default), 0, -1 re-reads
// DFSSM_NORM_BWD_PIPE. Not thread-safe.
void set_norm_bwd_pipe(int mode);

// Floats the backward kernels need in `partial`: rows of D per-block sums of dout*n for dw.
int64_t norm_bwd_partial_size(int64_t R, int D);

// dy, dz, and partial (sum its rows for dw). rstd is the forward's; dout is in odt. dz's rows are
// lddz elements apart (a multiple of 4, >= D; 0: D, contiguous): a column slice of in_proj's
// output gradient, written in place (model/split_grad.h).
cudaError_t gated_norm_bwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                const float* rstd, const void* dout, NormDtype odt, float* dy, void* dz, float* partial,
                                int64_t R, int D, int gs, cudaStream_t stream, int64_t lddz = 0);
// The same with y in bf16 (8-byte aligned) and z in bf16 (zdt must be bf16); dy stays fp32: the
// recomputation of a checkpointed block reads the SSD output it kept in bf16 as is, both ways.
cudaError_t gated_norm_bwd_bf16y_cuda(const void* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                      const float* rstd, const void* dout, NormDtype odt, float* dy, void* dz,
                                      float* partial, int64_t R, int D, int gs, cudaStream_t stream, int64_t lddz = 0);

// The plain RMSNorm over rows of D (a multiple of 4 up to kNormMaxGroup).
cudaError_t rms_norm_fwd_cuda(const float* y, const float* w, void* out, NormDtype odt, float* rstd, int64_t R, int D,
                              float eps, cudaStream_t stream);
cudaError_t rms_norm_bwd_cuda(const float* y, const float* w, const float* rstd, const void* dout, NormDtype odt,
                              float* dy, float* partial, int64_t R, int D, cudaStream_t stream);

// The residual add fused into the plain norm (mamba_ssm's fused add + norm): res_out = res + h
// (res fp32, h (R, D) contiguous in hdt, fp32 or bf16), out = the norm of res_out.
cudaError_t add_rms_norm_fwd_cuda(const float* res, const void* h, NormDtype hdt, float* res_out, const float* w,
                                  void* out, NormDtype odt, float* rstd, int64_t R, int D, float eps,
                                  cudaStream_t stream);
// Its backward: dy = the norm's dx + dres (the stream's gradient from the layers above, fp32), in
// fp32 and, where dh is not null, also in hdt (the block output's gradient).
cudaError_t rms_norm_bwd_add_cuda(const float* y, const float* w, const float* rstd, const void* dout, NormDtype odt,
                                  const float* dres, float* dy, void* dh, NormDtype hdt, float* partial, int64_t R,
                                  int D, cudaStream_t stream);

}  // namespace dfssm::kernels
