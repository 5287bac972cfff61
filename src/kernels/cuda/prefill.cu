// CUDA prefill kernels (one sequence, T tokens through one Mamba-2 layer). What each op computes
// and the memory layouts are in prefill.h; the exact op definitions in src/kernels/cpu/ops.h.
//
// Kernel map and what bounds each. Times: one 1.3B layer at T = 2048 on an H200 (test_cuda_prefill
// "[bench]"): whole layer ~713 us (scan 346; the kernels' times summed), i.e. ~60k tokens/s for 48
// layers, kernels only.
//   expand_signs_kernel   one thread per 4 output bytes; load time only.
//   quantize_kernel       one block per token (reads the row twice, the second from L1/L2);
//                         DRAM-bound, 9 / 13 us (d / d_inner columns).
//   I8Gemm (cuBLASLt)     INT8 tensor cores, int32 out: in_proj 57 us (~1250 TOPS), out_proj 35 us.
//   epilogue_kernel<RK>   thread per output row r, 16 tokens per block (U's row in registers, the
//                         tokens' us ⊙ zlow read as float4 broadcasts); reads acc (int32), writes y:
//                         75 us for in_proj (~2x its DRAM time), 18 us for out_proj.
//   lowrank_down_kernel<RK>  4 tokens per block, threads strided over the columns with 4 x RK
//                         register accumulators (x read once, coalesced; V rows from L1/L2), then a
//                         warp-shuffle + fixed-order cross-warp sum: 22 / 37 us.
//   conv_kernel<K>        thread per (channel, 32-token slice): the slice's inputs are loaded into
//                         registers up front, the K-1 earlier inputs (or conv state taps) with them;
//                         DRAM-bound, 24 us. The slice-0 thread of a channel is the only reader of
//                         that channel's old state, so it also writes the new state (no race).
//   ssm_scan_kernel<NT, TPR, RP, F16>  block = one head h x PB rows p; a row's N state elements
//                         are split over TPR = N / NT lanes, and a thread owns NT elements of each
//                         of RP rows (default NT = 8, RP = 2: 16 in registers for all T tokens, and
//                         each B and C value a thread loads serves 2 rows); the loop over tokens is
//                         sequential. Chunks of 32 tokens of x, B,
//                         C and dt are staged into shared memory with cp.async, double-buffered
//                         (chunk c+1 loads while chunk c is scanned); dt/dA computed once per (token,
//                         head) per chunk; tokens are processed in groups of TPR whose y partial sums
//                         are reduced together (one reduce-scatter: TPR - 1 shuffles per TPR
//                         tokens and row); y goes through shared memory and is written per chunk,
//                         coalesced. Bound: instruction issue with few warps (H*P*N/16 = 32K threads
//                         at 1.3B, 2 warps per scheduler) and the shared-memory loads of B and C
//                         (ncu on NT = 16, RP = 1: 0.48 IPC per scheduler, stalls on them). 346 us
//                         (fp16 state 385) at NT = 8, RP = 2; 419 (432) at NT = 16, RP = 1, the
//                         previous default. The reduce-scatter's loops must all have compile-time
//                         trip counts: for TPR >= 16 nvcc once kept one, and part went to local
//                         memory (that made NT = 8 look slower than 16).
//   rmsnorm_kernel / gated_rmsnorm_kernel   one block per row, the row kept in shared memory
//                         between the two passes: 21 / 59 us (the gated one is ~3x its DRAM time;
//                         not investigated further).
#include <cublasLt.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <vector>

#include "kernels/cuda/prefill.h"

