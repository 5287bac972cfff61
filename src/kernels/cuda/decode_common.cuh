// Device helpers shared by the decode kernels (decode.cu, sign_gemv.cu): PDL, the debug
// timeline, warp reductions, the fp16 mma, the sign expansion and the PDL launch helper.
//
// Every kernel starts with `griddepcontrol.launch_dependents` and waits (`griddepcontrol.wait`)
// before it reads anything the previous kernel wrote. Launched with programmatic dependent
// launch (pdl = true), the next kernel's blocks start while this one runs and issue their
// weight loads (weights are never written) before they wait: launch latency and the first DRAM
// round trip overlap the previous kernel. Without PDL both instructions are no-ops.
#pragma once

#include <cuda_fp16.h>

#include "kernels/cuda/decode.h"

namespace dfssm::kernels::cuda {
namespace {  // (each translation unit its own copy: internal linkage, inlined)

__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

__device__ __forceinline__ unsigned long long gtimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// Debug timeline (TraceSlot): block 0 records its phases, every block the min / max ones.
__device__ __forceinline__ void trace_mark(unsigned long long* tr, int slot) {
  if (!tr || threadIdx.x != 0) return;
  const unsigned long long t = gtimer();
  if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) tr[slot] = t;
  if (slot == kEntry) atomicMin(tr + kFirstEntry, t);
  if (slot == kWaited) atomicMax(tr + kLastWaited, t);
  if (slot == kEpilogue) atomicMax(tr + kLastExit, t);
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplus20(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// N warp sums at once, their butterflies interleaved (N independent shuffles per round instead of
// N chains of 5 dependent rounds: at batch 1 each round's ~30-cycle latency is on the critical
// path). Each value is summed exactly as warp_sum would.
template <int N>
__device__ __forceinline__ void warp_sum_n(float (&v)[N]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
}
// silu with the fast reciprocal (no IEEE-division slow path on the critical path; ~2 ulp).
__device__ __forceinline__ float silu_fast(float x) { return __fdividef(x, 1.0f + __expf(-x)); }

// Block-wide sum (any blockDim multiple of 32, <= 1024); every thread gets the total.
__device__ float block_sum(float v, float* scratch /* >= 33 floats */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be in use by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0;
  for (int i = 0; i < nw; ++i) t += scratch[i];  // fixed order: deterministic
  return t;
}

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Bits 15 and 31 of w (one sign each) as a half2 of ±1: (w & 0x80008000) ^ 0xBC00BC00 in one
// LOP3 (nvcc emitted an AND and an XOR: 3 instructions per register with the shift, now 2; the
// expansion is most of the 1-bit GEMV's instructions at batch 1).
__device__ __forceinline__ uint32_t sign_half2(uint32_t w) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(r) : "r"(w), "n"(0x80008000u), "n"(0xBC00BC00u));
  return r;
}

// D = popc(A & B) for a 16 x 128 bit tile (a0: row g, a1: row g + 8; bits 32t + i) and 8
// columns of 128 bits (b: column g, bits 32t + i): d0, d1 row g, columns 2t, 2t + 1; d2, d3 row g + 8.
__device__ __forceinline__ void bmma128(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t b) {
  asm volatile(
      "mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a0), "r"(a1), "r"(b), "r"(0));
}

// A plane group's exponent e (decode.h "planes"): |x| < 2^e for the group's max m >= 0, from the
// float's exponent field (ilogb(m) + 1), at least -112 so that 2^(15 - e) is a normal float.
__device__ __forceinline__ int plane_exp(float m) { return max(int((__float_as_uint(m) >> 23) & 0xffu) - 126, -112); }
// 2^(15 - e), exactly.
__device__ __forceinline__ float plane_inv(int e) { return __uint_as_float(uint32_t(142 - e) << 23); }

// One group of 16 columns per half-warp (decode.h "planes"; the whole warp calls it): u is this
// lane's value (0 where none). Returns bit plane (lane & 15) of the group's q (bit i = lane
// 16 * (lane >> 4) + i) and the group's exponent in e.
__device__ __forceinline__ uint32_t plane_group16(float u, int& e) {
  const int lane = threadIdx.x & 31;
  float m = fabsf(u);
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));  // within the half-warp
  e = plane_exp(m);
  const int q = max(-32767, min(32767, __float2int_rn(u * plane_inv(e))));
  uint32_t mine = 0;
#pragma unroll
  for (int pl = 0; pl < 16; ++pl) {
    const uint32_t bits = __ballot_sync(0xffffffffu, (q >> pl) & 1);
    if ((lane & 15) == pl) mine = lane < 16 ? (bits & 0xffffu) : (bits >> 16);
  }
  return mine;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Launch with programmatic dependent launch (pdl) and, when cluster > 1, in clusters of that many
// blocks along x (the grid's x must be a multiple).
template <typename F, typename... Args>
cudaError_t launch_cl(F kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl, int cluster, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute at[2];
  int n = 0;
  if (pdl) {
    at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster > 1) {
    at[n].id = cudaLaunchAttributeClusterDimension;
    at[n].val.clusterDim.x = unsigned(cluster);
    at[n].val.clusterDim.y = 1;
    at[n].val.clusterDim.z = 1;
    ++n;
  }
  cfg.attrs = at;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}
template <typename F, typename... Args>
cudaError_t launch(F kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl, Args... args) {
  return launch_cl(kernel, grid, block, smem, s, pdl, 1, args...);
}

}  // namespace
}  // namespace dfssm::kernels::cuda
