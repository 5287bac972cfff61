// The distillation loss's per-token part (lm_loss.h has the math).
//
// Memory layout: zs, zt (n, V) at row stride ld in E (bf16 or fp32); dz (n, V) contiguous in E;
// y (n) int64; ce_s, ce_t, kl, top1 (n) fp32.
//
// One block of 256 threads per token row, in two passes over the row (thread t owns the quads
// t, t + 256, ...; 8-byte bf16 or 16-byte fp32 loads):
//   1. online softmax statistics (running max m and Σ exp(x - m)) of zs and zt at T = 1 and at
//      T (the latter only when T != 1), and the argmax of each; merged across the block by warp
//      shuffles and one exchange through shared memory (every thread merges the warps in the
//      same order, so every thread holds the same bits);
//   2. the row again (from L2: 100 KB per bf16 row, a few hundred rows in flight): dz and the
//      KL's terms; one more block sum for the KL.
// Thread 0 writes the row's statistics; the caller sums them.
#ifndef DFSSM_CUDA_EMULATE
#include <cuda_bf16.h>
#endif

#include <cmath>
#include <cstdint>

#include "kernels/cuda/lm_loss.h"
#include "kernels/cuda/train_common.cuh"

namespace dfssm::kernels {
namespace {

using train::ld4;
using train::st4;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Online softmax statistics: m = max, l = Σ exp(x - m).
struct Soft {
  float m = -INFINITY, l = 0.f;
  __device__ void push(float x) {
    if (x > m) {
      l = l * expf(m - x) + 1.f;
      m = x;
    } else {
      l += expf(x - m);
    }
  }
  __device__ void merge(float m2, float l2) {
    const float mm = fmaxf(m, m2);
    if (mm == -INFINITY) return;
    l = l * expf(m - mm) + l2 * expf(m2 - mm);
    m = mm;
  }
  __device__ float lse() const { return m + logf(l); }
};
// The maximum and its first index (indices as floats: exact below 2^24).
struct Arg {
  float v = -INFINITY, i = 0.f;
  __device__ void merge(float v2, float i2) {
    if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
  }
};

// Row statistics merged over the block. K: the number of softmax trackers in use.
constexpr int kStats = 4 * 2 + 2 * 2;
__device__ __forceinline__ void block_merge(Soft (&s)[4], Arg (&g)[2], float (*red)[kStats]) {
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float m2 = __shfl_xor_sync(0xffffffffu, s[k].m, o), l2 = __shfl_xor_sync(0xffffffffu, s[k].l, o);
      s[k].merge(m2, l2);
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const float v2 = __shfl_xor_sync(0xffffffffu, g[k].v, o), i2 = __shfl_xor_sync(0xffffffffu, g[k].i, o);
      g[k].merge(v2, i2);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 4; ++k) red[warp][2 * k] = s[k].m, red[warp][2 * k + 1] = s[k].l;
#pragma unroll
    for (int k = 0; k < 2; ++k) red[warp][8 + 2 * k] = g[k].v, red[warp][9 + 2 * k] = g[k].i;
  }
  __syncthreads();
  Soft t[4];
  Arg h[2];
  for (int w = 0; w < kWarps; ++w) {  // the same order in every thread
#pragma unroll
    for (int k = 0; k < 4; ++k) t[k].merge(red[w][2 * k], red[w][2 * k + 1]);
#pragma unroll
    for (int k = 0; k < 2; ++k) h[k].merge(red[w][8 + 2 * k], red[w][9 + 2 * k]);
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) s[k] = t[k];
#pragma unroll
  for (int k = 0; k < 2; ++k) g[k] = h[k];
}

__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < kWarps; ++w) t += red[w];
  return t;
}