namespace dfssm::kernels::cuda {
namespace {

__device__ __forceinline__ float pf_silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float pf_softplus20(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float pf_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float pf_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum / max (blockDim a multiple of 32); every thread gets the result. Fixed order.
__device__ float pf_block_sum(float v, float* scratch /* >= 32 floats */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = pf_warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0;
  for (int i = 0; i < nw; ++i) t += scratch[i];
  return t;
}
__device__ float pf_block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = pf_warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0;
  for (int i = 0; i < nw; ++i) t = fmaxf(t, scratch[i]);
  return t;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---- expand signs ----------------------------------------------------------------------------
__global__ void expand_signs_kernel(const uint8_t* __restrict__ codes, int64_t row_bytes, int64_t R, int64_t C,
                                    int64_t ld, int8_t* __restrict__ out) {
  const int64_t words = ld / 4;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= R * words) return;
  const int64_t r = idx / words, c0 = (idx % words) * 4;  // c0 % 4 == 0: its 4 bits share a byte
  uint32_t w = 0;
  if (c0 < C) {
    const uint32_t byte = codes[r * row_bytes + (c0 >> 3)] >> (c0 & 7);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (c0 + i < C) w |= (((byte >> i) & 1u) ? 0x01u : 0xFFu) << (8 * i);
  }
  reinterpret_cast<uint32_t*>(out + r * ld)[c0 / 4] = w;
}

// ---- quantize --------------------------------------------------------------------------------
constexpr int kQuantThreads = 256;

__global__ void __launch_bounds__(kQuantThreads) quantize_kernel(const float* __restrict__ x, int64_t ldx,
                                                                 const float* __restrict__ b, int64_t C,
                                                                 int8_t* __restrict__ q, int64_t ldq,
                                                                 float* __restrict__ scale, int vec) {
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x;
  const float* xr = x + t * ldx;
  int8_t* qr = q + t * ldq;
  // b ⊙ x, four columns at a time (read twice: for the max, then to quantize).
  const float4* x4 = reinterpret_cast<const float4*>(xr);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  auto bx4 = [&](int64_t i) {
    float4 v = x4[i];
    if (b) {
      const float4 bb = b4[i];
      v.x = bb.x * v.x, v.y = bb.y * v.y, v.z = bb.z * v.z, v.w = bb.w * v.w;
    }
    return v;
  };
  float m = 0.f;
  if (vec) {
#pragma unroll 4
    for (int64_t i = tid; i < C / 4; i += nt) {
      const float4 v = bx4(i);
      m = fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
    }
  } else {
#pragma unroll 4
    for (int64_t c = tid; c < C; c += nt) m = fmaxf(m, fabsf(b ? b[c] * xr[c] : xr[c]));
  }
  m = pf_block_max(m, scratch);
  const float s = m > 0.f ? m / 127.f : 1.f;
  const float inv = 1.f / s;
  if (tid == 0) scale[t] = s;
  auto qz = [inv](float v) { return int(fmaxf(-127.f, fminf(127.f, rintf(v * inv)))); };
  if (vec) {
    char4* q4 = reinterpret_cast<char4*>(qr);
#pragma unroll 4
    for (int64_t i = tid; i < C / 4; i += nt) {
      const float4 v = bx4(i);
      q4[i] = make_char4(char(qz(v.x)), char(qz(v.y)), char(qz(v.z)), char(qz(v.w)));
    }
  } else {
    for (int64_t c = tid; c < C; c += nt) qr[c] = int8_t(qz(b ? b[c] * xr[c] : xr[c]));
  }
  for (int64_t c = C + tid; c < ldq; c += nt) qr[c] = 0;
}

// ---- projection epilogue ---------------------------------------------------------------------
// RK: the rank rounded up to a multiple of 4 the kernel is compiled for (0: no low-rank term).
constexpr int kEpiThreads = 256;
constexpr int kEpiTok = 16;

template <int RK>
__global__ void __launch_bounds__(kEpiThreads) epilogue_kernel(const int32_t* __restrict__ acc, int64_t ldacc,
                                                               int64_t T, int64_t R, const float* __restrict__ a,
                                                               const float* __restrict__ sx,
                                                               const int8_t* __restrict__ U,
                                                               const float* __restrict__ us,
                                                               const float* __restrict__ zlow, int rank,
                                                               float* __restrict__ y, int64_t ldy) {
  constexpr int RKS = RK > 0 ? RK : 4;
  __shared__ __align__(16) float zs[kEpiTok][RKS];  // us[k] · zlow[t, k], 0 for rank <= k < RK
  __shared__ float sxs[kEpiTok];
  const int64_t t0 = int64_t(blockIdx.y) * kEpiTok;
  const int nt = T - t0 < kEpiTok ? int(T - t0) : kEpiTok;
  if constexpr (RK > 0) {
    for (int i = threadIdx.x; i < nt * RK; i += blockDim.x) {
      const int tt = i / RK, k = i % RK;
      zs[tt][k] = k < rank ? us[k] * zlow[(t0 + tt) * rank + k] : 0.f;
    }
  }
  for (int i = threadIdx.x; i < nt; i += blockDim.x) sxs[i] = sx[t0 + i];
  __syncthreads();
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= R) return;
  int32_t av[kEpiTok];
#pragma unroll
  for (int tt = 0; tt < kEpiTok; ++tt) av[tt] = tt < nt ? acc[(t0 + tt) * ldacc + r] : 0;
  float uu[RKS];
#pragma unroll
  for (int k = 0; k < RKS; ++k) uu[k] = (RK > 0 && k < rank) ? float(U[r * rank + k]) : 0.f;
  const float ar = a[r];
#pragma unroll
  for (int tt = 0; tt < kEpiTok; ++tt) {
    if (tt >= nt) break;
    const float v = ar * (sxs[tt] * float(av[tt]));
    if constexpr (RK > 0) {
      const float4* z4 = reinterpret_cast<const float4*>(zs[tt]);
      float l0 = 0.f, l1 = 0.f;
#pragma unroll
      for (int j = 0; j < RK / 4; ++j) {
        const float4 zz = z4[j];  // broadcast
        l0 = fmaf(uu[4 * j], zz.x, l0);
        l1 = fmaf(uu[4 * j + 1], zz.y, l1);
        l0 = fmaf(uu[4 * j + 2], zz.z, l0);
        l1 = fmaf(uu[4 * j + 3], zz.w, l1);
      }
      y[(t0 + tt) * ldy + r] = v + (l0 + l1);
    } else {
      y[(t0 + tt) * ldy + r] = v;
    }
  }
}

// ---- low-rank down ---------------------------------------------------------------------------
// A block owns kLdTok tokens; its threads stride over the columns c (coalesced x loads, each x
// element read once), each accumulating kLdTok x RK partial sums in registers (V's row c from
// L1/L2, converted once per column); then warp shuffles and a fixed-order sum over the warps.
constexpr int kLdThreads = 256;
constexpr int kLdTok = 4;

template <int RK>
__global__ void __launch_bounds__(kLdThreads) lowrank_down_kernel(const float* __restrict__ x, int64_t ldx,
                                                                  const int8_t* __restrict__ V,
                                                                  const float* __restrict__ vs, int64_t T, int64_t C,
                                                                  int rank, float* __restrict__ z) {
  __shared__ float red[kLdThreads / 32][kLdTok * RK];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t t0 = int64_t(blockIdx.x) * kLdTok;
  const int nt = T - t0 < kLdTok ? int(T - t0) : kLdTok;
  const float* xr[kLdTok];
#pragma unroll
  for (int tt = 0; tt < kLdTok; ++tt) xr[tt] = x + (t0 + (tt < nt ? tt : 0)) * ldx;
  float acc[kLdTok][RK];
#pragma unroll
  for (int tt = 0; tt < kLdTok; ++tt)
#pragma unroll
    for (int k = 0; k < RK; ++k) acc[tt][k] = 0.f;
#pragma unroll 2
  for (int64_t c = tid; c < C; c += kLdThreads) {
    const int8_t* vr = V + c * rank;
    float v[RK];
#pragma unroll
    for (int k = 0; k < RK; ++k) v[k] = k < rank ? float(vr[k]) : 0.f;
    float xv[kLdTok];
#pragma unroll
    for (int tt = 0; tt < kLdTok; ++tt) xv[tt] = tt < nt ? xr[tt][c] : 0.f;
#pragma unroll
    for (int tt = 0; tt < kLdTok; ++tt)
#pragma unroll
      for (int k = 0; k < RK; ++k) acc[tt][k] = fmaf(xv[tt], v[k], acc[tt][k]);
  }
#pragma unroll
  for (int i = 0; i < kLdTok * RK; ++i) {
    const float s = pf_warp_sum(acc[i / RK][i % RK]);
    if (lane == 0) red[warp][i] = s;
  }
  __syncthreads();
  for (int i = tid; i < nt * rank; i += blockDim.x) {
    const int tt = i / rank, k = i % rank;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kLdThreads / 32; ++w) s += red[w][tt * RK + k];
    z[(t0 + tt) * rank + k] = vs[k] * s;
  }
}

// ---- conv1d + SiLU ---------------------------------------------------------------------------
constexpr int kConvThreads = 256;
constexpr int kConvTok = 32;  // tokens per thread; >= K - 1, so only slice 0 reads the old state

template <int K>
__global__ void __launch_bounds__(kConvThreads) conv_kernel(const float* __restrict__ xin, int64_t ld_in,
                                                            float* __restrict__ state, const float* __restrict__ w,
                                                            const float* __restrict__ bias, float* __restrict__ out,
                                                            int64_t T, int64_t D) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= D) return;
  const int64_t t0 = int64_t(blockIdx.y) * kConvTok;
  const int nt = T - t0 < kConvTok ? int(T - t0) : kConvTok;
  const bool first = blockIdx.y == 0;
  float xv[kConvTok];
#pragma unroll
  for (int i = 0; i < kConvTok; ++i) xv[i] = i < nt ? xin[(t0 + i) * ld_in + c] : 0.f;
  float old[K], wk[K], win[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    old[k] = first ? state[k * D + c] : 0.f;
    wk[k] = w[k * D + c];
  }
  // win[k] = input at t0 - (K-1) + k for k < K-1: negative (the state's tap k+1) exactly in slice 0,
  // since t0 >= kConvTok >= K - 1 elsewhere.
#pragma unroll
  for (int k = 0; k + 1 < K; ++k) win[k] = first ? old[k + 1] : xin[(t0 - (K - 1) + k) * ld_in + c];
  const float bv = bias ? bias[c] : 0.f;
