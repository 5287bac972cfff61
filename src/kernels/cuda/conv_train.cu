// Causal depthwise conv1d + SiLU for training, forward and backward (conv_train.h has the math).
//
// Memory layout: x (B, L, C) with row stride ldx (fp32 or bf16: a column slice of in_proj's
// output, read in place); w (C, K), bias (C), out/dout (B, L, C) fp32; dx (B, L, C) in x's dtype;
// partial (B * ceil(L/kBwdRun), C, K+1) fp32.
//
// One thread per channel and run of consecutive timesteps; a warp covers 32 adjacent channels, so
// every row access is one contiguous 64- or 128-byte segment. The K-1 previous inputs live in
// registers and slide with t, so each input is read once per run (plus a K-1 halo).
// Backward, per thread: walk u over the run plus K-1 steps of lookahead, recompute pre[u] and
// dpre[u] = dout[u]·silu'(pre[u]); keep the last K dpre in registers and emit
// dx[u-K+1] = sum_k w[k]·dpre[u-k]; accumulate dw and dbias over the run's own u and store
// them in the thread's row of `partial` (the caller sums the rows: deterministic, no atomics).
#include <cuda_bf16.h>

#include "kernels/cuda/conv_train.h"
#include "kernels/cuda/train_common.cuh"

namespace dfssm::kernels {
namespace {

constexpr int kThreads = 128, kFwdRun = 32, kBwdRun = 64;

using namespace train;  // ld, st, sigmoid

template <typename E, int K>
__global__ void __launch_bounds__(kThreads) conv_fwd_kernel(const E* __restrict__ x, int64_t ldx,
                                                            const float* __restrict__ w, const float* __restrict__ bias,
                                                            float* __restrict__ out, int64_t L, int C) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.z, t0 = int64_t(blockIdx.y) * kFwdRun;
  float wk[K], win[K];
#pragma unroll
  for (int k = 0; k < K; ++k) wk[k] = w[c * K + k];
  const float b0 = bias ? bias[c] : 0.f;
  const E* xb = x + b * L * ldx + c;
#pragma unroll
  for (int k = 0; k < K - 1; ++k) {  // the K-1 inputs before t0 (zeros before the sequence)
    const int64_t s = t0 - (K - 1) + k;
    win[k] = s >= 0 ? ld(xb + s * ldx) : 0.f;
  }
  const int64_t t1 = t0 + kFwdRun < L ? t0 + kFwdRun : L;
  for (int64_t t = t0; t < t1; ++t) {
    win[K - 1] = ld(xb + t * ldx);
    float p = b0;
#pragma unroll
    for (int k = 0; k < K; ++k) p += wk[k] * win[k];
    out[(b * L + t) * C + c] = p * sigmoid(p);
#pragma unroll
    for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
  }
}

template <typename E, int K>
__global__ void __launch_bounds__(kThreads) conv_bwd_kernel(const E* __restrict__ x, int64_t ldx,
                                                            const float* __restrict__ w, const float* __restrict__ bias,
                                                            const float* __restrict__ dout, E* __restrict__ dx,
                                                            float* __restrict__ partial, int64_t L, int C) {
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= C) return;
  const int64_t b = blockIdx.z, t0 = int64_t(blockIdx.y) * kBwdRun;
  float wk[K], win[K], dp[K], gw[K];
#pragma unroll
  for (int k = 0; k < K; ++k) wk[k] = w[c * K + k], dp[k] = 0.f, gw[k] = 0.f;
  float gb = 0.f;
  const float b0 = bias ? bias[c] : 0.f;
  const E* xb = x + b * L * ldx + c;
#pragma unroll
  for (int k = 0; k < K - 1; ++k) {
    const int64_t s = t0 - (K - 1) + k;
    win[k] = s >= 0 ? ld(xb + s * ldx) : 0.f;
  }
  const int64_t own_end = t0 + kBwdRun < L ? t0 + kBwdRun : L;
  const int64_t u_end = own_end + (K - 1) < L ? own_end + (K - 1) : L;  // lookahead for dx
  for (int64_t u = t0; u < own_end + (K - 1); ++u) {
    float d = 0.f;  // dpre[u]; zero past the end of the sequence
    if (u < u_end) {
      win[K - 1] = ld(xb + u * ldx);
      float p = b0;
#pragma unroll
      for (int k = 0; k < K; ++k) p += wk[k] * win[k];
      const float s = sigmoid(p);
      d = dout[(b * L + u) * C + c] * s * (1.f + p * (1.f - s));
      if (u < own_end) {
#pragma unroll
        for (int k = 0; k < K; ++k) gw[k] += d * win[k];
        gb += d;
      }
#pragma unroll
      for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
    }
#pragma unroll
    for (int k = 0; k < K - 1; ++k) dp[k] = dp[k + 1];
    dp[K - 1] = d;  // dp[j] = dpre[u - (K-1) + j]
    const int64_t t = u - (K - 1);  // dx[t] = sum_k w[k] * dpre[t + K-1-k]
    if (t >= t0) {
      float g = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) g += wk[k] * dp[K - 1 - k];
      st(dx + (b * L + t) * C + c, g);
    }
  }
  float* pr = partial + ((b * gridDim.y + blockIdx.y) * int64_t(C) + c) * (K + 1);
