// RMSNorm and gated RMSNorm for training, forward and backward (norm_train.h has the math).
//
// Memory layout: y (R, D) fp32; z (R, D) at row stride ldz, fp32 or bf16 (read in place from
// in_proj's output); w (D) fp32; out/dout (R, D) in O (fp32 or bf16); dy (R, D) fp32; dz (R, D)
// in z's dtype; rstd (R, D/gs); partial (ceil(R/kRows), D) fp32.
//
// One block per (kRows rows, group). Thread t owns the group's column quads t, t + blockDim,
// ... (J of them, 16-byte loads and stores), so a row is one pass over registers:
//   forward:  x = y·silu(z) (or y), one block sum of x², out = x·rstd·w;
//   backward: n = x·rstd, one block sum of dout·w·n, dx = rstd·(dout·w − n·mean), dy = dx·silu(z)
//             (or dx), dz = dx·y·silu'(z); dw's column sums over the block's rows stay in
//             registers and leave as one row of `partial` (summed by the caller: deterministic).
// The residual add (ADD, plain norm only) rides along: the forward reads the stream and the block
// output (in z's slot) and also stores their sum; the backward reads the stream's gradient from
// the next layer (in z's slot, fp32), adds it to dx and stores the sum in fp32 and, for the block
// output's gradient, in z's dtype: the add, its backward's cast and autograd's accumulation of
// the two paths were three more passes over (R, D) fp32 per layer.
// Why this shape: at batch x length = 32k rows the norms are bandwidth work, but the previous
// kernel (one row after another, each with a global round trip, three barriers and a re-read of
// y and z) issued 0.14 warps per cycle and reached 18% of the DRAM bandwidth (ncu, H200). Here
// a row's loads overlap other work, either the previous row's reduction in the same block (a
// register prefetch) or another block's (two blocks per SM, the default: see prefetch()), and
// the block sum takes one barrier (two scratch buffers alternating by row).
#ifndef DFSSM_CUDA_EMULATE
#include <cuda_bf16.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/norm_train.h"
#include "kernels/cuda/train_common.cuh"

namespace dfssm::kernels {
namespace {

using namespace train;  // sigmoid

constexpr int kRows = 16;         // rows per block; the backward writes one dw row per block
constexpr int kMaxThreads = 512;  // a row of up to 2048 quads is 512 threads x J <= 4

struct NormArgs {
  const void* y = nullptr;  // fp32 (the forward may read bf16: norm_fwd_kernel's Y)
  const void* z = nullptr;
  int64_t ldz = 0;
  const float* w = nullptr;
  void* out = nullptr;  // forward
  float* res_out = nullptr;  // forward with ADD: y + z
  float* rstd = nullptr;
  const float* rstd_in = nullptr;  // backward
  const void* dout = nullptr;
  float* dy = nullptr;
  void* dz = nullptr;
  int64_t lddz = 0;  // dz's row stride (gated backward; 0: D)
  float* partial = nullptr;
  int64_t R = 0;
  int D = 0, gs = 0;
  float eps = 0.f;
};

// The block's sum of v, returned to every thread, with one barrier: red[parity] alternates
// between consecutive rows. A thread writes red[p] again only after the next row's barrier,
// which every reader of red[p] reaches only after reading it.
__device__ __forceinline__ float block_sum(float v, float (*red)[32], int parity) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) red[parity][threadIdx.x / 32] = v;
  __syncthreads();
  float t = 0.f;
  const int nw = int(blockDim.x) / 32;
  for (int i = 0; i < nw; ++i) t += red[parity][i];  // the same order in every thread
  return t;
}

// One row's operands in registers: quad j of this thread at column g0 + 4·q_j (zeros past gs).
template <int J>
struct Row {
  float y[J][4], z[J][4], d[J][4];
  float rs;
};

// ADD: z holds the block output (forward, in E) or the stream's gradient (backward, fp32), rows D apart.
template <bool GATED, bool BWD, typename E, typename O, int J, typename Y = float, bool ADD = false>
__device__ __forceinline__ void load_row(const NormArgs& a, int64_t r, int g0, Row<J>& x) {
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int q = int(threadIdx.x) + j * int(blockDim.x);
    if (4 * q < a.gs) {
      const int64_t c = g0 + 4 * q;
      ld4(static_cast<const Y*>(a.y) + r * a.D + c, x.y[j]);
      if (GATED) ld4(static_cast<const E*>(a.z) + r * a.ldz + c, x.z[j]);
      if (ADD && !BWD) ld4(static_cast<const E*>(a.z) + r * a.D + c, x.z[j]);
      if (ADD && BWD) ld4(static_cast<const float*>(a.z) + r * a.D + c, x.z[j]);
      if (BWD) ld4(static_cast<const O*>(a.dout) + r * a.D + c, x.d[j]);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) x.y[j][i] = x.z[j][i] = x.d[j][i] = 0.f;
    }
  }
  if (BWD) x.rs = a.rstd_in[r * (a.D / a.gs) + blockIdx.y];
}

