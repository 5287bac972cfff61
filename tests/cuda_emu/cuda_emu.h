// A small CUDA emulator on the CPU, for running kernel *logic* where there is no GPU (the dev
// box and CI). A kernel source is compiled as C++ with DFSSM_CUDA_EMULATE defined after this
// header: every block runs as blockDim real threads (std::thread) with real barriers for
// __syncthreads and __syncwarp, so indexing, masking and synchronisation bugs show up as
// wrong results or hangs. Blocks run one after another, which is what lets `__shared__` map to
// a function-local `static`.
//
// What it covers is what our kernels use: threadIdx / blockIdx / blockDim, __syncthreads,
// __syncwarp, __shfl_up_sync / __shfl_xor_sync, atomicAdd (float), cudaMemsetAsync, float4, float2, expf,
// __expf, rsqrtf, bf16 storage, cp.async (a synchronous copy; commit/wait do nothing),
// mma.sync m16n8k8 TF32 and m16n8k16 bf16 with the hardware's fragment-to-lane mapping
// (emu::mma_tf32_m16n8k8, mma_bf16_m16n8k16: the warp's lanes exchange their fragments), ldmatrix
// (plain and .trans), and nvcuda::wmma's m16n16k8 TF32 fragments. A
// fragment holds its whole tile in every thread (the documented semantics of load / mma /
// store, computed redundantly per lane; lane 0 alone stores); __float_to_tf32 rounds to 10
// mantissa bits (nearest, ties away) as cvt.rna.tf32.f32 does. Timing, occupancy, memory
// ordering between blocks and the hardware's fragment-to-lane mapping are not modelled.
#pragma once

#include <math.h>

#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <algorithm>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "core/dtype.h"  // bf16 rounding

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
using cudaStream_t = void*;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  std::memset(p, v, n);
  return cudaSuccess;
}
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <class F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
  return cudaSuccess;
}

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float4 {
  float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
struct float2 {
  float x, y;
};
inline float2 make_float2(float a, float b) { return {a, b}; }


namespace dfssm::emu {

class Barrier {  // reusable, generation-counted
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lk(mu_);
    const uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0, ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lk, [&] { return gen_ != gen; });
    }
  }

 private:
  const int n_;
  int count_ = 0;
  uint64_t gen_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
};

struct BlockCtx {
  std::unique_ptr<Barrier> block;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<float> shfl;  // one slot per thread for __shfl_up_sync
  std::vector<float> mma;   // 10 slots per thread for mma.sync's fragments (a 4, b 2, c 4)
  std::vector<const void*> rows;  // one slot per thread: ldmatrix's row addresses
};

inline thread_local dim3 tl_thread, tl_block;
inline thread_local BlockCtx* tl_ctx = nullptr;
inline dim3 g_block_dim, g_grid_dim;

// Runs `body` (the kernel call) for every block of `grid`, blockDim.x threads each (1-D blocks,
// a multiple of 32 threads).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  g_block_dim = block, g_grid_dim = grid;
  const int nt = int(block.x);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        BlockCtx ctx;
        ctx.block = std::make_unique<Barrier>(nt);
        for (int w = 0; w < (nt + 31) / 32; ++w) ctx.warps.push_back(std::make_unique<Barrier>(std::min(32, nt - 32 * w)));
        ctx.shfl.assign(size_t(nt), 0.f);
        ctx.mma.assign(size_t(nt) * 10, 0.f);
        ctx.rows.assign(size_t(nt), nullptr);
        std::vector<std::thread> ths;
        for (int t = 0; t < nt; ++t)
          ths.emplace_back([&, t] {
            tl_thread = dim3(unsigned(t)), tl_block = dim3(bx, by, bz), tl_ctx = &ctx;
            body();
          });
        for (auto& th : ths) th.join();
      }
}

}  // namespace dfssm::emu

#define threadIdx (::dfssm::emu::tl_thread)
#define blockIdx (::dfssm::emu::tl_block)
#define blockDim (::dfssm::emu::g_block_dim)
#define gridDim (::dfssm::emu::g_grid_dim)