// TEACHER: zt given; T1: T == 1 (the T-scaled statistics are the T = 1 ones).
template <typename E, bool TEACHER, bool T1>
__global__ void __launch_bounds__(kThreads) lm_loss_rows_kernel(LmLossRowsArgs a) {
  __shared__ float red[kWarps][kStats];
  __shared__ float red2[kWarps];
  const int t = int(threadIdx.x);
  const int64_t row = blockIdx.x, nq = a.V / 4;
  const E* zs = static_cast<const E*>(a.zs) + row * a.ld;
  const E* zt = TEACHER ? static_cast<const E*>(a.zt) + row * a.ld : nullptr;
  const float T = a.T;
  // Pass 1: trackers 0 = zs, 1 = zs / T, 2 = zt, 3 = zt / T.
  Soft s[4];
  Arg g[2];
  for (int64_t q = t; q < nq; q += kThreads) {
    float xs[4], xt[4];
    ld4(zs + 4 * q, xs);
    if (TEACHER) ld4(zt + 4 * q, xt);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float idx = float(4 * q + e);
      s[0].push(xs[e]);
      if (!T1) s[1].push(xs[e] / T);
      if (xs[e] > g[0].v) g[0].v = xs[e], g[0].i = idx;
      if (TEACHER) {
        s[2].push(xt[e]);
        if (!T1) s[3].push(xt[e] / T);
        if (xt[e] > g[1].v) g[1].v = xt[e], g[1].i = idx;
      }
    }
  }
  block_merge(s, g, red);
  const float lse_s1 = s[0].lse(), lse_sT = T1 ? lse_s1 : s[1].lse();
  const float lse_t1 = TEACHER ? s[2].lse() : 0.f, lse_tT = TEACHER ? (T1 ? lse_t1 : s[3].lse()) : 0.f;
  // Pass 2: dz and the KL's terms.
  const int64_t y = a.y[row];
  const float c_ce = 1.f - a.alpha, c_kl = a.alpha * T, fN = float(a.N);
  E* dz = a.dz ? static_cast<E*>(a.dz) + row * a.V : nullptr;
  float kl = 0.f;
  for (int64_t q = t; q < nq; q += kThreads) {
    float xs[4], xt[4], d[4];
    ld4(zs + 4 * q, xs);
    if (TEACHER) ld4(zt + 4 * q, xt);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float lps1 = xs[e] - lse_s1, ps1 = expf(lps1);
      const float lpsT = T1 ? lps1 : xs[e] / T - lse_sT, psT = T1 ? ps1 : expf(lpsT);
      float v = (ps1 - (4 * q + e == y ? 1.f : 0.f)) * c_ce;
      if (TEACHER) {
        const float lptT = (T1 ? xt[e] : xt[e] / T) - lse_tT, ptT = expf(lptT);
        kl += ptT * (lptT - lpsT);
        v += (psT - ptT) * c_kl;
      }
      d[e] = v / fN;
    }
    if (dz) st4(dz + 4 * q, d);
  }
  if (TEACHER) kl = block_sum(kl, red2);
  if (t == 0) {
    float ys[4], yt[4];  // the target's quad
    ld4(zs + (y & ~int64_t(3)), ys);
    a.ce_s[row] = lse_s1 - ys[y & 3];
    if (TEACHER) {
      ld4(zt + (y & ~int64_t(3)), yt);
      a.ce_t[row] = lse_t1 - yt[y & 3];
      a.kl[row] = kl;
      a.top1[row] = g[0].i == g[1].i ? 1.f : 0.f;
    }
  }
}

template <typename K>
void launch(K kernel, const LmLossRowsArgs& a, cudaStream_t stream) {
#ifndef DFSSM_CUDA_EMULATE
  kernel<<<unsigned(a.n), kThreads, 0, stream>>>(a);
#else
  (void)stream;
  ::dfssm::emu::launch(dim3(unsigned(a.n)), dim3(kThreads), [&] { kernel(a); });
#endif
}

template <typename E>
void dispatch(const LmLossRowsArgs& a, cudaStream_t stream) {
  const bool T1 = a.T == 1.f;
  if (a.zt) {
    if (T1) {
      launch(lm_loss_rows_kernel<E, true, true>, a, stream);
    } else {
      launch(lm_loss_rows_kernel<E, true, false>, a, stream);
    }
  } else {
    launch(lm_loss_rows_kernel<E, false, true>, a, stream);  // no teacher: only T = 1 matters
  }
}

}  // namespace

cudaError_t lm_loss_rows_cuda(const LmLossRowsArgs& a, cudaStream_t stream) {
  auto al = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (a.n <= 0) return cudaSuccess;
  if (a.V <= 0 || a.V % 4 != 0 || a.ld < a.V || a.ld % 4 != 0 || a.V >= (int64_t(1) << 24) || !a.zs || !al(a.zs) ||
      (a.zt && !al(a.zt)) || (a.dz && !al(a.dz)) || !a.y || !a.ce_s || (a.zt && (!a.ce_t || !a.kl || !a.top1)) ||
      a.N <= 0 || !(a.T > 0.f) || a.n > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (a.dt == LossDtype::bf16) {
    dispatch<__nv_bfloat16>(a, stream);
  } else {
    dispatch<float>(a, stream);
  }
  return cudaGetLastError();
}

}  // namespace dfssm::kernels