template <int J>
__device__ __forceinline__ void load_w(const NormArgs& a, int g0, float (&w)[J][4]) {
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int q = int(threadIdx.x) + j * int(blockDim.x);
    if (4 * q < a.gs) {
      ld4(a.w + g0 + 4 * q, w[j]);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) w[j][i] = 0.f;
    }
  }
}

// block_sum for the two rows of a pair, with one barrier: the same shuffles and the same order
// of the warps' partial sums, so each sum equals block_sum's bit for bit.
__device__ __forceinline__ float2 block_sum2(float u, float v, float2 (*red)[32], int parity) {
  for (int o = 16; o > 0; o >>= 1)
    u += __shfl_xor_sync(0xffffffffu, u, o), v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) red[parity][threadIdx.x / 32] = make_float2(u, v);
  __syncthreads();
  float2 t = make_float2(0.f, 0.f);
  const int nw = int(blockDim.x) / 32;
  for (int i = 0; i < nw; ++i) t.x += red[parity][i].x, t.y += red[parity][i].y;
  return t;
}

// x = y·silu(z) (GATED), y + z (ADD) or y, in place of the row's y, and this thread's part of the
// sum of x²; with ADD, the new residual stream stored.
template <bool GATED, bool ADD, int J>
__device__ __forceinline__ float fwd_prep(const NormArgs& a, Row<J>& cur, int64_t r, int g0) {
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float x = GATED ? cur.y[j][i] * cur.z[j][i] * sigmoid(cur.z[j][i])
                      : ADD ? cur.y[j][i] + cur.z[j][i]
                            : cur.y[j][i];
      cur.y[j][i] = x;
      ss += x * x;
    }
  if (ADD) {  // the new residual stream
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int q = int(threadIdx.x) + j * int(blockDim.x);
      if (4 * q < a.gs) st4(a.res_out + r * a.D + g0 + 4 * q, cur.y[j]);
    }
  }
  return ss;
}
// out = x·rstd·w and rstd, from the block's sum of x².
template <typename O, int J>
__device__ __forceinline__ void fwd_finish(const NormArgs& a, const Row<J>& cur, int64_t r, int g0, float sum,
                                           const float (&w)[J][4]) {
  const float rs = rsqrtf(sum / float(a.gs) + a.eps);
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int q = int(threadIdx.x) + j * int(blockDim.x);
    if (4 * q < a.gs) {
      float o[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) o[i] = cur.y[j][i] * rs * w[j][i];
      st4(static_cast<O*>(a.out) + r * a.D + g0 + 4 * q, o);
    }
  }
  if (threadIdx.x == 0) a.rstd[r * (a.D / a.gs) + blockIdx.y] = rs;
}

// PAIR (without PF): two rows per step, both rows' loads issued before either is reduced, and
// their sums in one barrier: twice the bytes in flight per thread (at two blocks per SM one row
// each left the gated norm at ~2-2.8 TB/s on the H200, about half of what the loads need to
// cover the memory latency), half the barriers. The same arithmetic per row as one at a time.
template <bool GATED, typename E, typename O, int J, bool PF, typename Y = float, bool ADD = false, bool PAIR = false>
__global__ void __launch_bounds__(kMaxThreads, PF ? 1 : 2) norm_fwd_kernel(NormArgs a) {
  __shared__ float red[2][32];
  __shared__ float2 red2[PAIR ? 2 : 1][32];
  const int g0 = int(blockIdx.y) * a.gs;
  const int64_t r0 = int64_t(blockIdx.x) * kRows, r1 = r0 + kRows < a.R ? r0 + kRows : a.R;
  float w[J][4];
  load_w(a, g0, w);
  auto prep = [&](Row<J>& cur, int64_t r) { return fwd_prep<GATED, ADD>(a, cur, r, g0); };
  auto finish = [&](const Row<J>& cur, int64_t r, float sum) { fwd_finish<O>(a, cur, r, g0, sum, w); };
  Row<J> cur, nxt;
  if (PAIR && !PF) {
    for (int64_t r = r0; r < r1; r += 2) {
      // An odd last row pairs with itself (loaded twice, stored once).
      const bool two = r + 1 < r1;  // (uniform)
      const int64_t r2 = two ? r + 1 : r;
      load_row<GATED, false, E, O, J, Y, ADD>(a, r, g0, cur);
      load_row<GATED, false, E, O, J, Y, ADD>(a, r2, g0, nxt);
      const float s0 = prep(cur, r), s1 = prep(nxt, r2);
      const float2 sum = block_sum2(s0, s1, red2, int((r >> 1) & 1));
      finish(cur, r, sum.x);
      if (two) finish(nxt, r + 1, sum.y);
    }
    return;
  }
  if (PF) load_row<GATED, false, E, O, J, Y, ADD>(a, r0, g0, cur);
  for (int64_t r = r0; r < r1; ++r) {
    if (!PF) load_row<GATED, false, E, O, J, Y, ADD>(a, r, g0, cur);
    if (PF && r + 1 < r1) load_row<GATED, false, E, O, J, Y, ADD>(a, r + 1, g0, nxt);  // in flight during this row
    const float ss = prep(cur, r);
    finish(cur, r, block_sum(ss, red, int(r & 1)));
    if (PF && r + 1 < r1) cur = nxt;
  }
}

