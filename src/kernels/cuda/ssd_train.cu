// The chunked SSD's diagonal blocks for training: M = exp(acs_l - acs_s)·CB (s <= l) and its
// backward (ssd_train.h has the math; kernels/cpu/ssd_train_ref.cpp the scalar twins).
//
// Memory layout (row-major): acs (Z, H, T) fp32; CB (Z, G, T, T) and M, dM (Z, H, T, T) in fp32
// or bf16; dcb (Z, G, T, T) and dacs (Z, H, T) fp32. Z = batch x chunks, T = chunk length.
//
// Forward: one thread per 8 consecutive columns of one row: two float4 loads of acs, one 16- or
// 32-byte load of CB, one 16- or 32-byte store of M. Memory-bound; rows of all H heads of a
// group reread the same CB row from L2.
//
// Backward: one block per (z, group, 32-row tile); 8 warps of 4 rows each, lane j covers the
// columns s = lane + 32·k (k < T/32). The block walks the group's heads; per head and element it
// recomputes L = exp(acs_l - acs_s) and reads dM once. Phases per head:
//   (1) dcb_acc += dM·L in registers (summed over the heads, stored once at the end);
//   (2) G = dM·L·CB: row sums reduced per warp and added to dacs[l] (atomics, since other tiles
//       add their column sums to the same entries); column sums collected in shared memory;
//   (3) after a barrier, the tile's column sums are subtracted from dacs[s] (atomics).
// Above the diagonal nothing is read; column blocks entirely above it are skipped.
#include <cuda_bf16.h>

#include "kernels/cuda/ssd_train.h"
#include "kernels/cuda/train_common.cuh"

namespace dfssm::kernels {
namespace {

constexpr int kWarps = 8, kRowsPerWarp = 4, kTileRows = kWarps * kRowsPerWarp;  // 32

using namespace train;  // to_f, st

template <typename E>
struct Vec8 {  // 8 consecutive elements: one 32-byte (fp32) or 16-byte (bf16) access
  E v[8];
};

template <typename E>
__global__ void __launch_bounds__(256) mask_fwd_kernel(const float* __restrict__ acs, const E* __restrict__ cb,
                                                       E* __restrict__ M, int64_t Z, int H, int G, int T) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int per_row = T / 8;
  const int64_t total = Z * H * T * per_row;
  if (idx >= total) return;
  const int s0 = int(idx % per_row) * 8;
  const int64_t row = idx / per_row;  // (z*H + h)*T + l
  const int l = int(row % T);
  const int64_t zh = row / T;
  const int h = int(zh % H);
  const int64_t z = zh / H;
  const int gi = h / (H / G);
  Vec8<E> out;
  if (s0 > l) {
#pragma unroll
    for (int i = 0; i < 8; ++i) st(&out.v[i], 0.f);
  } else {
    const float* a = acs + zh * T;
    const float al = a[l];
    const float4 a0 = *reinterpret_cast<const float4*>(a + s0), a1 = *reinterpret_cast<const float4*>(a + s0 + 4);
    const float as[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const Vec8<E> c = *reinterpret_cast<const Vec8<E>*>(cb + ((z * G + gi) * T + l) * T + s0);
#pragma unroll
    for (int i = 0; i < 8; ++i) st(&out.v[i], s0 + i <= l ? __expf(al - as[i]) * to_f(c.v[i]) : 0.f);
  }
  *reinterpret_cast<Vec8<E>*>(M + row * T + s0) = out;
}

template <typename E, int K>  // K = T / 32 column blocks
__global__ void __launch_bounds__(256) mask_bwd_kernel(const float* __restrict__ acs, const E* __restrict__ cb,
                                                       const E* __restrict__ dM, float* __restrict__ dacs,
                                                       float* __restrict__ dcb, int H, int G) {
  constexpr int T = K * 32;
  __shared__ float col[T];
  const int tile = blockIdx.x, gi = blockIdx.y;
  const int64_t z = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int hg = H / G;
  const int l0 = tile * kTileRows + warp * kRowsPerWarp;  // this warp's first row
  const int kmax = tile;  // column blocks k <= tile reach the diagonal of this tile; the rest are above it
  const E* cbz = cb + (z * G + gi) * T * T;

  float cbv[kRowsPerWarp][K], acc[kRowsPerWarp][K];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int s = lane + 32 * k;
      acc[r][k] = 0.f;
      cbv[r][k] = (k <= kmax && s <= l0 + r) ? to_f(cbz[int64_t(l0 + r) * T + s]) : 0.f;
    }

