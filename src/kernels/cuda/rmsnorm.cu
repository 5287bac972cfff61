// Residual add + RMSNorm: residual += x (fp32), out = fp16(residual * rstd * w).
//
// Memory layout: row-major (rows, d). One thread block per row; each thread owns d/(8*threads)
// 8-element groups, read with 16-byte loads (8 x fp16) and 2 x 16-byte loads of the fp32
// residual. Phases: (1) load + add + square-sum in registers, (2) block reduction of the sum of
// squares (warp shuffles, then one warp over the per-warp partials), (3) scale and store.
// Bytes per row: 2d (x) + 8d (residual in/out) + 2d (w, L2-resident) + 2d (out).
#include <cuda_fp16.h>

#include "kernels/cuda/rmsnorm.h"

namespace dfssm::kernels {
namespace {

constexpr int kThreads = 256;

__device__ float block_sum(float v) {
  __shared__ float partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? partial[lane] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __shared__ float total;
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  return total;
}

__global__ void __launch_bounds__(kThreads) add_rmsnorm_kernel(const uint4* __restrict__ x, float4* __restrict__ residual,
                                                               const uint4* __restrict__ w, uint4* __restrict__ out,
                                                               int64_t groups_per_row, float inv_d, float eps) {
  const int64_t row = blockIdx.x;
  const uint4* xr = x + row * groups_per_row;
  float4* rr = residual + row * groups_per_row * 2;
  uint4* orow = out + row * groups_per_row;

  // Phase 1: add and accumulate squares. Rows of the 1.3B model (d = 2048) give one group
  // per thread; longer rows loop.
  float ss = 0.f;
  for (int64_t g = threadIdx.x; g < groups_per_row; g += kThreads) {
    const uint4 xv = xr[g];
    const __half2* xh = reinterpret_cast<const __half2*>(&xv);
    float4 r0 = rr[2 * g], r1 = rr[2 * g + 1];
    float2 a = __half22float2(xh[0]), b = __half22float2(xh[1]), c = __half22float2(xh[2]), d = __half22float2(xh[3]);
    r0.x += a.x; r0.y += a.y; r0.z += b.x; r0.w += b.y;
    r1.x += c.x; r1.y += c.y; r1.z += d.x; r1.w += d.y;
    rr[2 * g] = r0;
    rr[2 * g + 1] = r1;
    ss += r0.x * r0.x + r0.y * r0.y + r0.z * r0.z + r0.w * r0.w + r1.x * r1.x + r1.y * r1.y + r1.z * r1.z + r1.w * r1.w;
  }
  // Phase 2: row statistic.
  const float rstd = rsqrtf(block_sum(ss) * inv_d + eps);
  // Phase 3: normalise (re-reading this thread's own residual writes, still in L1/L2).
  for (int64_t g = threadIdx.x; g < groups_per_row; g += kThreads) {
    const float4 r0 = rr[2 * g], r1 = rr[2 * g + 1];
    const uint4 wv = w[g];
    const __half2* wh = reinterpret_cast<const __half2*>(&wv);
    const float2 wa = __half22float2(wh[0]), wb = __half22float2(wh[1]), wc = __half22float2(wh[2]),
                 wd = __half22float2(wh[3]);
    uint4 o;
    __half2* oh = reinterpret_cast<__half2*>(&o);
    oh[0] = __floats2half2_rn(r0.x * rstd * wa.x, r0.y * rstd * wa.y);
    oh[1] = __floats2half2_rn(r0.z * rstd * wb.x, r0.w * rstd * wb.y);
    oh[2] = __floats2half2_rn(r1.x * rstd * wc.x, r1.y * rstd * wc.y);
    oh[3] = __floats2half2_rn(r1.z * rstd * wd.x, r1.w * rstd * wd.y);
    orow[g] = o;
  }
}

}  // namespace

cudaError_t add_rmsnorm_cuda(const uint16_t* x, float* residual, const uint16_t* w, uint16_t* out, int64_t rows,
                             int64_t d, float eps, cudaStream_t stream) {
  if (d % 8 != 0 || rows < 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  add_rmsnorm_kernel<<<unsigned(rows), kThreads, 0, stream>>>(
      reinterpret_cast<const uint4*>(x), reinterpret_cast<float4*>(residual), reinterpret_cast<const uint4*>(w),
      reinterpret_cast<uint4*>(out), d / 8, 1.f / float(d), eps);
  return cudaGetLastError();
}

}  // namespace dfssm::kernels