// One row of the backward from its operands in registers (cur.rs: its rstd): n = x·rstd,
// dn = dout·w, one block sum of dn·n (red[parity]), dx = rstd·(dn − n·mean), dy = dx·silu(z) (or
// dx, plus the stream's gradient with ADD), dz = dx·y·silu'(z); dw's column sums into gw.
// mid() runs between this thread's last use of cur's loads and the block sum (the pipeline issues
// its next copy there).
template <bool GATED, bool ADD, typename E, int J, class Mid>
__device__ __forceinline__ void bwd_row(const NormArgs& a, const Row<J>& cur, int64_t r, int g0, const float (&w)[J][4],
                                        float (&gw)[J][4], float (*red)[32], int parity, Mid mid) {
  // ---- n = x·rstd, dn = dout·w, and this thread's part of sum(dn·n) ----
  float n[J][4], dn[J][4];
  float dot = 0.f;
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float zi = cur.z[j][i];
      const float x = GATED ? cur.y[j][i] * zi * sigmoid(zi) : cur.y[j][i];
      n[j][i] = x * cur.rs;
      dn[j][i] = cur.d[j][i] * w[j][i];
      dot += dn[j][i] * n[j][i];
      gw[j][i] += cur.d[j][i] * n[j][i];
    }
  mid();
  const float mean_dot = block_sum(dot, red, parity) / float(a.gs);
  // ---- dx, then through the gate ----
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int q = int(threadIdx.x) + j * int(blockDim.x);
    if (4 * q < a.gs) {
      float dy[4], dz[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float dx = cur.rs * (dn[j][i] - n[j][i] * mean_dot);
        if (GATED) {
          const float zi = cur.z[j][i], s = sigmoid(zi);
          dy[i] = dx * zi * s;
          dz[i] = dx * cur.y[j][i] * s * (1.f + zi * (1.f - s));
        } else {
          dy[i] = ADD ? dx + cur.z[j][i] : dx;  // plus the stream's gradient from the next layer
        }
      }
      const int64_t off = r * a.D + g0 + 4 * q;
      st4(a.dy + off, dy);
      if (GATED) st4(static_cast<E*>(a.dz) + r * a.lddz + g0 + 4 * q, dz);
      if (ADD && a.dz) st4(static_cast<E*>(a.dz) + off, dy);  // the block output's gradient, in its dtype
    }
  }
}

// ---- The gated forward as a cp.async row pipeline (DFSSM_NORM_FWD_PIPE=1; opt-in until timed) ----
// Why: above, a row's loads land in registers, and at two 512-thread blocks per SM with 64
// registers each the loads in flight are capped by the register file; they are in flight only
// between a row's issue and its use (the row pairs measured ~2.2 TB/s on the H200, about half the
// bandwidth). Here each thread copies its own quads of the next kPipe rows into shared memory by
// cp.async (8 bytes per bf16 quad, 16 per fp32 quad) while it reduces the current row, so kPipe
// rows per block are always in flight and no barrier guards the stages (a thread reads back only
// what it copied). A fixed grid of two blocks per SM walks the rows (row blockIdx.x + i·gridDim.x)
// so that the pipeline fills once per block. Thread t owns quads t + j·blockDim as in
// norm_fwd_kernel, and the arithmetic is the same fwd_prep / fwd_finish: the output equals it bit
// for bit. z in bf16 (in_proj's output); y in fp32 or bf16; J <= 2.
// Shared memory per block: kPipe stages x J x blockDim quads of y, then of z (64 KB at D = 4096
// with bf16 y, 96 KB with fp32 y).
constexpr int kPipe = 4;

template <typename T>
__device__ __forceinline__ void cp_async_quad(T* s, const T* g) {
#ifndef DFSSM_CUDA_EMULATE
  const unsigned sa = unsigned(__cvta_generic_to_shared(s));
  if constexpr (sizeof(T) == 2)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(sa), "l"(g));
  else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sa), "l"(g));
#else
  std::memcpy(s, g, 4 * sizeof(T));  // the emulator: a synchronous copy
#endif
}
__device__ __forceinline__ void cp_async_commit_group() {
#ifndef DFSSM_CUDA_EMULATE
  asm volatile("cp.async.commit_group;");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
#ifndef DFSSM_CUDA_EMULATE
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
#endif
}
template <typename Y>
__host__ __device__ constexpr int pipe_stage_bytes(int J, int threads) {
  return J * threads * 4 * int(sizeof(Y) + sizeof(__nv_bfloat16));
}
constexpr int kPipeMaxBytes = kPipe * 2 * kMaxThreads * 4 * (4 + 2);  // J = 2, fp32 y

