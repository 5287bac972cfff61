// Gated RMSNorm for training, forward and backward (gated_norm_train.h has the math).
//
// Memory layout: y (R, D) fp32; z (R, D) at row stride ldz, fp32 or bf16 (read in place from
// in_proj's output); w (D); out/dout/dy (R, D) fp32; dz (R, D) in z's dtype; rstd (R, D/gs);
// partial (ceil(R/kRows), D) fp32.
//
// Forward: one block per (row, group); thread t owns the group's columns t, t+256, ... (at most
// kMaxJ of them, kept in registers between the sum of squares and the scaled store).
// Backward: one block per (kRows rows, group). Per row: recompute x = y·silu(z) and n = x·rstd
// (registers), reduce dot = sum(dout·w·n) over the block, then dx = rstd·(dout·w - n·dot/gs),
// dy = dx·silu(z), dz = dx·y·silu'(z). dw's column sums over the block's rows stay in registers
// and leave as one row of `partial` (the caller sums the rows: deterministic, no atomics).
#include <cuda_bf16.h>

#include "kernels/cuda/gated_norm_train.h"
#include "kernels/cuda/train_common.cuh"

namespace dfssm::kernels {
namespace {

constexpr int kThreads = 256, kMaxJ = 24, kRows = 32;

using namespace train;  // ld, st, sigmoid

__device__ float block_sum(float v, float* scratch) {  // scratch: kThreads/32 floats + 1
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? scratch[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) scratch[kThreads / 32] = v;
  }
  __syncthreads();
  const float total = scratch[kThreads / 32];
  __syncthreads();  // scratch is reused by the next call
  return total;
}

template <typename E>
__global__ void __launch_bounds__(kThreads) norm_fwd_kernel(const float* __restrict__ y, const E* __restrict__ z,
                                                            int64_t ldz, const float* __restrict__ w,
                                                            float* __restrict__ out, float* __restrict__ rstd, int D,
                                                            int gs, float eps) {
  __shared__ float scratch[kThreads / 32 + 1];
  const int64_t r = blockIdx.x;
  const int g0 = blockIdx.y * gs;
  float x[kMaxJ];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j) {
    const int i = threadIdx.x + j * kThreads;
    x[j] = 0.f;
    if (i < gs) {
      const float zi = ld(z + r * ldz + g0 + i);
      x[j] = y[r * D + g0 + i] * zi * sigmoid(zi);
      ss += x[j] * x[j];
    }
  }
  const float rs = rsqrtf(block_sum(ss, scratch) / float(gs) + eps);
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i < gs) out[r * D + g0 + i] = x[j] * rs * w[g0 + i];
  }
  if (threadIdx.x == 0) rstd[r * (D / gs) + blockIdx.y] = rs;
}

template <typename E>
__global__ void __launch_bounds__(kThreads) norm_bwd_kernel(const float* __restrict__ y, const E* __restrict__ z,
                                                            int64_t ldz, const float* __restrict__ w,
                                                            const float* __restrict__ rstd,
                                                            const float* __restrict__ dout, float* __restrict__ dy,
                                                            E* __restrict__ dz, float* __restrict__ partial, int64_t R,
                                                            int D, int gs) {
  __shared__ float scratch[kThreads / 32 + 1];
  const int g0 = blockIdx.y * gs;
  const int64_t r0 = int64_t(blockIdx.x) * kRows;
  float gw[kMaxJ];
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j) gw[j] = 0.f;
  for (int64_t r = r0; r < r0 + kRows && r < R; ++r) {
    const float rs = rstd[r * (D / gs) + blockIdx.y];
    float n[kMaxJ], dn[kMaxJ];
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < kMaxJ; ++j) {
      const int i = threadIdx.x + j * kThreads;
      n[j] = dn[j] = 0.f;
      if (i < gs) {
        const float zi = ld(z + r * ldz + g0 + i), d = dout[r * D + g0 + i];
        n[j] = y[r * D + g0 + i] * zi * sigmoid(zi) * rs;
        dn[j] = d * w[g0 + i];
        dot += dn[j] * n[j];
        gw[j] += d * n[j];
      }
    }
    const float mean_dot = block_sum(dot, scratch) / float(gs);
#pragma unroll
    for (int j = 0; j < kMaxJ; ++j) {
      const int i = threadIdx.x + j * kThreads;
      if (i < gs) {
        const float zi = ld(z + r * ldz + g0 + i), s = sigmoid(zi), yi = y[r * D + g0 + i];
        const float dx = rs * (dn[j] - n[j] * mean_dot);
        dy[r * D + g0 + i] = dx * zi * s;
        st(dz + r * D + g0 + i, dx * yi * s * (1.f + zi * (1.f - s)));
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxJ; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i < gs) partial[int64_t(blockIdx.x) * D + g0 + i] = gw[j];
  }
}

bool shapes_ok(int64_t R, int D, int gs, int64_t ldz) {
  return R > 0 && R <= 2147483647LL && gs > 0 && gs % 32 == 0 && gs <= kThreads * kMaxJ && D % gs == 0 &&
         D / gs <= 65535 && ldz >= D;
}

}  // namespace

int64_t gated_norm_bwd_partial_size(int64_t R, int D) { return (R + kRows - 1) / kRows * int64_t(D); }

cudaError_t gated_norm_fwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w, float* out,
                                float* rstd, int64_t R, int D, int gs, float eps, cudaStream_t stream) {
  if (!shapes_ok(R, D, gs, ldz)) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(R), unsigned(D / gs));
  if (zdt == NormDtype::bf16)
    norm_fwd_kernel<<<grid, kThreads, 0, stream>>>(y, static_cast<const __nv_bfloat16*>(z), ldz, w, out, rstd, D, gs, eps);
  else
    norm_fwd_kernel<<<grid, kThreads, 0, stream>>>(y, static_cast<const float*>(z), ldz, w, out, rstd, D, gs, eps);
  return cudaGetLastError();
}

cudaError_t gated_norm_bwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                const float* rstd, const float* dout, float* dy, void* dz, float* partial, int64_t R,
                                int D, int gs, cudaStream_t stream) {
  if (!shapes_ok(R, D, gs, ldz)) return cudaErrorInvalidValue;
  const dim3 grid(unsigned((R + kRows - 1) / kRows), unsigned(D / gs));
  if (zdt == NormDtype::bf16)
    norm_bwd_kernel<<<grid, kThreads, 0, stream>>>(y, static_cast<const __nv_bfloat16*>(z), ldz, w, rstd, dout, dy,
                                                   static_cast<__nv_bfloat16*>(dz), partial, R, D, gs);
  else
    norm_bwd_kernel<<<grid, kThreads, 0, stream>>>(y, static_cast<const float*>(z), ldz, w, rstd, dout, dy,
                                                   static_cast<float*>(dz), partial, R, D, gs);
  return cudaGetLastError();
}

}  // namespace dfssm::kernels
