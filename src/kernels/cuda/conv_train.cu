// Causal depthwise conv1d + SiLU for training, forward and backward (conv_train.h has the math).
//
// Memory layout: x (B, L, C) with row stride ldx (fp32 or bf16: a column slice of in_proj's
// output, read in place); w (C, K), bias (C), dout (B, L, C) fp32; out (B, L, C) fp32, or bf16 on
// request (the no-grad passes whose SSD forward reads bf16); dx (B, L, C) in x's dtype at row stride lddx (C: contiguous);
// partial (B * ceil(L/kBwdRun), C, K+1) fp32.
//
// One thread per channel and run of consecutive timesteps; a warp covers 32 adjacent channels, so
// every row access is one contiguous 64- or 128-byte segment. The K-1 previous inputs live in
// registers and slide with t, so each input is read once per run (plus a K-1 halo).
// Backward, per thread: walk u over the run plus K-1 steps of lookahead, recompute pre[u] and
// dpre[u] = dout[u]·silu'(pre[u]); keep the last K dpre in registers and emit
// dx[u-K+1] = sum_k w[k]·dpre[u-k]; accumulate dw and dbias over the run's own u and store
// them in the thread's row of `partial` (the caller sums the rows: deterministic, no atomics).
//
// Version 2 (the default where the shapes allow; DFSSM_CONV_V1=1 keeps version 1): a thread owns
// V adjacent channels (vector loads and stores) and issues U timesteps' loads before it computes
// them. Version 1 (one channel, one 2-byte load per step) reached 2.3 TB/s forward and 1.5 TB/s
// backward on the H200 at 16 x 2048 x 4352 (bf16 input). scripts/device/micro/conv_bench.cu timed
// V in {1, 2, 4} x U in {1, 2, 4, 8} x 64-256 threads there: more channels or steps per thread
// cost registers (V4 U4 backward: 168, 12 warps per SM) and lost; the chosen V2 U4 forward (56
// registers) and V2 U1 backward (56) ran 0.264 and 0.473 ms against version 1's 0.367 and 0.769
// (3.2 and 2.4 TB/s), with bit-identical results.
#ifndef DFSSM_CUDA_EMULATE
#include <cuda_bf16.h>
#endif

#include <cstdlib>

#include "kernels/cuda/conv_train.h"
#include "kernels/cuda/train_common.cuh"

namespace dfssm::kernels {
namespace {

constexpr int kThreads = 128, kFwdRun = 32, kBwdRun = 64;

using namespace train;  // ld, st, sigmoid

template <typename E, typename O, int K>
__global__ void __launch_bounds__(kThreads) conv_fwd_kernel(const E* __restrict__ x, int64_t ldx,
                                                            const float* __restrict__ w, const float* __restrict__ bias,
                                                            O* __restrict__ out, int64_t L, int C) {
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
    st(out + (b * L + t) * C + c, p * sigmoid(p));
#pragma unroll
    for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
  }
}

template <typename E, int K>
__global__ void __launch_bounds__(kThreads) conv_bwd_kernel(const E* __restrict__ x, int64_t ldx,
                                                            const float* __restrict__ w, const float* __restrict__ bias,
                                                            const float* __restrict__ dout, E* __restrict__ dx,
                                                            float* __restrict__ partial, int64_t L, int C,
                                                            int64_t lddx) {
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
      st(dx + (b * L + t) * lddx + c, g);
    }
  }
  float* pr = partial + ((b * gridDim.y + blockIdx.y) * int64_t(C) + c) * (K + 1);
#pragma unroll
  for (int k = 0; k < K; ++k) pr[k] = gw[k];
  pr[K] = gb;
}

// ---- version 2: V channels per thread, U timesteps' loads in flight ---------------------------
// The configuration the model runs (scripts/device/micro/conv_bench.cu times the others).
constexpr int kFwdV = 2, kFwdU = 4, kBwdV = 2, kBwdU = 1, kThreads2 = 128;