template <typename O, int J, typename Y>
__global__ void __launch_bounds__(kMaxThreads, 2) gated_norm_fwd_pipe_kernel(NormArgs a) {
#ifndef DFSSM_CUDA_EMULATE
  extern __shared__ __align__(16) unsigned char pipe_smem[];
#else
  static unsigned char pipe_smem[kPipeMaxBytes];
#endif
  __shared__ float red[2][32];
  using E = __nv_bfloat16;
  const int t = int(threadIdx.x), nthr = int(blockDim.x), g0 = int(blockIdx.y) * a.gs;
  const int stage_bytes = pipe_stage_bytes<Y>(J, nthr);
  const int64_t first = blockIdx.x, step = gridDim.x;
  float w[J][4];
  load_w(a, g0, w);
  // Row r's quads of this thread into stage s (one commit group per row, issued or not, so
  // that the wait below always counts kPipe - 1 younger groups).
  auto issue = [&](int64_t r, int s) {
    if (r < a.R) {
      Y* ys = reinterpret_cast<Y*>(pipe_smem + s * stage_bytes);
      E* zs = reinterpret_cast<E*>(pipe_smem + s * stage_bytes + J * nthr * 4 * int(sizeof(Y)));
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int q = t + j * nthr;
        if (4 * q >= a.gs) continue;
        cp_async_quad(ys + 4 * (j * nthr + t), static_cast<const Y*>(a.y) + r * a.D + g0 + 4 * q);
        cp_async_quad(zs + 4 * (j * nthr + t), static_cast<const E*>(a.z) + r * a.ldz + g0 + 4 * q);
      }
    }
    cp_async_commit_group();
  };
#pragma unroll
  for (int s = 0; s < kPipe; ++s) issue(first + s * step, s);
  for (int64_t i = 0;; ++i) {
    const int64_t r = first + i * step;
    if (r >= a.R) break;
    const int s = int(i % kPipe);
    cp_async_wait_group<kPipe - 1>();  // row r's group landed (this thread's own copies)
    const Y* ys = reinterpret_cast<const Y*>(pipe_smem + s * stage_bytes);
    const E* zs = reinterpret_cast<const E*>(pipe_smem + s * stage_bytes + J * nthr * 4 * int(sizeof(Y)));
    Row<J> cur;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      if (4 * (t + j * nthr) < a.gs) {
        ld4(ys + 4 * (j * nthr + t), cur.y[j]);
        ld4(zs + 4 * (j * nthr + t), cur.z[j]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) cur.y[j][e] = cur.z[j][e] = 0.f;
      }
    }
    const float ss = fwd_prep<true, false>(a, cur, r, g0);
    issue(r + kPipe * step, s);  // the stage's values are in registers (and used above)
    fwd_finish<O>(a, cur, r, g0, block_sum(ss, red, int(i & 1)), w);
  }
  cp_async_wait_group<0>();
}

// The gated backward as the same kind of pipeline (DFSSM_NORM_BWD_PIPE=1; opt-in until timed):
// each thread's quads of y, z and dout for the next kPipeB rows land in shared memory by
// cp.async; rstd is loaded one row ahead into a register. The arithmetic per row is
// norm_bwd_kernel's bwd_row (dy and dz bit for bit); dw's column sums run over the
// block's rows (a stride of gridDim.x apart), so partial's rows are the blocks' (the rest up to
// norm_bwd_partial_size zeroed) and dw differs from the row-block kernel's in the last bits.
// z, dout in bf16; y in fp32 or bf16. Shared memory: kPipeB(Y) stages x J x blockDim quads of
// y, z, dout (96 KB at D = 4096: 4 stages with bf16 y, 3 with fp32 y).
template <typename Y>
__host__ __device__ constexpr int pipe_b_depth() {
  return sizeof(Y) == 2 ? 4 : 3;
}
template <typename Y>
__host__ __device__ constexpr int pipe_b_stage_bytes(int J, int threads) {
  return J * threads * 4 * int(sizeof(Y) + 2 * sizeof(__nv_bfloat16));
}
constexpr int kPipeBMaxBytes = 3 * 2 * kMaxThreads * 4 * (4 + 2 + 2);  // J = 2, fp32 y

template <int J, typename Y>
__global__ void __launch_bounds__(kMaxThreads, 2) gated_norm_bwd_pipe_kernel(NormArgs a, int64_t partial_rows) {
#ifndef DFSSM_CUDA_EMULATE
  extern __shared__ __align__(16) unsigned char pipe_smem[];
#else
  static unsigned char pipe_smem[kPipeBMaxBytes];
#endif
  constexpr int S = pipe_b_depth<Y>();
  __shared__ float red[2][32];
  using E = __nv_bfloat16;
  const int t = int(threadIdx.x), nthr = int(blockDim.x), g0 = int(blockIdx.y) * a.gs, groups = a.D / a.gs;
  const int stage_bytes = pipe_b_stage_bytes<Y>(J, nthr);
  const int zoff = J * nthr * 4 * int(sizeof(Y)), doff = zoff + J * nthr * 4 * int(sizeof(E));
  const int64_t first = blockIdx.x, step = gridDim.x;
  float w[J][4], gw[J][4];
  load_w(a, g0, w);
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) gw[j][e] = 0.f;
  auto issue = [&](int64_t r, int s) {
    if (r < a.R) {
      unsigned char* base = pipe_smem + s * stage_bytes;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int q = t + j * nthr, k = 4 * (j * nthr + t);
        if (4 * q >= a.gs) continue;
        cp_async_quad(reinterpret_cast<Y*>(base) + k, static_cast<const Y*>(a.y) + r * a.D + g0 + 4 * q);
        cp_async_quad(reinterpret_cast<E*>(base + zoff) + k, static_cast<const E*>(a.z) + r * a.ldz + g0 + 4 * q);
        cp_async_quad(reinterpret_cast<E*>(base + doff) + k, static_cast<const E*>(a.dout) + r * a.D + g0 + 4 * q);
      }
    }
    cp_async_commit_group();
  };