inline void __syncthreads() { dfssm::emu::tl_ctx->block->wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { dfssm::emu::tl_ctx->warps[threadIdx.x / 32]->wait(); }
namespace dfssm::emu {
// A block's dynamic shared memory starts as NaN: on a GPU it holds whatever the SM's previous
// block left, so a kernel that reads a word it never wrote (even to multiply it by 0) must show
// it here instead of reading the static array's zeros.
inline void poison_shared(float* p, size_t n) {
  if (threadIdx.x == 0) std::fill(p, p + n, std::numeric_limits<float>::quiet_NaN());
  __syncthreads();
}
}  // namespace dfssm::emu
// Blocks run one at a time, but a block's threads race: one lock makes the add atomic.
inline float atomicAdd(float* p, float v) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lk(mu);
  const float old = *p;
  *p = old + v;
  return old;
}
namespace dfssm::emu {
// A warp shuffle: every lane publishes v, then reads lane src(lane)'s value (its own if src < 0).
template <class Src>
float shfl(float v, Src src) {
  auto& c = *tl_ctx;
  const unsigned t = threadIdx.x, lane = t % 32;
  c.shfl[t] = v;
  __syncwarp();
  const int from = src(lane);
  const float r = from < 0 ? v : c.shfl[t - lane + unsigned(from)];
  __syncwarp();
  return r;
}
}  // namespace dfssm::emu
inline float __shfl_xor_sync(unsigned, float v, int mask) {
  return dfssm::emu::shfl(v, [&](unsigned lane) { return int(lane ^ unsigned(mask)); });
}
inline float __shfl_up_sync(unsigned, float v, unsigned delta) {
  return dfssm::emu::shfl(v, [&](unsigned lane) { return lane >= delta ? int(lane - delta) : -1; });
}

namespace dfssm::emu {
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 for the calling lane: every lane publishes
// its fragments, then computes its own accumulators from the whole warp's A (16 x 8) and B
// (8 x 8). Lane = 4g + t holds a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]}, b = {B[t][g],
// B[t+4][g]}, c = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]} (the PTX ISA's layout), so a
// kernel that gets the mapping wrong gets wrong results here too. An operand not rounded to TF32
// first is truncated to it: the hardware reads only the top 19 bits, as we understand it (not yet
// checked on a GPU; test_gpu_train_kernels compares the truncating backward with the rounding one).
inline void mma_tf32_m16n8k8(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& ctx = *tl_ctx;
  const unsigned t = threadIdx.x, lane = t % 32, base = t - lane;
  auto f = [](uint32_t u) {  // truncated to TF32 (round toward zero), as above
    u &= 0xffffe000u;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  };
  float* mine = &ctx.mma[size_t(t) * 10];
  for (int i = 0; i < 4; ++i) mine[i] = f(a[i]);
  mine[4] = f(b[0]), mine[5] = f(b[1]);
  __syncwarp();
  float A[16][8], B[8][8];
  for (unsigned l = 0; l < 32; ++l) {
    const float* o = &ctx.mma[size_t(base + l) * 10];
    const unsigned g = l / 4, q = l % 4;
    A[g][q] = o[0], A[g + 8][q] = o[1], A[g][q + 4] = o[2], A[g + 8][q + 4] = o[3];
    B[q][g] = o[4], B[q + 4][g] = o[5];
  }
  __syncwarp();
  const unsigned g = lane / 4, q = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const unsigned r = g + (i >= 2 ? 8u : 0u), col = 2 * q + unsigned(i % 2);
    float s = c[i];
    for (int k = 0; k < 8; ++k) s += A[r][k] * B[k][col];
    c[i] = s;
  }
}
// ldmatrix.sync.aligned.m8n8.x4.shared.b16 on 32-bit words: lane l publishes the address of row
// l % 8 of matrix l / 8 (8 rows of 4 words), then takes word l % 4 of row l / 4 of each matrix.
inline void ldsm_x4(uint32_t (&r)[4], const float* p) {
  auto& ctx = *tl_ctx;
  const unsigned t = threadIdx.x, lane = t % 32, base = t - lane;
  ctx.rows[t] = p;
  __syncwarp();
  for (unsigned i = 0; i < 4; ++i)
    std::memcpy(&r[i], static_cast<const float*>(ctx.rows[base + 8 * i + lane / 4]) + lane % 4, 4);
  __syncwarp();
}
// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lane l publishes the address of row l % 8 of
// matrix l / 8 (8 rows of 8 b16 elements), then takes, of each matrix, the elements at (row
// 2·(l % 4), column l / 4) in its low half and (row 2·(l % 4) + 1, column l / 4) in its high half.
inline void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  auto& ctx = *tl_ctx;
  const unsigned t = threadIdx.x, lane = t % 32, base = t - lane;
  ctx.rows[t] = p;
  __syncwarp();
  for (unsigned i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    std::memcpy(&lo, static_cast<const uint16_t*>(ctx.rows[base + 8 * i + 2 * (lane % 4)]) + lane / 4, 2);
    std::memcpy(&hi, static_cast<const uint16_t*>(ctx.rows[base + 8 * i + 2 * (lane % 4) + 1]) + lane / 4, 2);
    r[i] = uint32_t(lo) | uint32_t(hi) << 16;
  }
  __syncwarp();
}
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for the calling lane, as mma_tf32_m16n8k8:
// lane 4g + t holds a = {A[g][2t..2t+1], A[g+8][2t..2t+1], A[g][2t+8..2t+9], A[g+8][2t+8..2t+9]}
// and b = {B[2t..2t+1][g], B[2t+8..2t+9][g]} as bf16 pairs (the lower index in the low half),
// c as the TF32 mma's. Products are exact in fp32; the sum runs over k in order.
inline void mma_bf16_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto& ctx = *tl_ctx;
  const unsigned t = threadIdx.x, lane = t % 32, base = t - lane;
  float* mine = &ctx.mma[size_t(t) * 10];
  std::memcpy(mine, a, 16);
  std::memcpy(mine + 4, b, 8);
  __syncwarp();
  float A[16][16], B[16][8];
  auto lo = [](uint32_t u) { return bf16_to_float(uint16_t(u & 0xffffu)); };
  auto hi = [](uint32_t u) { return bf16_to_float(uint16_t(u >> 16)); };
  for (unsigned l = 0; l < 32; ++l) {
    uint32_t o[6];
    std::memcpy(o, &ctx.mma[size_t(base + l) * 10], 24);
    const unsigned g = l / 4, q = l % 4;
    for (unsigned i = 0; i < 4; ++i) {
      const unsigned r = g + (i % 2) * 8, k = 2 * q + (i / 2) * 8;
      A[r][k] = lo(o[i]), A[r][k + 1] = hi(o[i]);
    }
    B[2 * q][g] = lo(o[4]), B[2 * q + 1][g] = hi(o[4]);
    B[2 * q + 8][g] = lo(o[5]), B[2 * q + 9][g] = hi(o[5]);
  }
  __syncwarp();
  const unsigned g = lane / 4, q = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const unsigned r = g + (i >= 2 ? 8u : 0u), col = 2 * q + unsigned(i % 2);
    float s = c[i];
    for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][col];
    c[i] = s;
  }
}
// cp.async of 16 bytes (zeros when !valid): a synchronous copy.
inline void cp_async16(void* smem, const void* gmem, bool valid) {
  if (valid)
    std::memcpy(smem, gmem, 16);
  else
    std::memset(smem, 0, 16);
}
}  // namespace dfssm::emu