template <int V, int K>
__device__ __forceinline__ void load_wv(const float* w, const float* bias, int c, float (&wk)[K][V], float (&b0)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
#pragma unroll
    for (int k = 0; k < K; ++k) wk[k][v] = w[(c + v) * K + k];
    b0[v] = bias ? bias[c + v] : 0.f;
  }
}

// The K-1 inputs before t0 (zeros before the sequence).
template <int V, int K, typename E>
__device__ __forceinline__ void load_halo(const E* xb, int64_t ldx, int64_t t0, float (&win)[K][V]) {
#pragma unroll
  for (int k = 0; k < K - 1; ++k) {
    const int64_t s = t0 - (K - 1) + k;
    if (s >= 0) {
      ldv<V>(xb + s * ldx, win[k]);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) win[k][v] = 0.f;
    }
  }
}

template <typename E, typename O, int K, int V, int U, int T>
__global__ void __launch_bounds__(T) conv_fwd_v2_kernel(const E* __restrict__ x, int64_t ldx,
                                                        const float* __restrict__ w, const float* __restrict__ bias,
                                                        O* __restrict__ out, int64_t L, int C) {
  const int c = (int(blockIdx.x) * T + int(threadIdx.x)) * V;
  if (c >= C) return;
  const int64_t b = blockIdx.z, t0 = int64_t(blockIdx.y) * kFwdRun;
  float wk[K][V], b0[V], win[K][V];
  load_wv<V, K>(w, bias, c, wk, b0);
  const E* xb = x + b * L * ldx + c;
  load_halo<V, K>(xb, ldx, t0, win);
  const int64_t t1 = t0 + kFwdRun < L ? t0 + kFwdRun : L;
  for (int64_t t = t0; t < t1; t += U) {
    // ---- U rows' loads in flight together, then their outputs ----
    float xin[U][V];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (t + u < t1) {
        ldv<V>(xb + (t + u) * ldx, xin[u]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) xin[u][v] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float o[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        win[K - 1][v] = xin[u][v];
        float p = b0[v];
#pragma unroll
        for (int k = 0; k < K; ++k) p += wk[k][v] * win[k][v];
        o[v] = p * sigmoid(p);
#pragma unroll
        for (int k = 0; k < K - 1; ++k) win[k][v] = win[k + 1][v];
      }
      if (t + u < t1) stv<V>(out + (b * L + t + u) * C + c, o);
    }
  }
}

template <typename E, int K, int V, int U, int T>
__global__ void __launch_bounds__(T) conv_bwd_v2_kernel(const E* __restrict__ x, int64_t ldx,
                                                        const float* __restrict__ w, const float* __restrict__ bias,
                                                        const float* __restrict__ dout, E* __restrict__ dx,
                                                        float* __restrict__ partial, int64_t L, int C, int64_t lddx) {
  const int c = (int(blockIdx.x) * T + int(threadIdx.x)) * V;
  if (c >= C) return;
  const int64_t b = blockIdx.z, t0 = int64_t(blockIdx.y) * kBwdRun;
  float wk[K][V], b0[V], win[K][V], dp[K][V], gw[K][V], gb[V];
  load_wv<V, K>(w, bias, c, wk, b0);
#pragma unroll
  for (int v = 0; v < V; ++v) {
    gb[v] = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) dp[k][v] = gw[k][v] = 0.f;
  }
  const E* xb = x + b * L * ldx + c;
  load_halo<V, K>(xb, ldx, t0, win);
  const int64_t own_end = t0 + kBwdRun < L ? t0 + kBwdRun : L;
  const int64_t u_end = own_end + (K - 1) < L ? own_end + (K - 1) : L;  // lookahead for dx
  for (int64_t u0 = t0; u0 < own_end + (K - 1); u0 += U) {
    // ---- U steps' x and dout rows in flight together (zeros past the sequence) ----
    float xin[U][V], din[U][V];
#pragma unroll
    for (int i = 0; i < U; ++i) {
      if (u0 + i < u_end) {
        ldv<V>(xb + (u0 + i) * ldx, xin[i]);
        ldv<V>(dout + (b * L + u0 + i) * C + c, din[i]);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) xin[i][v] = din[i][v] = 0.f;
      }
    }
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const int64_t u = u0 + i;
      if (u >= own_end + (K - 1)) break;
      float g[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float d = 0.f;  // dpre[u]; zero past the end of the sequence
        if (u < u_end) {
          win[K - 1][v] = xin[i][v];
          float p = b0[v];
#pragma unroll
          for (int k = 0; k < K; ++k) p += wk[k][v] * win[k][v];
          const float sg = sigmoid(p);
          d = din[i][v] * sg * (1.f + p * (1.f - sg));
          if (u < own_end) {
#pragma unroll
            for (int k = 0; k < K; ++k) gw[k][v] += d * win[k][v];
            gb[v] += d;
          }
#pragma unroll
          for (int k = 0; k < K - 1; ++k) win[k][v] = win[k + 1][v];
        }
#pragma unroll
        for (int k = 0; k < K - 1; ++k) dp[k][v] = dp[k + 1][v];
        dp[K - 1][v] = d;  // dp[j] = dpre[u - (K-1) + j]
        g[v] = 0.f;        // dx[t] = sum_k w[k] * dpre[t + K-1-k], t = u - (K-1)
#pragma unroll
        for (int k = 0; k < K; ++k) g[v] += wk[k][v] * dp[K - 1 - k][v];
      }
      const int64_t t = u - (K - 1);
      if (t >= t0) stv<V>(dx + (b * L + t) * lddx + c, g);
    }
  }
  float* pr = partial + ((b * gridDim.y + blockIdx.y) * int64_t(C) + c) * (K + 1);