#pragma unroll
  for (int s = 0; s < S; ++s) issue(first + s * step, s);
  float rs_next = first < a.R ? a.rstd_in[first * groups + blockIdx.y] : 0.f;
  for (int64_t i = 0;; ++i) {
    const int64_t r = first + i * step;
    if (r >= a.R) break;
    const int s = int(i % S);
    Row<J> cur;
    cur.rs = rs_next;
    if (r + step < a.R) rs_next = a.rstd_in[(r + step) * groups + blockIdx.y];  // in flight during this row
    cp_async_wait_group<S - 1>();
    const unsigned char* base = pipe_smem + s * stage_bytes;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int k = 4 * (j * nthr + t);
      if (4 * (t + j * nthr) < a.gs) {
        ld4(reinterpret_cast<const Y*>(base) + k, cur.y[j]);
        ld4(reinterpret_cast<const E*>(base + zoff) + k, cur.z[j]);
        ld4(reinterpret_cast<const E*>(base + doff) + k, cur.d[j]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) cur.y[j][e] = cur.z[j][e] = cur.d[j][e] = 0.f;
      }
    }
    bwd_row<true, false, E>(a, cur, r, g0, w, gw, red, int(i & 1), [&] { issue(r + S * step, s); });
  }
  cp_async_wait_group<0>();
  // This block's dw row, and zeros in the rows no block writes (the caller sums them all).
  for (int64_t pr = blockIdx.x; pr < partial_rows; pr += step)
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int q = t + j * nthr;
      if (4 * q >= a.gs) continue;
      float v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = pr == int64_t(blockIdx.x) ? gw[j][e] : 0.f;
      st4(a.partial + pr * a.D + g0 + 4 * q, v);
    }
}

template <bool GATED, typename E, typename O, int J, bool PF, bool ADD = false, typename Y = float>
__global__ void __launch_bounds__(kMaxThreads, PF ? 1 : 2) norm_bwd_kernel(NormArgs a) {
  __shared__ float red[2][32];
  const int g0 = int(blockIdx.y) * a.gs;
  const int64_t r0 = int64_t(blockIdx.x) * kRows, r1 = r0 + kRows < a.R ? r0 + kRows : a.R;
  float w[J][4], gw[J][4];
  load_w(a, g0, w);
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) gw[j][i] = 0.f;
  Row<J> cur, nxt;
  if (PF) load_row<GATED, true, E, O, J, Y, ADD>(a, r0, g0, cur);
  for (int64_t r = r0; r < r1; ++r) {
    if (!PF) load_row<GATED, true, E, O, J, Y, ADD>(a, r, g0, cur);
    if (PF && r + 1 < r1) load_row<GATED, true, E, O, J, Y, ADD>(a, r + 1, g0, nxt);  // in flight during this row
    bwd_row<GATED, ADD, E>(a, cur, r, g0, w, gw, red, int(r & 1), [] {});
    if (PF && r + 1 < r1) cur = nxt;
  }
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int q = int(threadIdx.x) + j * int(blockDim.x);
    if (4 * q < a.gs) st4(a.partial + int64_t(blockIdx.x) * a.D + g0 + 4 * q, gw[j]);
  }
}

// ---- launch --------------------------------------------------------------------------------------
using Kernel = void (*)(NormArgs);

void launch(Kernel k, dim3 grid, int threads, cudaStream_t stream, const NormArgs& a) {
#ifndef DFSSM_CUDA_EMULATE
  k<<<grid, threads, 0, stream>>>(a);
#else
  (void)stream;
  ::dfssm::emu::launch(grid, dim3(unsigned(threads)), [&] { k(a); });
#endif
}

// A launch-time switch: read from `env` at the first launch (its default unless the variable says
// otherwise: "1" turns an off switch on, "0" an on switch off), or set by set_*() (-1: re-read).
struct LaunchSwitch {
  const char* env;
  bool def;
  int mode = -1;  // -1: not read yet, 0 off, 1 on
  bool on() {
    if (mode < 0) {
      const char* e = std::getenv(env);
      mode = e ? (def ? e[0] != '0' : e[0] == '1') : def;
    }
    return mode == 1;
  }
};

// Two ways to hide a row's load latency: prefetch = the next row's loads in registers while
// this row is reduced; without it, registers are capped for two blocks per SM, so one block's
// loads overlap the other's reduction. Measured on the H200 at 16 x 2048 rows (docs/benchmarks.md):
// with J = 2 (the 1.3B gated norm, 512 threads) two blocks win by far (forward 0.38 vs 0.64 ms,
// forward + backward 1.11 vs 1.63); the plain norm over 2048 (J = 1) was 5% faster with the
// prefetch in the kernel benchmark (0.381 vs 0.399 ms), but the 1.3B distillation step was
// fastest with it off everywhere (16.6k tokens/s; 16.3k with it on for the plain norm only, in
// another call). So the default is off; DFSSM_NORM_PREFETCH=1 (debug switch, read at the first
// launch) or set_norm_prefetch(1) turns it on.
LaunchSwitch g_prefetch{"DFSSM_NORM_PREFETCH", false};
bool prefetch() { return g_prefetch.on(); }