#pragma unroll
  for (int i = 0; i < kConvTok; ++i) {
    if (i >= nt) break;
    win[K - 1] = xv[i];
    float acc = bv;
#pragma unroll
    for (int k = 0; k < K; ++k) acc = fmaf(wk[k], win[k], acc);
    out[(t0 + i) * D + c] = pf_silu(acc);
#pragma unroll
    for (int k = 0; k + 1 < K; ++k) win[k] = win[k + 1];
  }
  if (first) {  // new state tap k = input T - K + k (or the old tap T + k when T + k < K)
    float ns[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t j = T - K + k;
      float o = 0.f;  // old[T + k], selected without a dynamic register index
#pragma unroll
      for (int m = 0; m < K; ++m)
        if (m == T + k) o = old[m];
      ns[k] = j >= 0 ? xin[j * ld_in + c] : o;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) state[k * D + c] = ns[k];
  }
}

template <int K>
cudaError_t launch_conv(const float* xin, int64_t ld_in, float* state, const float* w, const float* bias, float* out,
                        int64_t T, int64_t D, cudaStream_t s) {
  const dim3 grid(blocks_for(D, kConvThreads), unsigned((T + kConvTok - 1) / kConvTok));
  conv_kernel<K><<<grid, kConvThreads, 0, s>>>(xin, ld_in, state, w, bias, out, T, D);
  return cudaGetLastError();
}

// ---- SSM scan --------------------------------------------------------------------------------
struct ScanParams {
  void* state;
  const float* xbc;
  const float* dt_raw;
  int64_t ld_dt;
  const float* dt_bias;
  const float* A;
  const float* Dskip;
  float* y;
  int64_t T, Dc;
  int H, P, N, G, PB, TC;
  float dt_min, dt_max;
};

// Shared memory (floats): two buffers of [B: TC*N | C: TC*N | x: TC*PB | (dt, dA): TC*2], then
// y: PB*(TC+1). Every part starts 16-byte aligned (N % 4 == 0, PB % 4 == 0, TC % 4 == 0).
__host__ __device__ inline int scan_buf_floats(int N, int PB, int TC) { return TC * (2 * N + PB + 2); }
inline size_t scan_smem_bytes(int N, int PB, int TC) {
  return (2 * size_t(scan_buf_floats(N, PB, TC)) + size_t(TC + 1) * PB) * 4;
}