  for (int h = gi * hg; h < (gi + 1) * hg; ++h) {
    for (int i = threadIdx.x; i < T; i += blockDim.x) col[i] = 0.f;
    __syncthreads();
    const float* a = acs + (z * H + h) * T;
    const E* d = dM + (z * H + h) * T * T;
    float as[K];
#pragma unroll
    for (int k = 0; k < K; ++k) as[k] = k <= kmax ? a[lane + 32 * k] : 0.f;
    float colp[K];
#pragma unroll
    for (int k = 0; k < K; ++k) colp[k] = 0.f;
    float rows[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int l = l0 + r;
      const float al = a[l];
      float rs = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int s = lane + 32 * k;
        if (k <= kmax && s <= l) {
          const float L = __expf(al - as[k]);
          const float dl = to_f(d[int64_t(l) * T + s]) * L;
          acc[r][k] += dl;
          const float g = dl * cbv[r][k];
          rs += g;
          colp[k] += g;
        }
      }
      rows[r] = rs;
    }
    // Phase 2: row sums (one warp owns whole rows) and the column partials into shared memory.
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      for (int o = 16; o > 0; o >>= 1) rows[r] += __shfl_xor_sync(0xffffffffu, rows[r], o);
    if (lane < kRowsPerWarp) {
      float mine = rows[0];
#pragma unroll
      for (int r = 1; r < kRowsPerWarp; ++r) mine = lane == r ? rows[r] : mine;
      atomicAdd(&dacs[(z * H + h) * T + l0 + lane], mine);
    }
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (k <= kmax) atomicAdd(&col[lane + 32 * k], colp[k]);
    __syncthreads();
    // Phase 3: the tile's column sums leave through one atomic per column.
    for (int s = threadIdx.x; s < (kmax + 1) * 32; s += blockDim.x)
      atomicAdd(&dacs[(z * H + h) * T + s], -col[s]);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int k = 0; k < K; ++k) dcb[((z * G + gi) * T + l0 + r) * T + lane + 32 * k] = acc[r][k];
}

bool shapes_ok(int64_t Z, int H, int G, int T) {
  return Z > 0 && H > 0 && G > 0 && H % G == 0 && T % 32 == 0 && T >= 32 && T <= 256 && Z <= 65535;
}

template <typename E>
cudaError_t launch_bwd(const float* acs, const void* cb, const void* dM, float* dacs, float* dcb, int64_t Z, int H,
                       int G, int T, cudaStream_t st) {
  const dim3 grid(T / kTileRows, G, unsigned(Z));
  const auto* c = static_cast<const E*>(cb);
  const auto* d = static_cast<const E*>(dM);
  switch (T / 32) {
    case 1: mask_bwd_kernel<E, 1><<<grid, 256, 0, st>>>(acs, c, d, dacs, dcb, H, G); break;
    case 2: mask_bwd_kernel<E, 2><<<grid, 256, 0, st>>>(acs, c, d, dacs, dcb, H, G); break;
    case 4: mask_bwd_kernel<E, 4><<<grid, 256, 0, st>>>(acs, c, d, dacs, dcb, H, G); break;
    case 8: mask_bwd_kernel<E, 8><<<grid, 256, 0, st>>>(acs, c, d, dacs, dcb, H, G); break;
    default: return cudaErrorInvalidValue;  // T in {32, 64, 128, 256}
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t ssd_mask_fwd_cuda(const float* acs, const void* cb, void* M, SsdDtype dt, int64_t Z, int H, int G, int T,
                              cudaStream_t stream) {
  if (!shapes_ok(Z, H, G, T)) return cudaErrorInvalidValue;
  const int64_t threads = Z * H * T * (T / 8);
  const unsigned blocks = unsigned((threads + 255) / 256);
  if (dt == SsdDtype::bf16)
    mask_fwd_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(acs, static_cast<const __nv_bfloat16*>(cb),
                                                               static_cast<__nv_bfloat16*>(M), Z, H, G, T);
  else
    mask_fwd_kernel<float><<<blocks, 256, 0, stream>>>(acs, static_cast<const float*>(cb), static_cast<float*>(M), Z, H,
                                                       G, T);
  return cudaGetLastError();
}

cudaError_t ssd_mask_bwd_cuda(const float* acs, const void* cb, const void* dM, SsdDtype dt, float* dacs, float* dcb,
                              int64_t Z, int H, int G, int T, cudaStream_t stream) {
  if (!shapes_ok(Z, H, G, T) || (T & (T - 1)) != 0) return cudaErrorInvalidValue;
  return dt == SsdDtype::bf16 ? launch_bwd<__nv_bfloat16>(acs, cb, dM, dacs, dcb, Z, H, G, T, stream)
                              : launch_bwd<float>(acs, cb, dM, dacs, dcb, Z, H, G, T, stream);
}

}  // namespace dfssm::kernels