// The forward's row pairs (norm_fwd_kernel's PAIR) where the prefetch is off: on unless
// DFSSM_NORM_FWD_PAIRS=0 (A/B switch) or set_norm_fwd_pairs(0).
LaunchSwitch g_pairs{"DFSSM_NORM_FWD_PAIRS", true};
bool pairs() { return g_pairs.on(); }

// The gated forward's row pipeline (gated_norm_fwd_pipe_kernel). On by default since the H200 A/B of 2026-12-05 (docs/benchmarks.md: the 1.3B step 26,535 -> 26,939
// tokens/s with both pipelines; bit-identical output); DFSSM_NORM_FWD_PIPE=0 or set_norm_fwd_pipe(0) turns it off.
LaunchSwitch g_pipe{"DFSSM_NORM_FWD_PIPE", true};

// The current device's SM count (the pipelines' grids: two blocks per SM); 2 under the emulator.
int sm_count() {
  static int sms = 0;
#ifndef DFSSM_CUDA_EMULATE
  if (sms == 0) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      sms = 1;  // a launch error follows anyway
  }
#else
  sms = 2;
#endif
  return sms;
}

// A pipeline kernel's launch: two blocks per SM, at most `max_blocks` per group of columns, with
// `smem` bytes of dynamic shared memory.
template <class... Args>
cudaError_t launch_pipe(void (*k)(Args...), const NormArgs& a, int64_t max_blocks, int threads, int smem,
                        cudaStream_t stream, Args... args) {
  const int64_t groups = a.D / a.gs, want = std::max<int64_t>(1, 2 * sm_count() / groups);
  const dim3 grid(unsigned(std::min<int64_t>(max_blocks, want)), unsigned(groups));
#ifndef DFSSM_CUDA_EMULATE
  if (const auto e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem); e != cudaSuccess)
    return e;
  k<<<grid, threads, smem, stream>>>(args...);
#else
  (void)smem, (void)stream;
  ::dfssm::emu::launch(grid, dim3(unsigned(threads)), [&] { k(args...); });
#endif
  return cudaGetLastError();
}

template <typename O, typename Y>
cudaError_t run_pipe(const NormArgs& a, int J, int threads, cudaStream_t stream) {
  Kernel k = J == 1 ? gated_norm_fwd_pipe_kernel<O, 1, Y> : gated_norm_fwd_pipe_kernel<O, 2, Y>;
  return launch_pipe(k, a, a.R, threads, kPipe * pipe_stage_bytes<Y>(J, threads), stream, a);
}

// The gated backward's pipeline (gated_norm_bwd_pipe_kernel): on by default (the same A/B);
// DFSSM_NORM_BWD_PIPE=0 or set_norm_bwd_pipe(0) turns it off.
LaunchSwitch g_pipe_b{"DFSSM_NORM_BWD_PIPE", true};

template <typename Y>
cudaError_t run_pipe_bwd(const NormArgs& a, int J, int threads, cudaStream_t stream) {
  // At most one block per row of partial (each writes its own row there).
  const int64_t partial_rows = norm_bwd_partial_size(a.R, a.D) / a.D;
  void (*k)(NormArgs, int64_t) = J == 1 ? gated_norm_bwd_pipe_kernel<1, Y> : gated_norm_bwd_pipe_kernel<2, Y>;
  return launch_pipe(k, a, partial_rows, threads, pipe_b_depth<Y>() * pipe_b_stage_bytes<Y>(J, threads), stream, a,
                     partial_rows);
}