// NT state elements of a row per thread, TPR = N / NT lanes per row, RP rows per thread (the B
// and C values a thread loads from shared memory serve its RP rows). RP > 1 is instantiated only
// for NT = 8, TPR = 16 (N = 128), RP = 2; ScanTuning::rows_per_thread selects it.
template <int NT, int TPR, int RP, bool F16>
__global__ void __launch_bounds__(256, 1) ssm_scan_kernel(ScanParams p) {
  extern __shared__ float4 scan_smem4[];
  float* sm = reinterpret_cast<float*>(scan_smem4);
  const int N = p.N, P = p.P, PB = p.PB, TC = p.TC;
  const int h = blockIdx.x, p0 = blockIdx.y * PB;
  const int tid = threadIdx.x, nthr = blockDim.x, pr = (tid / TPR) * RP, q = tid % TPR;
  const int di = p.H * P, grp = h / (p.H / p.G);
  const int64_t T = p.T, Dc = p.Dc;
  const int buf_f = scan_buf_floats(N, PB, TC);
  float* ys = sm + 2 * buf_f;  // [PB][TC + 1] (padded: conflict-free column writes)
  const int ysl = TC + 1;
  const float Ah = p.A[h], dtb = p.dt_bias[h], Dh = p.Dskip[h];
  constexpr int NJ = NT / 4;

  // This thread's state: rows p0 + pr + r (r < RP), elements n = 4*(q + TPR*j) + i (j < 4, i < 4).
  float s[RP][NT];
#pragma unroll
  for (int r = 0; r < RP; ++r) {
    const int64_t srow = (int64_t(h) * P + p0 + pr + r) * N;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int n = 4 * (q + TPR * j);
      if (F16) {
        const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __half*>(p.state) + srow + n);
        const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
        const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
        s[r][4 * j] = lo.x, s[r][4 * j + 1] = lo.y, s[r][4 * j + 2] = hi.x, s[r][4 * j + 3] = hi.y;
      } else {
        const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(p.state) + srow + n);
        s[r][4 * j] = v.x, s[r][4 * j + 1] = v.y, s[r][4 * j + 2] = v.z, s[r][4 * j + 3] = v.w;
      }
    }
  }

  const int nchunks = int((T + TC - 1) / TC);
  const int nv = N / 4;  // float4 per B (or C) row
  // Copy slots per token: 2*nv float4 of B|C, PB/4 float4 of x. A thread's (token, slot) pairs
  // advance by nthr each step: the divisions are done once, not per copy.
  const int bc_slots = 2 * nv, x_slots = PB / 4;
  const int bc_t0 = tid / bc_slots, bc_s0 = tid % bc_slots, bc_dt = nthr / bc_slots, bc_ds = nthr % bc_slots;
  const int x_t0 = tid / x_slots, x_s0 = tid % x_slots, x_dt = nthr / x_slots, x_ds = nthr % x_slots;
  const int y_t0 = tid / PB, y_r0 = tid % PB, y_dt = nthr / PB, y_dr = nthr % PB;
  const float* bc_src = p.xbc + di + grp * N;
  const float* x_src = p.xbc + int64_t(h) * P + p0;
  auto issue = [&](int ch) {
    float* Bb = sm + (ch & 1) * buf_f;
    float* Xb = Bb + 2 * TC * N;
    float* Db = Xb + TC * PB;
    const int64_t t0 = int64_t(ch) * TC;
    const int nt = T - t0 < TC ? int(T - t0) : TC;
    for (int tt = bc_t0, sl = bc_s0; tt < nt;) {
      const int which = sl >= nv ? 1 : 0, v = sl - which * nv;  // B (0) or C (1), float4 v
      cp_async16(Bb + which * TC * N + tt * N + 4 * v, bc_src + (t0 + tt) * Dc + which * p.G * N + 4 * v);
      tt += bc_dt, sl += bc_ds;
      if (sl >= bc_slots) sl -= bc_slots, ++tt;
    }
    for (int tt = x_t0, sl = x_s0; tt < nt;) {
      cp_async16(Xb + tt * PB + 4 * sl, x_src + (t0 + tt) * Dc + 4 * sl);
      tt += x_dt, sl += x_ds;
      if (sl >= x_slots) sl -= x_slots, ++tt;
    }
    if (tid < nt) cp_async4(Db + 2 * tid, p.dt_raw + (t0 + tid) * p.ld_dt + h);  // (nthr >= 32 >= TC)
  };

  issue(0);
  cp_async_commit();
  for (int ch = 0; ch < nchunks; ++ch) {
    if (ch + 1 < nchunks) issue(ch + 1);  // into the other buffer, free since the last __syncthreads
    cp_async_commit();
    cp_async_wait1();  // this thread's copies of chunk ch have landed
    __syncthreads();   // ... and everyone's
    const float* Bb = sm + (ch & 1) * buf_f;
    const float* Cb = Bb + TC * N;
    const float* Xb = Cb + TC * N;
    float* Db = sm + (ch & 1) * buf_f + 2 * TC * N + TC * PB;
    const int64_t t0 = int64_t(ch) * TC;
    const int nt = T - t0 < TC ? int(T - t0) : TC;
    if (tid < nt) {  // (blockDim >= 32 >= TC)
      const float dt = fminf(fmaxf(pf_softplus20(Db[2 * tid] + dtb), p.dt_min), p.dt_max);
      Db[2 * tid] = dt;
      Db[2 * tid + 1] = expf(dt * Ah);
    }
    __syncthreads();
    // Groups of TPR tokens: the state updates of the group are independent of its y reductions,
    // which are done together as one reduce-scatter per row over the row's TPR lanes (TPR - 1
    // shuffles per TPR tokens); lane q ends with token g0 + q's y. The sum tree (pairs of lanes
    // differing in one bit, highest bit first) is the same for every token: results do not
    // depend on which lane finishes a token, so chunked calls are bit-identical to one call.
    for (int g0 = 0; g0 < nt; g0 += TPR) {
      float part[TPR][RP];
#pragma unroll
      for (int u = 0; u < TPR; ++u) {
        const int tt = g0 + u;
#pragma unroll
        for (int r = 0; r < RP; ++r) part[u][r] = 0.f;
        if (tt < nt) {  // uniform
          const float2 da = reinterpret_cast<const float2*>(Db)[tt];
          float xdt[RP];
#pragma unroll
          for (int r = 0; r < RP; ++r) xdt[r] = Xb[tt * PB + pr + r] * da.x;
          const float4* B4 = reinterpret_cast<const float4*>(Bb + tt * N);
          const float4* C4 = reinterpret_cast<const float4*>(Cb + tt * N);
          float acc[RP][4];
#pragma unroll
          for (int r = 0; r < RP; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.f;
#pragma unroll
          for (int j = 0; j < NJ; ++j) {
            const float4 bv = B4[q + TPR * j], cv = C4[q + TPR * j];
#pragma unroll
            for (int r = 0; r < RP; ++r) {
              float v0 = s[r][4 * j] * da.y + xdt[r] * bv.x;
              float v1 = s[r][4 * j + 1] * da.y + xdt[r] * bv.y;
              float v2 = s[r][4 * j + 2] * da.y + xdt[r] * bv.z;
              float v3 = s[r][4 * j + 3] * da.y + xdt[r] * bv.w;
              if (F16) {  // the state is stored as half: round once, and y uses the rounded value
                const float2 lo = __half22float2(__floats2half2_rn(v0, v1));
                const float2 hi = __half22float2(__floats2half2_rn(v2, v3));
                v0 = lo.x, v1 = lo.y, v2 = hi.x, v3 = hi.y;
              }
              s[r][4 * j] = v0, s[r][4 * j + 1] = v1, s[r][4 * j + 2] = v2, s[r][4 * j + 3] = v3;
              acc[r][0] = fmaf(cv.x, v0, acc[r][0]);
              acc[r][1] = fmaf(cv.y, v1, acc[r][1]);
              acc[r][2] = fmaf(cv.z, v2, acc[r][2]);
              acc[r][3] = fmaf(cv.w, v3, acc[r][3]);
            }
          }
#pragma unroll
          for (int r = 0; r < RP; ++r) part[u][r] = (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);
        }
      }
      // Every loop here has a compile-time trip count, so that all of them unroll and part stays
      // in registers (with `sft >>= 1` and `i < sft` nvcc kept a loop for TPR >= 16 and put part
      // in local memory).
      constexpr int kLevels = TPR >= 32 ? 5 : TPR >= 16 ? 4 : TPR >= 8 ? 3 : TPR >= 4 ? 2 : TPR >= 2 ? 1 : 0;
#pragma unroll
      for (int lvl = 0; lvl < kLevels; ++lvl) {
        const int sft = TPR >> (lvl + 1);
        const bool up = (q & sft) != 0;
#pragma unroll
        for (int i = 0; i < (TPR > 1 ? TPR / 2 : 1); ++i)
          if (i < sft)
#pragma unroll
            for (int r = 0; r < RP; ++r) {
              const float lo = part[i][r], hi = part[i + sft][r];  // values, not a select of addresses
              const float send = up ? lo : hi;
              const float keep = up ? hi : lo;
              part[i][r] = keep + __shfl_xor_sync(0xffffffffu, send, sft);
            }
      }
      const int tt = g0 + q;
      if (tt < nt)
#pragma unroll
        for (int r = 0; r < RP; ++r) ys[(pr + r) * ysl + tt] = part[0][r] + Dh * Xb[tt * PB + pr + r];
    }
    __syncthreads();  // ys complete; this chunk's buffer is free for chunk ch + 2
    float* yout = p.y + t0 * di + int64_t(h) * P + p0;
    for (int tt = y_t0, r = y_r0; tt < nt;) {  // coalesced along the rows r
      yout[int64_t(tt) * di + r] = ys[r * ysl + tt];
      tt += y_dt, r += y_dr;
      if (r >= PB) r -= PB, ++tt;
    }
  }

#pragma unroll
  for (int r = 0; r < RP; ++r) {
    const int64_t srow = (int64_t(h) * P + p0 + pr + r) * N;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int n = 4 * (q + TPR * j);
      if (F16) {  // exact: the values are halves already
        const __half2 lo = __floats2half2_rn(s[r][4 * j], s[r][4 * j + 1]);
        const __half2 hi = __floats2half2_rn(s[r][4 * j + 2], s[r][4 * j + 3]);
        uint2 raw;
        raw.x = *reinterpret_cast<const uint32_t*>(&lo);
        raw.y = *reinterpret_cast<const uint32_t*>(&hi);
        *reinterpret_cast<uint2*>(static_cast<__half*>(p.state) + srow + n) = raw;
      } else {
        *reinterpret_cast<float4*>(static_cast<float*>(p.state) + srow + n) =
            make_float4(s[r][4 * j], s[r][4 * j + 1], s[r][4 * j + 2], s[r][4 * j + 3]);
      }
    }
  }
}

template <int NT, int TPR, int RP, bool F16>
cudaError_t launch_scan(const ScanParams& p, int threads, cudaStream_t s) {
  const size_t smem = scan_smem_bytes(p.N, p.PB, p.TC);
  if (cudaFuncSetAttribute(ssm_scan_kernel<NT, TPR, RP, F16>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           int(smem)) != cudaSuccess) {
    (void)cudaGetLastError();  // do not leave the error for the caller's next launch check
    return cudaErrorInvalidValue;
  }
  ssm_scan_kernel<NT, TPR, RP, F16><<<dim3(unsigned(p.H), unsigned(p.P / p.PB)), threads, smem, s>>>(p);
  return cudaGetLastError();
}