#pragma unroll
  for (int k = 0; k < K; ++k) pr[k] = gw[k];
  pr[K] = gb;
}

template <int K, typename E>
void launch(bool fwd, const E* x, int64_t ldx, const float* w, const float* bias, float* out, const float* dout, E* dx,
            float* partial, int64_t B, int64_t L, int C, cudaStream_t st) {
  const int run = fwd ? kFwdRun : kBwdRun;
  const dim3 grid(unsigned((C + kThreads - 1) / kThreads), unsigned((L + run - 1) / run), unsigned(B));
  if (fwd)
    conv_fwd_kernel<E, K><<<grid, kThreads, 0, st>>>(x, ldx, w, bias, out, L, C);
  else
    conv_bwd_kernel<E, K><<<grid, kThreads, 0, st>>>(x, ldx, w, bias, dout, dx, partial, L, C);
}

template <typename E>
cudaError_t dispatch(bool fwd, const void* x, int64_t ldx, const float* w, const float* bias, float* out,
                     const float* dout, void* dx, float* partial, int64_t B, int64_t L, int C, int K, cudaStream_t st) {
  const auto* xe = static_cast<const E*>(x);
  auto* dxe = static_cast<E*>(dx);
  switch (K) {
    case 2: launch<2>(fwd, xe, ldx, w, bias, out, dout, dxe, partial, B, L, C, st); break;
    case 3: launch<3>(fwd, xe, ldx, w, bias, out, dout, dxe, partial, B, L, C, st); break;
    case 4: launch<4>(fwd, xe, ldx, w, bias, out, dout, dxe, partial, B, L, C, st); break;
    default: return cudaErrorInvalidValue;  // d_conv in {2, 3, 4}
  }
  return cudaGetLastError();
}

bool shapes_ok(int64_t B, int64_t L, int C, int K, int64_t ldx) {
  return B > 0 && B <= 65535 && L > 0 && C > 0 && K >= 2 && K <= 4 && ldx >= C && (L + kFwdRun - 1) / kFwdRun <= 65535;
}

}  // namespace

int64_t conv_silu_bwd_partial_size(int64_t B, int64_t L, int C, int K) {
  return B * ((L + kBwdRun - 1) / kBwdRun) * int64_t(C) * (K + 1);
}

cudaError_t conv_silu_fwd_cuda(const void* x, ConvDtype dt, int64_t ldx, const float* w, const float* bias, float* out,
                               int64_t B, int64_t L, int C, int K, cudaStream_t stream) {
  if (!shapes_ok(B, L, C, K, ldx)) return cudaErrorInvalidValue;
  return dt == ConvDtype::bf16
             ? dispatch<__nv_bfloat16>(true, x, ldx, w, bias, out, nullptr, nullptr, nullptr, B, L, C, K, stream)
             : dispatch<float>(true, x, ldx, w, bias, out, nullptr, nullptr, nullptr, B, L, C, K, stream);
}

cudaError_t conv_silu_bwd_cuda(const void* x, ConvDtype dt, int64_t ldx, const float* w, const float* bias,
                               const float* dout, void* dx, float* partial, int64_t B, int64_t L, int C, int K,
                               cudaStream_t stream) {
  if (!shapes_ok(B, L, C, K, ldx)) return cudaErrorInvalidValue;
  return dt == ConvDtype::bf16
             ? dispatch<__nv_bfloat16>(false, x, ldx, w, bias, nullptr, dout, dx, partial, B, L, C, K, stream)
             : dispatch<float>(false, x, ldx, w, bias, nullptr, dout, dx, partial, B, L, C, K, stream);
}

}  // namespace dfssm::kernels