// J quads per thread: the fewest that keep a block within kMaxThreads.
template <bool BWD, bool GATED, typename E, typename O, typename Y = float, bool ADD = false>
cudaError_t run(const NormArgs& a, cudaStream_t stream) {
  const int Q = a.gs / 4, J = Q <= kMaxThreads ? 1 : Q <= 2 * kMaxThreads ? 2 : 4;
  const int threads = ((Q + J - 1) / J + 31) / 32 * 32;
  const dim3 grid(unsigned((a.R + kRows - 1) / kRows), unsigned(a.D / a.gs));
  if constexpr (!BWD && GATED && !ADD && std::is_same_v<E, __nv_bfloat16>)
    if (J <= 2 && g_pipe.on()) return run_pipe<O, Y>(a, J, threads, stream);
  if constexpr (BWD && GATED && !ADD && std::is_same_v<E, __nv_bfloat16> && std::is_same_v<O, __nv_bfloat16>)
    if (J <= 2 && g_pipe_b.on()) return run_pipe_bwd<Y>(a, J, threads, stream);
  Kernel k = nullptr;
  if (prefetch()) {
    if (J == 1) k = BWD ? norm_bwd_kernel<GATED, E, O, 1, true, ADD, Y> : norm_fwd_kernel<GATED, E, O, 1, true, Y, ADD>;
    if (J == 2) k = BWD ? norm_bwd_kernel<GATED, E, O, 2, true, ADD, Y> : norm_fwd_kernel<GATED, E, O, 2, true, Y, ADD>;
    if (J == 4) k = BWD ? norm_bwd_kernel<GATED, E, O, 4, true, ADD, Y> : norm_fwd_kernel<GATED, E, O, 4, true, Y, ADD>;
  } else if (!BWD && pairs()) {
    if (J == 1) k = norm_fwd_kernel<GATED, E, O, 1, false, Y, ADD, true>;
    if (J == 2) k = norm_fwd_kernel<GATED, E, O, 2, false, Y, ADD, true>;
    if (J == 4) k = norm_fwd_kernel<GATED, E, O, 4, false, Y, ADD>;  // two rows of 4 quads spill at 64 registers
  } else {
    if (J == 1) k = BWD ? norm_bwd_kernel<GATED, E, O, 1, false, ADD, Y> : norm_fwd_kernel<GATED, E, O, 1, false, Y, ADD>;
    if (J == 2) k = BWD ? norm_bwd_kernel<GATED, E, O, 2, false, ADD, Y> : norm_fwd_kernel<GATED, E, O, 2, false, Y, ADD>;
    if (J == 4) k = BWD ? norm_bwd_kernel<GATED, E, O, 4, false, ADD, Y> : norm_fwd_kernel<GATED, E, O, 4, false, Y, ADD>;
  }
  launch(k, grid, threads, stream, a);
  return cudaGetLastError();
}

template <bool BWD, bool GATED, typename E>
cudaError_t run_o(const NormArgs& a, NormDtype odt, cudaStream_t stream) {
  return odt == NormDtype::bf16 ? run<BWD, GATED, E, __nv_bfloat16>(a, stream) : run<BWD, GATED, E, float>(a, stream);
}

template <bool BWD, bool GATED>
cudaError_t run_zo(const NormArgs& a, NormDtype zdt, NormDtype odt, cudaStream_t stream) {
  return zdt == NormDtype::bf16 ? run_o<BWD, GATED, __nv_bfloat16>(a, odt, stream)
                                : run_o<BWD, GATED, float>(a, odt, stream);
}

bool aligned(const void* p, NormDtype dt) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (dt == NormDtype::bf16 ? 8 : 16) == 0;
}

bool args_ok(const NormArgs& a, bool gated, NormDtype zdt, NormDtype odt, NormDtype ydt = NormDtype::f32) {
  constexpr auto f = NormDtype::f32;
  return aligned(a.res_out, f) && a.R > 0 && (a.R + kRows - 1) / kRows <= 2147483647LL && a.gs > 0 && a.gs % 4 == 0 &&
         a.gs <= kNormMaxGroup && a.D % a.gs == 0 && a.D / a.gs <= 65535 &&
         (!gated || (a.ldz >= a.D && a.ldz % 4 == 0 && aligned(a.z, zdt) && aligned(a.dz, zdt))) &&
         (!gated || !a.dz || (a.lddz >= a.D && a.lddz % 4 == 0)) && aligned(a.y, ydt) &&
         aligned(a.w, f) && aligned(a.dy, f) && aligned(a.partial, f) && aligned(a.out, odt) && aligned(a.dout, odt);
}

}  // namespace

void set_norm_prefetch(int mode) { g_prefetch.mode = mode == 1 ? 1 : 0; }
void set_norm_fwd_pairs(int mode) { g_pairs.mode = mode == 0 || mode == 1 ? mode : -1; }
void set_norm_fwd_pipe(int mode) { g_pipe.mode = mode == 0 || mode == 1 ? mode : -1; }
void set_norm_bwd_pipe(int mode) { g_pipe_b.mode = mode == 0 || mode == 1 ? mode : -1; }

int64_t norm_bwd_partial_size(int64_t R, int D) { return (R + kRows - 1) / kRows * int64_t(D); }

cudaError_t gated_norm_fwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w, void* out,
                                NormDtype odt, float* rstd, int64_t R, int D, int gs, float eps, cudaStream_t stream) {
  NormArgs a;
  a.y = y, a.z = z, a.ldz = ldz, a.w = w, a.out = out, a.rstd = rstd, a.R = R, a.D = D, a.gs = gs, a.eps = eps;
  if (!args_ok(a, true, zdt, odt)) return cudaErrorInvalidValue;
  return run_zo<false, true>(a, zdt, odt, stream);
}

cudaError_t gated_norm_fwd_bf16y_cuda(const void* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                      void* out, NormDtype odt, float* rstd, int64_t R, int D, int gs, float eps,
                                      cudaStream_t stream) {
  NormArgs a;
  a.y = y, a.z = z, a.ldz = ldz, a.w = w, a.out = out, a.rstd = rstd, a.R = R, a.D = D, a.gs = gs, a.eps = eps;
  if (zdt != NormDtype::bf16 || !args_ok(a, true, zdt, odt, NormDtype::bf16)) return cudaErrorInvalidValue;
  return odt == NormDtype::bf16 ? run<false, true, __nv_bfloat16, __nv_bfloat16, __nv_bfloat16>(a, stream)
                                : run<false, true, __nv_bfloat16, float, __nv_bfloat16>(a, stream);
}