template <int NT>
cudaError_t launch_scan_nt(const ScanParams& p, int tpr, bool f16, int threads, cudaStream_t s) {
  switch (tpr * 2 + (f16 ? 1 : 0)) {
    case 2: return launch_scan<NT, 1, 1, false>(p, threads, s);
    case 3: return launch_scan<NT, 1, 1, true>(p, threads, s);
    case 4: return launch_scan<NT, 2, 1, false>(p, threads, s);
    case 5: return launch_scan<NT, 2, 1, true>(p, threads, s);
    case 8: return launch_scan<NT, 4, 1, false>(p, threads, s);
    case 9: return launch_scan<NT, 4, 1, true>(p, threads, s);
    case 16: return launch_scan<NT, 8, 1, false>(p, threads, s);
    case 17: return launch_scan<NT, 8, 1, true>(p, threads, s);
    case 32: return launch_scan<NT, 16, 1, false>(p, threads, s);
    case 33: return launch_scan<NT, 16, 1, true>(p, threads, s);
    case 64: return launch_scan<NT, 32, 1, false>(p, threads, s);
    default: return launch_scan<NT, 32, 1, true>(p, threads, s);
  }
}

// Two rows per thread: instantiated for one shape only, the default's at N = 128 (8 x 2; the
// other multi-row shapes measured slower, docs/benchmarks.md, and were dropped).
constexpr int kRpNT = 8, kRpTPR = 16, kRpRP = 2;

// ---- norms -----------------------------------------------------------------------------------
// One block per row. SM: the row is kept in (dynamic) shared memory between the statistic and
// the output pass, so DRAM sees every input once (rows up to kNormSmemMax floats); otherwise the
// second pass re-reads the inputs (from L2 mostly).
constexpr int kNormThreads = 256;
constexpr int64_t kNormSmemMax = 12 * 1024;  // floats (48 KB)

constexpr int kNormBatch = 8;  // elements per thread whose loads are issued together

// The first pass of the row norms (shared by the norm kernels and the fused norm + quantize, so
// both compute the same values in the same order): this thread's elements of the row, kept in
// norm_row when SM, and this thread's part of Σ v². Residual: v = r + hd (written back to r when
// hd is set); gated: v = y ⊙ silu(z) over columns [i0, i1).
template <bool SM>
__device__ __forceinline__ float residual_row_pass(float* r, const float* hd, float* norm_row, int64_t n) {
  const int nt = blockDim.x;
  float ss = 0.f;
  for (int64_t base = threadIdx.x; base < n; base += kNormBatch * nt) {
    float v[kNormBatch], hv[kNormBatch];
#pragma unroll
    for (int j = 0; j < kNormBatch; ++j) {
      const int64_t i = base + int64_t(j) * nt;
      v[j] = i < n ? r[i] : 0.f;
      hv[j] = (hd && i < n) ? hd[i] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kNormBatch; ++j) {
      const int64_t i = base + int64_t(j) * nt;
      if (i < n) {
        if (hd) {
          v[j] += hv[j];
          r[i] = v[j];
        }
        if (SM) norm_row[i] = v[j];
        ss += v[j] * v[j];
      }
    }
  }
  return ss;
}

template <bool SM>
__device__ __forceinline__ float gated_row_pass(const float* yr, const float* zr, float* norm_row, int64_t i0,
                                                int64_t i1) {
  const int nt = blockDim.x;
  float ss = 0.f;
  for (int64_t base = i0 + threadIdx.x; base < i1; base += kNormBatch * nt) {
    float yv[kNormBatch], zv[kNormBatch];
#pragma unroll
    for (int j = 0; j < kNormBatch; ++j) {
      const int64_t i = base + int64_t(j) * nt;
      yv[j] = i < i1 ? yr[i] : 0.f;
      zv[j] = i < i1 ? zr[i] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kNormBatch; ++j) {
      const int64_t i = base + int64_t(j) * nt;
      const float v = yv[j] * pf_silu(zv[j]);
      if (i < i1) {
        if (SM) norm_row[i] = v;
        ss += v * v;
      }
    }
  }
  return ss;
}

template <bool SM>
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(const float* __restrict__ hidden,
                                                               float* __restrict__ res, const float* __restrict__ w,
                                                               float* __restrict__ out, int64_t n, float eps) {
  extern __shared__ float norm_row[];
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const int nt = blockDim.x;
  float* r = res + t * n;
  const float ss = residual_row_pass<SM>(r, hidden ? hidden + t * n : nullptr, norm_row, n);
  const float rstd = 1.f / sqrtf(pf_block_sum(ss, scratch) / float(n) + eps);
  float* o = out + t * n;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < n; i += nt) o[i] = (SM ? norm_row[i] : r[i]) * rstd * w[i];  // own i
}

template <bool SM>
__global__ void __launch_bounds__(kNormThreads) gated_rmsnorm_kernel(const float* __restrict__ y,
                                                                     const float* __restrict__ z, int64_t ldz,
                                                                     const float* __restrict__ w,
                                                                     float* __restrict__ out, int64_t n, int G,
                                                                     float eps) {
  extern __shared__ float norm_row[];
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x, gs = n / G;
  const int nt = blockDim.x;
  const float* yr = y + t * n;
  const float* zr = z + t * ldz;
  float* o = out + t * n;
  for (int g = 0; g < G; ++g) {
    const int64_t i0 = g * gs, i1 = i0 + gs;
    const float ss = gated_row_pass<SM>(yr, zr, norm_row, i0, i1);
    const float rstd = 1.f / sqrtf(pf_block_sum(ss, scratch) / float(gs) + eps);
#pragma unroll 4
    for (int64_t i = i0 + threadIdx.x; i < i1; i += nt)
      o[i] = (SM ? norm_row[i] : yr[i] * pf_silu(zr[i])) * rstd * w[i];  // norm_row[i]: this thread's own
  }
}


// ---- norm + quantize -------------------------------------------------------------------------
// A projection's input in one pass over the row (one block per token, the row in shared memory):
// the norm (residual_row_pass / gated_row_pass, as in the norm kernels), its
// output x (still written: lowrank_down reads it), then quantize_kernel's per-token int8 of b ⊙ x
// from shared memory instead of a second kernel re-reading x from DRAM. Every value is computed by
// the same IEEE operations as the two-kernel path, so the outputs are bit-identical to it.
struct NormQuantParams {
  const float* hidden;  // plain: res += hidden (may be null)
  float* res;
  const float* y;  // gated: g = y ⊙ silu(z), G groups
  const float* z;
  int64_t ldz;
  int G;
  const float* w;
  float* out;
  int64_t n;
  float eps;
  const float* b;  // may be null
  int8_t* q;
  int64_t ldq;
  float* scale;
  int vec;  // n % 4 == 0, group size % 4 == 0, w / b / out 16-byte aligned: float4 passes
};
constexpr int kNqMaxGroups = 64;