#pragma unroll
  for (int v = 0; v < V; ++v) {
#pragma unroll
    for (int k = 0; k < K; ++k) pr[v * (K + 1) + k] = gw[k][v];
    pr[v * (K + 1) + K] = gb[v];
  }
}

// Version 1 on request (DFSSM_CONV_V1=1, read at the first launch; an A/B switch) or where
// version 2's V-channel access does not hold: C, ldx and lddx multiples of V, x, dx, out and dout
// aligned to V elements.
bool use_v2(const void* x, int esize, int64_t ldx, int C, const void* out, int osize, const void* dout, int V,
            const void* dx, int64_t lddx) {
  static const bool v1 = [] {
    const char* e = std::getenv("DFSSM_CONV_V1");
    return e && e[0] == '1';
  }();
  const auto al = [](const void* p, unsigned n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
  return !v1 && C % V == 0 && ldx % V == 0 && lddx % V == 0 && al(x, unsigned(V * esize)) &&
         al(dx, unsigned(V * esize)) && al(out, unsigned(V * osize)) && al(dout, unsigned(V * 4));
}

template <typename Kern, typename... Args>
void launch_kernel(Kern k, dim3 grid, int threads, cudaStream_t st, Args... args) {
#ifndef DFSSM_CUDA_EMULATE
  k<<<grid, threads, 0, st>>>(args...);
#else
  (void)st;
  ::dfssm::emu::launch(grid, dim3(unsigned(threads)), [&] { k(args...); });
#endif
}

// Version 2's grid: blocks of `threads` x V channels, the same runs as version 1.
dim3 grid_v2(int C, int V, int threads, dim3 grid1) {
  return dim3(unsigned((C / V + threads - 1) / threads), grid1.y, grid1.z);
}

// out: float, or bf16 where out_bf16 (the forward only).
template <int K, typename E>
void launch(bool fwd, const E* x, int64_t ldx, const float* w, const float* bias, void* out, bool out_bf16,
            const float* dout, E* dx, int64_t lddx, float* partial, int64_t B, int64_t L, int C, cudaStream_t st) {
  const int run = fwd ? kFwdRun : kBwdRun;
  const dim3 grid(unsigned((C + kThreads - 1) / kThreads), unsigned((L + run - 1) / run), unsigned(B));
  auto* of = static_cast<float*>(out);
  auto* oh = static_cast<__nv_bfloat16*>(out);
  if (use_v2(x, int(sizeof(E)), ldx, C, out, out_bf16 ? 2 : 4, dout, fwd ? kFwdV : kBwdV, dx, lddx)) {
    if (fwd && out_bf16)
      launch_kernel(conv_fwd_v2_kernel<E, __nv_bfloat16, K, kFwdV, kFwdU, kThreads2>, grid_v2(C, kFwdV, kThreads2, grid),
                    kThreads2, st, x, ldx, w, bias, oh, L, C);
    else if (fwd)
      launch_kernel(conv_fwd_v2_kernel<E, float, K, kFwdV, kFwdU, kThreads2>, grid_v2(C, kFwdV, kThreads2, grid),
                    kThreads2, st, x, ldx, w, bias, of, L, C);
    else
      launch_kernel(conv_bwd_v2_kernel<E, K, kBwdV, kBwdU, kThreads2>, grid_v2(C, kBwdV, kThreads2, grid), kThreads2,
                    st, x, ldx, w, bias, dout, dx, partial, L, C, lddx);
    return;
  }
  if (fwd && out_bf16)
    launch_kernel(conv_fwd_kernel<E, __nv_bfloat16, K>, grid, kThreads, st, x, ldx, w, bias, oh, L, C);
  else if (fwd)
    launch_kernel(conv_fwd_kernel<E, float, K>, grid, kThreads, st, x, ldx, w, bias, of, L, C);
  else
    launch_kernel(conv_bwd_kernel<E, K>, grid, kThreads, st, x, ldx, w, bias, dout, dx, partial, L, C, lddx);
}

template <typename E>
cudaError_t dispatch(bool fwd, const void* x, int64_t ldx, const float* w, const float* bias, void* out,
                     bool out_bf16, const float* dout, void* dx, int64_t lddx, float* partial, int64_t B, int64_t L, int C, int K,
                     cudaStream_t st) {
  const auto* xe = static_cast<const E*>(x);
  auto* dxe = static_cast<E*>(dx);
  switch (K) {
    case 2: launch<2>(fwd, xe, ldx, w, bias, out, out_bf16, dout, dxe, lddx, partial, B, L, C, st); break;
    case 3: launch<3>(fwd, xe, ldx, w, bias, out, out_bf16, dout, dxe, lddx, partial, B, L, C, st); break;
    case 4: launch<4>(fwd, xe, ldx, w, bias, out, out_bf16, dout, dxe, lddx, partial, B, L, C, st); break;
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

cudaError_t conv_silu_fwd_cuda(const void* x, ConvDtype dt, int64_t ldx, const float* w, const float* bias, void* out,
                               int64_t B, int64_t L, int C, int K, cudaStream_t stream, ConvDtype out_dt) {
  if (!shapes_ok(B, L, C, K, ldx)) return cudaErrorInvalidValue;
  const bool oh = out_dt == ConvDtype::bf16;
  return dt == ConvDtype::bf16
             ? dispatch<__nv_bfloat16>(true, x, ldx, w, bias, out, oh, nullptr, nullptr, C, nullptr, B, L, C, K, stream)
             : dispatch<float>(true, x, ldx, w, bias, out, oh, nullptr, nullptr, C, nullptr, B, L, C, K, stream);
}

cudaError_t conv_silu_bwd_cuda(const void* x, ConvDtype dt, int64_t ldx, const float* w, const float* bias,
                               const float* dout, void* dx, float* partial, int64_t B, int64_t L, int C, int K,
                               cudaStream_t stream, int64_t lddx) {
  if (lddx <= 0) lddx = C;
  if (!shapes_ok(B, L, C, K, ldx) || lddx < C) return cudaErrorInvalidValue;
  return dt == ConvDtype::bf16
             ? dispatch<__nv_bfloat16>(false, x, ldx, w, bias, nullptr, false, dout, dx, lddx, partial, B, L, C, K, stream)
             : dispatch<float>(false, x, ldx, w, bias, nullptr, false, dout, dx, lddx, partial, B, L, C, K, stream);
}

}  // namespace dfssm::kernels
