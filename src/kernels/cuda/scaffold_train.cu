// The binary scaffold's effective weight, forward and backward (scaffold_train.h has the math).
//
// Memory layout: w, W, dW, dw (R, C) row-major; A (R), Bc (C), U (R, r), V (C, r) fp32; part_a
// (ceil(C / 512), R), part_b (ceil(R / 32), C) fp32.
//
// One block of 256 threads per (512 columns, a tile of rows); thread t owns columns 2t, 2t + 1 of
// the block's 512 (8-byte loads of w, 4- or 8-byte stores), so a warp touches 256 contiguous
// bytes of w per row. Rows go 4 at a time: their loads are issued together before any store
// (the row loop is a chain of independent HBM reads; one at a time left it latency-bound).
//   forward:  the thread's 2 columns of V stay in registers (rank padded to RK = 0/8/16/24/32:
//             the zero terms add exact zeros), the tile's 16 rows of U in shared memory;
//   backward: column sums (dBc) in registers over the tile's 32 rows, one row of part_b per
//             block; row sums (dA) by warp shuffles, per-warp partials in shared memory, one
//             barrier, one row of part_a per block. No atomics: the result is deterministic.
#ifndef DFSSM_CUDA_EMULATE
#include <cuda_bf16.h>
#endif

#include <cstdint>

#include "kernels/cuda/scaffold_train.h"

namespace dfssm::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kFwdRows = 16;
constexpr int kBatch = 4;  // rows whose loads are in flight together

struct F2 {
  float x, y;
};
__device__ __forceinline__ F2 ld2(const float* p) {
#ifndef DFSSM_CUDA_EMULATE
  const float2 v = *reinterpret_cast<const float2*>(p);
  return {v.x, v.y};
#else
  return {p[0], p[1]};
#endif
}
__device__ __forceinline__ F2 ld2(const __nv_bfloat16* p) {
#ifndef DFSSM_CUDA_EMULATE
  const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  return {v.x, v.y};
#else
  return {__bfloat162float(p[0]), __bfloat162float(p[1])};
#endif
}
__device__ __forceinline__ void st2(float* p, float a, float b) {
#ifndef DFSSM_CUDA_EMULATE
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
#else
  p[0] = a, p[1] = b;
#endif
}
__device__ __forceinline__ void st2(__nv_bfloat16* p, float a, float b) {
#ifndef DFSSM_CUDA_EMULATE
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
#else
  p[0] = __float2bfloat16(a), p[1] = __float2bfloat16(b);
#endif
}

// ---- forward --------------------------------------------------------------------------------------
template <typename O, int RK>
__global__ void __launch_bounds__(kThreads) scaffold_fwd_kernel(ScaffoldWeightArgs a) {
  __shared__ float us[kFwdRows][RK > 0 ? RK : 1];
  const int t = int(threadIdx.x);
  const int64_t j = int64_t(blockIdx.x) * kScaffoldCols + 2 * t, i0 = int64_t(blockIdx.y) * kFwdRows;
  const int rows = int(a.R - i0 < kFwdRows ? a.R - i0 : kFwdRows);
  const bool live = j < a.C;  // C is even: both of the thread's columns exist, or neither
  if constexpr (RK > 0) {
    for (int e = t; e < kFwdRows * RK; e += kThreads) {
      const int ii = e / RK, k = e % RK;
      us[ii][k] = ii < rows && k < a.r ? a.U[(i0 + ii) * a.r + k] : 0.f;
    }
  }
  float v0[RK > 0 ? RK : 1], v1[RK > 0 ? RK : 1];
#pragma unroll
  for (int k = 0; k < RK; ++k) {
    v0[k] = live && k < a.r ? a.V[j * a.r + k] : 0.f;
    v1[k] = live && k < a.r ? a.V[(j + 1) * a.r + k] : 0.f;
  }
  const float b0 = live ? a.Bc[j] : 0.f, b1 = live ? a.Bc[j + 1] : 0.f;
  if constexpr (RK > 0) __syncthreads();  // us is filled
  if (!live) return;
  const float* __restrict__ w = a.w;
  O* __restrict__ W = static_cast<O*>(a.W);
  for (int ib = 0; ib < rows; ib += kBatch) {
    F2 wv[kBatch];
    float Ai[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {  // the batch's loads first
      const int64_t i = i0 + (ib + q < rows ? ib + q : rows - 1);
      wv[q] = ld2(w + i * a.C + j);
      Ai[q] = a.A[i];
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      if (ib + q >= rows) break;
      // (A·s)·Bc exactly as ATen orders it: A·(±1) is exact.
      float o0 = (wv[q].x >= 0.f ? Ai[q] : -Ai[q]) * b0, o1 = (wv[q].y >= 0.f ? Ai[q] : -Ai[q]) * b1;
      if constexpr (RK > 0) {
        float l0 = 0.f, l1 = 0.f;
#pragma unroll
        for (int k = 0; k < RK; ++k) {
          const float u = us[ib + q][k];
          l0 = fmaf(u, v0[k], l0);
          l1 = fmaf(u, v1[k], l1);
        }
        o0 += l0, o1 += l1;
      }
      st2(W + (i0 + ib + q) * a.C + j, o0, o1);
    }
  }
}

// ---- backward -------------------------------------------------------------------------------------
template <typename G>
__global__ void __launch_bounds__(kThreads) scaffold_bwd_kernel(ScaffoldWeightArgs a) {
  constexpr int TR = kScaffoldBwdRows;
  __shared__ float red[kThreads / 32][TR];
  const int t = int(threadIdx.x), lane = t & 31, warp = t >> 5;
  const int64_t j = int64_t(blockIdx.x) * kScaffoldCols + 2 * t, i0 = int64_t(blockIdx.y) * TR;
  const int rows = int(a.R - i0 < TR ? a.R - i0 : TR);
  const bool live = j < a.C;
  const float b0 = live ? a.Bc[j] : 0.f, b1 = live ? a.Bc[j + 1] : 0.f, clip = a.clip;
  const float* __restrict__ w = a.w;
  const G* __restrict__ dW = static_cast<const G*>(a.dW);
  float* __restrict__ dw = a.dw;
  float cb0 = 0.f, cb1 = 0.f;
  // Every thread runs every row (the shuffles need the whole warp); dead lanes add zeros.
  for (int ib = 0; ib < TR; ib += kBatch) {
    F2 wv[kBatch], gv[kBatch];
    float Ai[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const bool ok = live && ib + q < rows;
      const int64_t i = i0 + ib + q;
      wv[q] = ok ? ld2(w + i * a.C + j) : F2{0.f, 0.f};
      gv[q] = ok ? ld2(dW + i * a.C + j) : F2{0.f, 0.f};
      Ai[q] = ok ? a.A[i] : 0.f;
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const bool s0 = wv[q].x >= 0.f, s1 = wv[q].y >= 0.f;
      const float g0 = gv[q].x * b0, g1 = gv[q].y * b1;  // d(A·s) = dW·Bc
      float ra = (s0 ? g0 : -g0) + (s1 ? g1 : -g1);     // dA: Σ_j g·s
      cb0 += gv[q].x * (s0 ? Ai[q] : -Ai[q]);            // dBc: Σ_i dW·(A·s)
      cb1 += gv[q].y * (s1 ? Ai[q] : -Ai[q]);
      if (live && ib + q < rows) {
        // d s = g·A, through the clipped STE (clamp's gradient: 1 on [-clip, clip]).
        const float d0 = wv[q].x >= -clip && wv[q].x <= clip ? g0 * Ai[q] : 0.f;
        const float d1 = wv[q].y >= -clip && wv[q].y <= clip ? g1 * Ai[q] : 0.f;
        st2(dw + (i0 + ib + q) * a.C + j, d0, d1);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) ra += __shfl_xor_sync(0xffffffffu, ra, o);
      if (lane == 0) red[warp][ib + q] = ra;
    }
  }
  if (live) st2(a.part_b + int64_t(blockIdx.y) * a.C + j, cb0, cb1);
  __syncthreads();
  if (t < rows) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kThreads / 32; ++k) s += red[k][t];
    a.part_a[int64_t(blockIdx.x) * a.R + i0 + t] = s;
  }
}