template <bool GATED>
__global__ void __launch_bounds__(kNormThreads) norm_quant_kernel(NormQuantParams p) {
  extern __shared__ float norm_row[];
  __shared__ float scratch[32];
  __shared__ float rs[kNqMaxGroups];
  const int64_t t = blockIdx.x, n = p.n;
  const int nt = blockDim.x;
  const int G = GATED ? p.G : 1;
  const int64_t gs = n / G;
  // ---- pass 1: the row and its statistic per group ----
  for (int g = 0; g < G; ++g) {
    const int64_t i0 = g * gs, i1 = i0 + gs;
    const float ss = GATED ? gated_row_pass<true>(p.y + t * n, p.z + t * p.ldz, norm_row, i0, i1)
                           : residual_row_pass<true>(p.res + t * n, p.hidden ? p.hidden + t * n : nullptr, norm_row, n);
    const float rstd = 1.f / sqrtf(pf_block_sum(ss, scratch) / float(gs) + p.eps);
    if (threadIdx.x == 0) rs[g] = rstd;
  }
  __syncthreads();
  // ---- pass 2: x = row · rstd ⊙ w (written), b ⊙ x kept in place, its absolute maximum. Each
  // thread touches only its own elements: no barrier needed. (vec: 4 at a time; same operations)
  float* o = p.out + t * n;
  float m = 0.f;
  if (p.vec) {
    float4* row4 = reinterpret_cast<float4*>(norm_row);
    const float4* w4 = reinterpret_cast<const float4*>(p.w);
    const float4* b4 = reinterpret_cast<const float4*>(p.b);
    for (int64_t i = threadIdx.x; i < n / 4; i += nt) {
      const float r = rs[4 * i / gs];  // (gs % 4 == 0: one group)
      const float4 v = row4[i], w = w4[i];
      const float4 x = make_float4(v.x * r * w.x, v.y * r * w.y, v.z * r * w.z, v.w * r * w.w);
      reinterpret_cast<float4*>(o)[i] = x;
      float4 bx = x;
      if (p.b) {
        const float4 bb = b4[i];
        bx = make_float4(bb.x * x.x, bb.y * x.y, bb.z * x.z, bb.w * x.w);
      }
      row4[i] = bx;
      m = fmaxf(m, fmaxf(fmaxf(fabsf(bx.x), fabsf(bx.y)), fmaxf(fabsf(bx.z), fabsf(bx.w))));
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += nt) {
      const float x = norm_row[i] * rs[i / gs] * p.w[i];
      o[i] = x;
      const float bx = p.b ? p.b[i] * x : x;
      norm_row[i] = bx;
      m = fmaxf(m, fabsf(bx));
    }
  }
  m = pf_block_max(m, scratch);
  const float sc = m > 0.f ? m / 127.f : 1.f;
  const float inv = 1.f / sc;
  if (threadIdx.x == 0) p.scale[t] = sc;
  // ---- pass 3: int8 ----
  int8_t* qr = p.q + t * p.ldq;
  auto qz = [inv](float v) { return char(int(fmaxf(-127.f, fminf(127.f, rintf(v * inv))))); };
  if (p.vec) {
    const float4* row4 = reinterpret_cast<const float4*>(norm_row);
    for (int64_t i = threadIdx.x; i < n / 4; i += nt) {
      const float4 v = row4[i];
      reinterpret_cast<char4*>(qr)[i] = make_char4(qz(v.x), qz(v.y), qz(v.z), qz(v.w));
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += nt) qr[i] = int8_t(qz(norm_row[i]));
  }
  for (int64_t c = n + threadIdx.x; c < p.ldq; c += nt) qr[c] = 0;
}
}  // namespace

// ---- host wrappers ---------------------------------------------------------------------------
cudaError_t expand_signs_i8(const uint8_t* codes, int64_t row_bytes, int64_t R, int64_t C, int8_t* out, int64_t ld,
                            cudaStream_t stream) {
  if (R < 0 || C < 0 || ld < C || ld % 16 != 0 || row_bytes * 8 < C || !aligned16(out)) return cudaErrorInvalidValue;
  const int64_t n = R * (ld / 4);
  if (n == 0) return cudaSuccess;
  expand_signs_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(codes, row_bytes, R, C, ld, out);
  return cudaGetLastError();
}

cudaError_t quantize_act_i8(const float* x, int64_t ldx, const float* b, int64_t T, int64_t C, int8_t* q, int64_t ldq,
                            float* scale, cudaStream_t stream) {
  if (T < 0 || C < 1 || ldx < C || ldq < C || ldq % 16 != 0 || !aligned16(q)) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  const int vec = (C % 4 == 0 && ldx % 4 == 0 && aligned16(x) && (!b || aligned16(b))) ? 1 : 0;
  quantize_kernel<<<unsigned(T), kQuantThreads, 0, stream>>>(x, ldx, b, C, q, ldq, scale, vec);
  return cudaGetLastError();
}

// cuBLASLt plan cache.
struct I8Gemm::Impl {
  struct Plan {
    int64_t T, R, K, ldc;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  size_t ws_bytes = 0;
  void* ws = nullptr;
  cublasLtHandle_t h = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  std::vector<Plan> plans;
  int status = 0;

  cudaError_t fail(cublasStatus_t st) {
    status = int(st);
    return st == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown;
  }
  cudaError_t init() {
    if (h) return cudaSuccess;
    if (!ws && ws_bytes > 0) {
      const cudaError_t e = cudaMalloc(&ws, ws_bytes);
      if (e != cudaSuccess) return e;
    }
    cublasStatus_t st = cublasLtCreate(&h);
    if (st != CUBLAS_STATUS_SUCCESS) {
      h = nullptr;
      return fail(st);
    }
    st = cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32I, CUDA_R_32I);
    if (st != CUBLAS_STATUS_SUCCESS) return fail(st);
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    st = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    return fail(st);
  }
  cudaError_t plan(int64_t T, int64_t R, int64_t K, int64_t ldc, const Plan** out) {
    for (const Plan& p : plans)
      if (p.T == T && p.R == R && p.K == K && p.ldc == ldc) {
        *out = &p;
        return cudaSuccess;
      }
    cudaError_t e = init();
    if (e != cudaSuccess) return e;
    Plan p;
    p.T = T, p.R = R, p.K = K, p.ldc = ldc;
    auto cleanup = [&p] {
      if (p.a) cublasLtMatrixLayoutDestroy(p.a);
      if (p.b) cublasLtMatrixLayoutDestroy(p.b);
      if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    };
    // Column-major views: A = S as K x R (ld K, used transposed), B = q as K x T (ld K), C = acc as R x T (ld ldc).
    cublasStatus_t st = cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8I, uint64_t(K), uint64_t(R), K);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8I, uint64_t(K), uint64_t(T), K);
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32I, uint64_t(R), uint64_t(T), ldc);
    cublasLtMatmulPreference_t pref = nullptr;
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceCreate(&pref);
    if (st == CUBLAS_STATUS_SUCCESS) {
      const uint64_t wsb = ws_bytes;
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
    }
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulAlgoGetHeuristic(h, op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found < 1) {
      cleanup();
      if (st != CUBLAS_STATUS_SUCCESS) return fail(st);
      status = int(CUBLAS_STATUS_NOT_SUPPORTED);
      return cudaErrorNotSupported;
    }
    p.algo = res.algo;
    plans.push_back(p);
    *out = &plans.back();
    return cudaSuccess;
  }
  ~Impl() {
    for (Plan& p : plans) {
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.c);
    }
    if (op) cublasLtMatmulDescDestroy(op);
    if (h) cublasLtDestroy(h);
    if (ws) cudaFree(ws);
  }
};