cudaError_t gated_norm_bwd_cuda(const float* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                const float* rstd, const void* dout, NormDtype odt, float* dy, void* dz, float* partial,
                                int64_t R, int D, int gs, cudaStream_t stream, int64_t lddz) {
  NormArgs a;
  a.y = y, a.z = z, a.ldz = ldz, a.w = w, a.rstd_in = rstd, a.dout = dout, a.dy = dy, a.dz = dz, a.partial = partial;
  a.R = R, a.D = D, a.gs = gs, a.lddz = lddz > 0 ? lddz : D;
  if (!args_ok(a, true, zdt, odt)) return cudaErrorInvalidValue;
  return run_zo<true, true>(a, zdt, odt, stream);
}

cudaError_t gated_norm_bwd_bf16y_cuda(const void* y, const void* z, NormDtype zdt, int64_t ldz, const float* w,
                                      const float* rstd, const void* dout, NormDtype odt, float* dy, void* dz,
                                      float* partial, int64_t R, int D, int gs, cudaStream_t stream, int64_t lddz) {
  NormArgs a;
  a.y = y, a.z = z, a.ldz = ldz, a.w = w, a.rstd_in = rstd, a.dout = dout, a.dy = dy, a.dz = dz, a.partial = partial;
  a.R = R, a.D = D, a.gs = gs, a.lddz = lddz > 0 ? lddz : D;
  if (zdt != NormDtype::bf16 || !args_ok(a, true, zdt, odt, NormDtype::bf16)) return cudaErrorInvalidValue;
  return odt == NormDtype::bf16 ? run<true, true, __nv_bfloat16, __nv_bfloat16, __nv_bfloat16>(a, stream)
                                : run<true, true, __nv_bfloat16, float, __nv_bfloat16>(a, stream);
}

cudaError_t rms_norm_fwd_cuda(const float* y, const float* w, void* out, NormDtype odt, float* rstd, int64_t R, int D,
                              float eps, cudaStream_t stream) {
  NormArgs a;
  a.y = y, a.w = w, a.out = out, a.rstd = rstd, a.R = R, a.D = D, a.gs = D, a.eps = eps;
  if (!args_ok(a, false, NormDtype::f32, odt)) return cudaErrorInvalidValue;
  return run_o<false, false, float>(a, odt, stream);
}

cudaError_t rms_norm_bwd_cuda(const float* y, const float* w, const float* rstd, const void* dout, NormDtype odt,
                              float* dy, float* partial, int64_t R, int D, cudaStream_t stream) {
  NormArgs a;
  a.y = y, a.w = w, a.rstd_in = rstd, a.dout = dout, a.dy = dy, a.partial = partial, a.R = R, a.D = D, a.gs = D;
  if (!args_ok(a, false, NormDtype::f32, odt)) return cudaErrorInvalidValue;
  return run_o<true, false, float>(a, odt, stream);
}

namespace {
template <bool BWD, typename O>
cudaError_t run_add(const NormArgs& a, NormDtype hdt, cudaStream_t stream) {
  return hdt == NormDtype::bf16 ? run<BWD, false, __nv_bfloat16, O, float, true>(a, stream)
                                : run<BWD, false, float, O, float, true>(a, stream);
}
}  // namespace

cudaError_t add_rms_norm_fwd_cuda(const float* res, const void* h, NormDtype hdt, float* res_out, const float* w,
                                  void* out, NormDtype odt, float* rstd, int64_t R, int D, float eps,
                                  cudaStream_t stream) {
  NormArgs a;
  a.y = res, a.z = h, a.ldz = D, a.res_out = res_out, a.w = w, a.out = out, a.rstd = rstd, a.R = R, a.D = D, a.gs = D;
  a.eps = eps;
  if (!res || !h || !res_out || !aligned(h, hdt) || !args_ok(a, false, hdt, odt)) return cudaErrorInvalidValue;
  return odt == NormDtype::bf16 ? run_add<false, __nv_bfloat16>(a, hdt, stream) : run_add<false, float>(a, hdt, stream);
}

cudaError_t rms_norm_bwd_add_cuda(const float* y, const float* w, const float* rstd, const void* dout, NormDtype odt,
                                  const float* dres, float* dy, void* dh, NormDtype hdt, float* partial, int64_t R,
                                  int D, cudaStream_t stream) {
  NormArgs a;
  a.y = y, a.w = w, a.rstd_in = rstd, a.dout = dout, a.z = dres, a.dy = dy, a.dz = dh, a.partial = partial;
  a.R = R, a.D = D, a.gs = D;
  if (!dres || !aligned(dres, NormDtype::f32) || !aligned(dh, hdt) || !args_ok(a, false, NormDtype::f32, odt))
    return cudaErrorInvalidValue;
  return odt == NormDtype::bf16 ? run_add<true, __nv_bfloat16>(a, hdt, stream) : run_add<true, float>(a, hdt, stream);
}

}  // namespace dfssm::kernels