// bf16 storage (round to nearest even) and the fast-math intrinsics, for the norm kernels.
struct __nv_bfloat16 {
  uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 v) { return dfssm::bf16_to_float(v.x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return {dfssm::float_to_bf16(f)}; }
inline float __expf(float v) { return std::exp(v); }
inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// Every fragment is its logical tile, row-major: matrix_a M x K, matrix_b K x N, accumulator M x N.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];
};

inline float __float_to_tf32(float f) {
  if (!std::isfinite(f)) return f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x1000u) & 0xffffe000u;  // round the 13 dropped bits to nearest, ties away
  std::memcpy(&f, &u, 4);
  return f;
}

template <class Use, int M, int N, int K, class T, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const float* p, unsigned ld) {
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same_v<Layout, row_major> ? p[size_t(r) * ld + c] : p[size_t(c) * ld + r];
  __syncwarp();  // collective: every lane has read before anyone moves on
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ld, layout_t layout) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) f.x[i * N + j] = layout == mem_row_major ? p[size_t(i) * ld + j] : p[size_t(j) * ld + i];
  __syncwarp();
}

template <int M, int N, int K, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
              const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += a.x[i * K + k] * b.x[k * N + j];
      out[i * N + j] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (auto& e : f.x) e = v;
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld, layout_t layout) {
  __syncwarp();
  if (threadIdx.x % 32 == 0)
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j)
        (layout == mem_row_major ? p[size_t(i) * ld + j] : p[size_t(j) * ld + i]) = f.x[i * N + j];
  __syncwarp();
}
}  // namespace nvcuda::wmma