I8Gemm::I8Gemm(size_t workspace_bytes) : impl_(new Impl) { impl_->ws_bytes = workspace_bytes; }
I8Gemm::~I8Gemm() { delete impl_; }
int I8Gemm::last_status() const { return impl_->status; }

static bool i8gemm_shape_ok(int64_t T, int64_t R, int64_t K, int64_t ldc) {
  return T >= 0 && R > 0 && R % 4 == 0 && K > 0 && K % 16 == 0 && ldc >= R && ldc % 4 == 0;
}

cudaError_t I8Gemm::prepare(int64_t T, int64_t R, int64_t K, int64_t ldc) {
  if (!i8gemm_shape_ok(T, R, K, ldc)) return cudaErrorInvalidValue;
  if (T == 0) return impl_->init();
  const Impl::Plan* p = nullptr;
  return impl_->plan(T, R, K, ldc, &p);
}

cudaError_t I8Gemm::run(const int8_t* q, const int8_t* S, int32_t* acc, int64_t T, int64_t R, int64_t K, int64_t ldc,
                        cudaStream_t stream) {
  if (!i8gemm_shape_ok(T, R, K, ldc) || !aligned16(q) || !aligned16(S) || !aligned16(acc)) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  const Impl::Plan* p = nullptr;
  const cudaError_t e = impl_->plan(T, R, K, ldc, &p);
  if (e != cudaSuccess) return e;
  const int32_t alpha = 1, beta = 0;
  return impl_->fail(cublasLtMatmul(impl_->h, impl_->op, &alpha, S, p->a, q, p->b, &beta, acc, p->c, acc, p->c,
                                    &p->algo, impl_->ws, impl_->ws_bytes, stream));
}

namespace {
// The compiled rank bucket for `rank` (a multiple of 4 >= rank; 0 stays 0).
int rank_bucket(int64_t rank) {
  for (int rk : {0, 8, 16, 20, 24, 32})
    if (rank <= rk) return rk;
  return -1;
}
}  // namespace

cudaError_t proj_epilogue(const int32_t* acc, int64_t ldacc, int64_t T, int64_t R, const float* a, const float* sx,
                          const int8_t* U, const float* us, const float* zlow, int64_t rank, float* y, int64_t ldy,
                          cudaStream_t stream) {
  if (!U) rank = 0;
  if (T < 0 || R < 1 || ldacc < R || ldy < R || rank < 0 || rank > kPrefillMaxRank) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  const dim3 grid(blocks_for(R, kEpiThreads), unsigned((T + kEpiTok - 1) / kEpiTok));
  const int rk = int(rank);
  switch (rank_bucket(rank)) {
    case 0: epilogue_kernel<0><<<grid, kEpiThreads, 0, stream>>>(acc, ldacc, T, R, a, sx, U, us, zlow, rk, y, ldy); break;
    case 8: epilogue_kernel<8><<<grid, kEpiThreads, 0, stream>>>(acc, ldacc, T, R, a, sx, U, us, zlow, rk, y, ldy); break;
    case 16: epilogue_kernel<16><<<grid, kEpiThreads, 0, stream>>>(acc, ldacc, T, R, a, sx, U, us, zlow, rk, y, ldy); break;
    case 20: epilogue_kernel<20><<<grid, kEpiThreads, 0, stream>>>(acc, ldacc, T, R, a, sx, U, us, zlow, rk, y, ldy); break;
    case 24: epilogue_kernel<24><<<grid, kEpiThreads, 0, stream>>>(acc, ldacc, T, R, a, sx, U, us, zlow, rk, y, ldy); break;
    default: epilogue_kernel<32><<<grid, kEpiThreads, 0, stream>>>(acc, ldacc, T, R, a, sx, U, us, zlow, rk, y, ldy); break;
  }
  return cudaGetLastError();
}

cudaError_t lowrank_down(const float* x, int64_t ldx, const int8_t* V, const float* vs, int64_t T, int64_t C,
                         int64_t rank, float* zlow, cudaStream_t stream) {
  if (T < 0 || C < 1 || ldx < C || rank < 1 || rank > kPrefillMaxRank) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  const unsigned grid = unsigned((T + kLdTok - 1) / kLdTok);
  const int rk = int(rank);
  switch (rank_bucket(rank)) {
    case 8: lowrank_down_kernel<8><<<grid, kLdThreads, 0, stream>>>(x, ldx, V, vs, T, C, rk, zlow); break;
    case 16: lowrank_down_kernel<16><<<grid, kLdThreads, 0, stream>>>(x, ldx, V, vs, T, C, rk, zlow); break;
    case 20: lowrank_down_kernel<20><<<grid, kLdThreads, 0, stream>>>(x, ldx, V, vs, T, C, rk, zlow); break;
    case 24: lowrank_down_kernel<24><<<grid, kLdThreads, 0, stream>>>(x, ldx, V, vs, T, C, rk, zlow); break;
    default: lowrank_down_kernel<32><<<grid, kLdThreads, 0, stream>>>(x, ldx, V, vs, T, C, rk, zlow); break;
  }
  return cudaGetLastError();
}

cudaError_t conv_prefill(const float* xbc_raw, int64_t ld_in, float* conv_state, const float* w, const float* bias,
                         float* out, int64_t T, int64_t D, int K, cudaStream_t stream) {
  if (T < 0 || D < 1 || ld_in < D || K < 1 || K > kPrefillMaxConvK) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  switch (K) {
    case 1: return launch_conv<1>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
    case 2: return launch_conv<2>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
    case 3: return launch_conv<3>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
    case 4: return launch_conv<4>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
    case 5: return launch_conv<5>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
    case 6: return launch_conv<6>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
    case 7: return launch_conv<7>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
    default: return launch_conv<8>(xbc_raw, ld_in, conv_state, w, bias, out, T, D, stream);
  }
}