// Non-null and 8-byte aligned (the kernels' 2-element accesses).
bool aligned8(const void* p) { return p && reinterpret_cast<uintptr_t>(p) % 8 == 0; }

bool valid(const ScaffoldWeightArgs& a) {
  return a.R > 0 && a.C > 0 && a.C % 2 == 0 && a.r >= 0 && a.r <= kScaffoldMaxRank && a.w && a.A && a.Bc &&
         (a.r == 0 || (a.U && a.V)) && aligned8(a.w);
}

template <typename K>
void launch(K kernel, dim3 grid, const ScaffoldWeightArgs& a, cudaStream_t stream) {
#ifndef DFSSM_CUDA_EMULATE
  kernel<<<grid, kThreads, 0, stream>>>(a);
#else
  (void)stream;
  ::dfssm::emu::launch(grid, dim3(kThreads), [&] { kernel(a); });
#endif
}

template <typename O>
void launch_fwd(const ScaffoldWeightArgs& a, cudaStream_t stream) {
  const dim3 grid(unsigned((a.C + kScaffoldCols - 1) / kScaffoldCols), unsigned((a.R + kFwdRows - 1) / kFwdRows));
  if (a.r == 0) {
    launch(scaffold_fwd_kernel<O, 0>, grid, a, stream);
  } else if (a.r <= 8) {
    launch(scaffold_fwd_kernel<O, 8>, grid, a, stream);
  } else if (a.r <= 16) {
    launch(scaffold_fwd_kernel<O, 16>, grid, a, stream);
  } else if (a.r <= 24) {
    launch(scaffold_fwd_kernel<O, 24>, grid, a, stream);
  } else {
    launch(scaffold_fwd_kernel<O, 32>, grid, a, stream);
  }
}

}  // namespace

int64_t scaffold_part_a_rows(int64_t C) { return (C + kScaffoldCols - 1) / kScaffoldCols; }
int64_t scaffold_part_b_rows(int64_t R) { return (R + kScaffoldBwdRows - 1) / kScaffoldBwdRows; }

cudaError_t scaffold_weight_fwd_cuda(const ScaffoldWeightArgs& a, cudaStream_t stream) {
  if (!valid(a) || !aligned8(a.W)) return cudaErrorInvalidValue;
  if (a.wdt == ScaffoldDtype::bf16) {
    launch_fwd<__nv_bfloat16>(a, stream);
  } else {
    launch_fwd<float>(a, stream);
  }
  return cudaGetLastError();
}

cudaError_t scaffold_weight_bwd_cuda(const ScaffoldWeightArgs& a, cudaStream_t stream) {
  if (!valid(a) || !aligned8(a.dW) || !aligned8(a.dw) || !aligned8(a.part_b) || !a.part_a) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(scaffold_part_a_rows(a.C)), unsigned(scaffold_part_b_rows(a.R)));
  if (a.wdt == ScaffoldDtype::bf16) {
    launch(scaffold_bwd_kernel<__nv_bfloat16>, grid, a, stream);
  } else {
    launch(scaffold_bwd_kernel<float>, grid, a, stream);
  }
  return cudaGetLastError();
}

}  // namespace dfssm::kernels