namespace {
// The block configuration of ssm_scan for these shapes: NT state elements of RP rows per thread
// (the tuning's; else 16 x 1, else 8 x 1 when 16 leaves a block that is not a whole number of
// warps, e.g. P = 16 and N = 16), TPR lanes per row, PB rows per block, TC tokens per staged
// chunk. False: unsupported.
struct ScanPlan {
  int NT = 0, TPR = 0, RP = 1, PB = 0, threads = 0, TC = 0;
};
bool scan_plan(int H, int P, int N, int G, const ScanTuning& tuning, ScanPlan* out) {
  if (H < 1 || P < 4 || P % 4 != 0 || G < 1 || H % G != 0) return false;
  int dev = 0, smem_max = 48 * 1024;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  const int max_threads = std::min(256, std::max(32, tuning.max_threads));
  // The tuning's (NT, RP); then 16 x 1 and 8 x 1 (instantiated for every lanes-per-row count).
  const int tries[3][2] = {{tuning.elems_per_thread, tuning.rows_per_thread}, {16, 1}, {8, 1}};
  for (const auto& tr : tries) {
    ScanPlan pl;
    pl.NT = tr[0], pl.RP = tr[1];
    if (!(pl.NT == 8 || pl.NT == 16) || N < pl.NT || N % pl.NT != 0) continue;
    pl.TPR = N / pl.NT;
    if ((pl.TPR & (pl.TPR - 1)) != 0 || pl.TPR > 32) continue;
    if (pl.RP != 1 && !(pl.NT == kRpNT && pl.TPR == kRpTPR && pl.RP == kRpRP)) continue;
    if (P % (4 * pl.RP) != 0) continue;
    pl.PB = P;  // rows per block: a multiple of 4 * RP dividing P
    while (pl.PB / pl.RP * pl.TPR > max_threads && pl.PB % (8 * pl.RP) == 0) pl.PB /= 2;
    pl.threads = pl.PB / pl.RP * pl.TPR;
    if (pl.threads > 256 || pl.threads % 32 != 0) continue;
    // Tokens per staged chunk: 32, fewer where the double buffer would not fit in shared memory.
    pl.TC = 32;
    while (pl.TC > 4 && scan_smem_bytes(N, pl.PB, pl.TC) > size_t(smem_max)) pl.TC /= 2;
    if (scan_smem_bytes(N, pl.PB, pl.TC) > size_t(smem_max)) continue;
    *out = pl;
    return true;
  }
  return false;
}
}  // namespace

bool ssm_scan_supported(int H, int P, int N, int G, const ScanTuning& tuning) {
  ScanPlan pl;
  return scan_plan(H, P, N, G, tuning, &pl);
}

cudaError_t ssm_scan(void* state, bool f16, const float* xbc, const float* dt_raw, int64_t ld_dt, const float* dt_bias,
                     const float* A, const float* Dskip, float* y, int64_t T, int H, int P, int N, int G, float dt_min,
                     float dt_max, cudaStream_t stream, const ScanTuning& tuning) {
  ScanPlan pl;
  if (T < 0 || !scan_plan(H, P, N, G, tuning, &pl) || !aligned16(xbc) || !aligned16(state)) return cudaErrorInvalidValue;
  const int NT = pl.NT, TPR = pl.TPR, RP = pl.RP, PB = pl.PB, threads = pl.threads, TC = pl.TC;
  if (T == 0) return cudaSuccess;
  ScanParams p;
  p.state = state, p.xbc = xbc, p.dt_raw = dt_raw, p.ld_dt = ld_dt, p.dt_bias = dt_bias, p.A = A, p.Dskip = Dskip;
  p.y = y, p.T = T, p.Dc = int64_t(H) * P + 2 * int64_t(G) * N, p.H = H, p.P = P, p.N = N, p.G = G, p.PB = PB;
  p.TC = TC, p.dt_min = dt_min, p.dt_max = dt_max;
  if (RP > 1)  // (scan_plan allows only the one instantiated multi-row shape)
    return f16 ? launch_scan<kRpNT, kRpTPR, kRpRP, true>(p, threads, stream)
               : launch_scan<kRpNT, kRpTPR, kRpRP, false>(p, threads, stream);
  return NT == 8 ? launch_scan_nt<8>(p, TPR, f16, threads, stream) : launch_scan_nt<16>(p, TPR, f16, threads, stream);
}

cudaError_t rmsnorm_rows(const float* hidden, float* res, const float* w, float* out, int64_t T, int64_t n, float eps,
                         cudaStream_t stream) {
  if (T < 0 || n < 1) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  if (n <= kNormSmemMax)
    rmsnorm_kernel<true><<<unsigned(T), kNormThreads, size_t(n) * 4, stream>>>(hidden, res, w, out, n, eps);
  else
    rmsnorm_kernel<false><<<unsigned(T), kNormThreads, 0, stream>>>(hidden, res, w, out, n, eps);
  return cudaGetLastError();
}

cudaError_t gated_rmsnorm_rows(const float* y, const float* z, int64_t ldz, const float* w, float* out, int64_t T,
                               int64_t n, int G, float eps, cudaStream_t stream) {
  if (T < 0 || n < 1 || G < 1 || n % G != 0 || ldz < n) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  if (n <= kNormSmemMax)
    gated_rmsnorm_kernel<true><<<unsigned(T), kNormThreads, size_t(n) * 4, stream>>>(y, z, ldz, w, out, n, G, eps);
  else
    gated_rmsnorm_kernel<false><<<unsigned(T), kNormThreads, 0, stream>>>(y, z, ldz, w, out, n, G, eps);
  return cudaGetLastError();
}

cudaError_t rmsnorm_quant_rows(const float* hidden, float* res, const float* w, float* out, int64_t T, int64_t n,
                               float eps, const float* b, int8_t* q, int64_t ldq, float* scale, cudaStream_t stream) {
  if (T < 0 || n < 1 || ldq < n || ldq % 16 != 0 || !aligned16(q)) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  if (n > kNormSmemMax) {  // the row does not fit in shared memory: the two kernels
    const cudaError_t e = rmsnorm_rows(hidden, res, w, out, T, n, eps, stream);
    return e != cudaSuccess ? e : quantize_act_i8(out, n, b, T, n, q, ldq, scale, stream);
  }
  const int vec = n % 4 == 0 && aligned16(w) && (!b || aligned16(b)) && aligned16(out);
  NormQuantParams p{hidden, res, nullptr, nullptr, 0, 1, w, out, n, eps, b, q, ldq, scale, vec};
  norm_quant_kernel<false><<<unsigned(T), kNormThreads, size_t(n) * 4, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t gated_rmsnorm_quant_rows(const float* y, const float* z, int64_t ldz, const float* w, float* out, int64_t T,
                                     int64_t n, int G, float eps, const float* b, int8_t* q, int64_t ldq, float* scale,
                                     cudaStream_t stream) {
  if (T < 0 || n < 1 || G < 1 || n % G != 0 || ldz < n || ldq < n || ldq % 16 != 0 || !aligned16(q))
    return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  if (n > kNormSmemMax || G > kNqMaxGroups) {
    const cudaError_t e = gated_rmsnorm_rows(y, z, ldz, w, out, T, n, G, eps, stream);
    return e != cudaSuccess ? e : quantize_act_i8(out, n, b, T, n, q, ldq, scale, stream);
  }
  const int vec = (n / G) % 4 == 0 && aligned16(w) && (!b || aligned16(b)) && aligned16(out);
  NormQuantParams p{nullptr, nullptr, y, z, ldz, G, w, out, n, eps, b, q, ldq, scale, vec};
  norm_quant_kernel<true><<<unsigned(T), kNormThreads, size_t(n) * 4, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace dfssm::kernels::cuda
