// Helpers shared by the fused chunked-SSD kernels (ssd_scan.cu: forward, ssd_scan_bwd.cu:
// backward): the launch macros (real launches, or tests/cuda_emu/cuda_emu.h's CPU emulation),
// TF32 WMMA fragment types, and the shared-memory slab loaders.
#pragma once
#ifndef DFSSM_CUDA_EMULATE
#include <mma.h>
// A kernel launch; tests/cuda_emu/cuda_emu.h (DFSSM_CUDA_EMULATE) runs the same kernels on CPU
// threads, so their logic is tested where there is no GPU. DFSSM_DYN_SMEM declares a kernel's
// dynamic shared memory (a static array of the given size under the emulator).
#define DFSSM_LAUNCH(kernel, grid, stream, ...) kernel<<<grid, kThreads, 0, stream>>>(__VA_ARGS__)
#define DFSSM_LAUNCH_SMEM(kernel, grid, smem, stream, ...) kernel<<<grid, kThreads, smem, stream>>>(__VA_ARGS__)
#define DFSSM_DYN_SMEM(name, floats) extern __shared__ __align__(128) float name[]
#else
#define DFSSM_LAUNCH(kernel, grid, stream, ...) ::dfssm::emu::launch(grid, dim3(kThreads), [&] { kernel(__VA_ARGS__); })
#define DFSSM_LAUNCH_SMEM(kernel, grid, smem, stream, ...) \
  ::dfssm::emu::launch(grid, dim3(kThreads), [&] { kernel(__VA_ARGS__); })
#define DFSSM_DYN_SMEM(name, floats) \
  static float name[floats];                \
  ::dfssm::emu::poison_shared(name, floats)
#endif

#include "kernels/cuda/ssd_scan.h"

namespace dfssm::kernels {
namespace scan_detail {

using namespace nvcuda;
constexpr int kThreads = 256, kWarps = 8, KS = 32, P_ = 64, N_ = 128;
constexpr int LDK = KS + 4;   // shared rows of a K-slab: +4 floats against bank conflicts
constexpr int LDX = P_ + 4;   // shared rows of x
constexpr int LDN = N_ + 4;   // shared rows of B
constexpr int LDE = 16 + 4;   // the epilogue's staging tile

using FragArow = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragAcol = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragBrow = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBcol = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

template <class F, class Ptr>
__device__ __forceinline__ void load_tf32(F& f, Ptr p, unsigned ld) {
  wmma::load_matrix_sync(f, p, ld);
#pragma unroll
  for (int t = 0; t < f.num_elements; ++t) f.x[t] = wmma::__float_to_tf32(f.x[t]);
}

// Raw mma.sync / cp.async for the kernels that manage their own fragment layout (chunk_scan
// version 2): the TF32 m16n8k8 mma (lane 4g + t holds a = {A[g][t], A[g+8][t], A[g][t+4],
// A[g+8][t+4]}, b = {B[t][g], B[t+4][g]}, c = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}),
// the round-to-nearest TF32 conversion, and 16-byte asynchronous copies into shared memory.
#ifndef DFSSM_CUDA_EMULATE
__device__ __forceinline__ uint32_t to_tf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
  return r;
}
__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// 16 bytes global -> shared, bypassing L1; zeros when !valid (gmem must still be a valid address).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}
// ldmatrix.x4 on 32-bit words (b16 pairs): four matrices of 8 rows x 4 words (16 bytes); lane l
// gives the shared address of row l % 8 of matrix l / 8 (16-byte aligned) and receives word l % 4
// of row l / 4 of matrix i in r[i]. One instruction for what takes four scalar loads.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const float* p) {
  const unsigned s = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
// The bf16 operands of ssd_scan_seq.cu's version 3: ldmatrix.x4 on b16 elements, plain (as
// ldsm_x4) or transposed (.trans: lane l receives, of each 8 x 8 matrix, the elements at rows
// 2·(l % 4) and 2·(l % 4) + 1 of column l / 4, the first in the low half: the k-major operands),
// the bf16 m16n8k16 mma (lane 4g + t holds a = {A[g][2t..2t+1], A[g+8][2t..2t+1],
// A[g][2t+8..2t+9], A[g+8][2t+8..2t+9]}, b = {B[2t..2t+1][g], B[2t+8..2t+9][g]}, c as the TF32
// mma's), and two floats packed as bf16 (round to nearest even; a in the low half).
__device__ __forceinline__ void ldsm_x4_b16(uint32_t (&r)[4], const void* p) {
  const unsigned s = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_b16_trans(uint32_t (&r)[4], const void* p) {
  const unsigned s = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));  // the first source goes high
  return r;
}
#else
inline void ldsm_x4_b16(uint32_t (&r)[4], const void* p) { emu::ldsm_x4(r, static_cast<const float*>(p)); }
inline void ldsm_x4_b16_trans(uint32_t (&r)[4], const void* p) { emu::ldsm_x4_trans(r, p); }
inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  emu::mma_bf16_m16n8k16(c, a, b);
}
inline uint32_t pack_bf16(float a, float b) { return uint32_t(float_to_bf16(a)) | uint32_t(float_to_bf16(b)) << 16; }
inline uint32_t to_tf32(float f) {
  const float r = wmma::__float_to_tf32(f);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return u;
}
inline void mma_tf32(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { emu::mma_tf32_m16n8k8(c, a, b); }
inline void cp_async16(void* smem, const void* gmem, bool valid) { emu::cp_async16(smem, gmem, valid); }
inline void ldsm_x4(uint32_t (&r)[4], const float* p) { emu::ldsm_x4(r, p); }
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}
#endif

// f's bits (an operand already rounded to TF32 in shared memory), and f rounded to TF32 as a float.
__device__ __forceinline__ uint32_t bits(float f) {
#ifndef DFSSM_CUDA_EMULATE
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
__device__ __forceinline__ float tf32_bits(float f) {
  const uint32_t u = to_tf32(f);
#ifndef DFSSM_CUDA_EMULATE
  return __uint_as_float(u);
#else
  float r;
  std::memcpy(&r, &u, 4);
  return r;
#endif
}
// The operand as an mma register: rounded here, or (PRE) already rounded where it was staged.
template <bool PRE>
__device__ __forceinline__ uint32_t op_tf32(float f) {
  if constexpr (PRE) return bits(f);
  else return to_tf32(f);
}

// Raw m16n8k8 TF32 operands read from shared memory with plain indexed loads (the layouts at
// mma_tf32; g = lane / 4, t = lane % 4). nvcc emits WMMA fragment loads on generic addresses,
// which ptxas turns into one 64-bit generic load per element with its own address arithmetic
// (chunk_bwd: most of its instructions); these compile to LDS with immediate offsets. PRE: the
// values are already TF32 (rounded once when staged), so the per-element conversion (two SASS
// instructions each) is skipped.
// A (16 x 8) row-major, A[m][k] = p[m * ld + k]:
template <bool PRE = false>
__device__ __forceinline__ void frag_a_rows(uint32_t (&a)[4], const float* p, int ld, int g, int t) {
  a[0] = op_tf32<PRE>(p[g * ld + t]), a[1] = op_tf32<PRE>(p[(g + 8) * ld + t]);
  a[2] = op_tf32<PRE>(p[g * ld + t + 4]), a[3] = op_tf32<PRE>(p[(g + 8) * ld + t + 4]);
}
// A column-major, A[m][k] = p[k * ld + m]:
template <bool PRE = false>
__device__ __forceinline__ void frag_a_cols(uint32_t (&a)[4], const float* p, int ld, int g, int t) {
  a[0] = op_tf32<PRE>(p[t * ld + g]), a[1] = op_tf32<PRE>(p[t * ld + g + 8]);
  a[2] = op_tf32<PRE>(p[(t + 4) * ld + g]), a[3] = op_tf32<PRE>(p[(t + 4) * ld + g + 8]);
}
// B (8 x 8) n-major, B[k][n] = p[n * ld + k]:
template <bool PRE = false>
__device__ __forceinline__ void frag_b_nmajor(uint32_t (&b)[2], const float* p, int ld, int g, int t) {
  b[0] = op_tf32<PRE>(p[g * ld + t]), b[1] = op_tf32<PRE>(p[g * ld + t + 4]);
}
// B k-major, B[k][n] = p[k * ld + n]:
template <bool PRE = false>
__device__ __forceinline__ void frag_b_kmajor(uint32_t (&b)[2], const float* p, int ld, int g, int t) {
  b[0] = op_tf32<PRE>(p[t * ld + g]), b[1] = op_tf32<PRE>(p[(t + 4) * ld + g]);
}

// The same fragments by ldmatrix, from operands already rounded to TF32 (p and ld·4 bytes 16-byte
// aligned; rows ≡ 4 words mod 32 banks apart are conflict-free). lane = threadIdx.x % 32.
// A (16 x 8) row-major as frag_a_rows: matrices (rows 0-7, words 0-3), (8-15, 0-3), (0-7, 4-7),
// (8-15, 4-7) are a[0..3].
__device__ __forceinline__ void frag_a_rows_ldsm(uint32_t (&a)[4], const float* p, int ld, int lane) {
  ldsm_x4(a, p + ((lane & 7) + (lane & 8)) * ld + (lane >> 4) * 4);
}
// Two n-major B tiles, columns n0 + [0, 8) and n0 + [8, 16) (p at row n0): b[j] as frag_b_nmajor
// at p + 8·j·ld; matrices (rows 0-7, words 0-3), (0-7, 4-7), (8-15, 0-3), (8-15, 4-7).
__device__ __forceinline__ void frag_b2_nmajor_ldsm(uint32_t (&b)[2][2], const float* p, int ld, int lane) {
  uint32_t r[4];
  ldsm_x4(r, p + ((lane & 7) + (lane >> 4) * 8) * ld + (lane & 8) / 2);
  b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
// The 4 floats at p (16-byte aligned) rounded to TF32 in place.
__device__ __forceinline__ void round4(float* p) {
  const float4 v = ld4(p);
  *reinterpret_cast<float4*>(p) = make_float4(tf32_bits(v.x), tf32_bits(v.y), tf32_bits(v.z), tf32_bits(v.w));
}
#ifndef DFSSM_CUDA_EMULATE
__device__ __forceinline__ void st2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ float2 ld2(const float* p) { return *reinterpret_cast<const float2*>(p); }
#else
inline void st2(float* p, float a, float b) { p[0] = a, p[1] = b; }
inline float2 ld2(const float* p) { return make_float2(p[0], p[1]); }
#endif
// A 16 x 16 fp32 tile as two m16n8 accumulators (columns 8·hh + [0, 8)), to and from row-major
// memory (row stride ld, an even number of floats; p 8-byte aligned).
__device__ __forceinline__ void store_c_tile(float* p, int ld, const float (&c)[2][4], int g, int t) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    st2(p + g * ld + hh * 8 + 2 * t, c[hh][0], c[hh][1]);
    st2(p + (g + 8) * ld + hh * 8 + 2 * t, c[hh][2], c[hh][3]);
  }
}
__device__ __forceinline__ void load_c_tile(float (&c)[2][4], const float* p, int ld, int g, int t) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const float2 u = ld2(p + g * ld + hh * 8 + 2 * t), v = ld2(p + (g + 8) * ld + hh * 8 + 2 * t);
    c[hh][0] = u.x, c[hh][1] = u.y, c[hh][2] = v.x, c[hh][3] = v.y;
  }
}
__device__ __forceinline__ void st4(float* p, float4 v) { p[0] = v.x, p[1] = v.y, p[2] = v.z, p[3] = v.w; }

struct Ws {  // the workspace's parts
  float *acs, *states, *cb;
};
__device__ inline Ws split_ws(const SsdScanArgs& a) {
  Ws w;
  w.acs = a.workspace;
  w.states = w.acs + a.acs_floats();
  w.cb = w.states + a.states_floats();
  return w;
}

// Rows l0 + [0, ROWS) of a (batch, L, ...) matrix whose rows are `stride` floats apart, COLS
// floats each from `src` (the column offset already applied), into shared memory rows `ld`
// floats apart, each row times scale(r). Rows at or past L read as zeros (the last chunk's
// padding). float4 loads: src and stride are 16-byte aligned (ssd_scan_supported).
template <int ROWS, int COLS, class Scale>
__device__ __forceinline__ void load_rows(float* dst, int ld, const float* src, int64_t stride, int64_t b,
                                          int64_t L, int64_t l0, Scale scale) {
  for (int i = threadIdx.x; i < ROWS * COLS / 4; i += kThreads) {
    const int r = i / (COLS / 4), q = (i % (COLS / 4)) * 4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (l0 + r < L) {
      v = ld4(src + (b * L + l0 + r) * stride + q);
      const float f = scale(r);
      v.x *= f, v.y *= f, v.z *= f, v.w *= f;
    }
    st4(dst + r * ld + q, v);
  }
}
struct Unscaled {
  __device__ float operator()(int) const { return 1.f; }
};

// The same rows held in registers between a load and a later store to shared memory: the
// kernels issue the next K-slab's loads before the current slab's MMAs (software pipelining), so
// that each block keeps its DRAM/L2 round trips in flight while it computes, instead of taking
// one round trip per slab. Rows at or past `valid` read as zeros.
template <int ROWS, int COLS>
struct RowsRegs {
  static constexpr int kQ = COLS / 4, kPer = (ROWS * kQ + kThreads - 1) / kThreads;
  float4 v[kPer];
  __device__ __forceinline__ void load(const float* src, int64_t stride, int64_t valid) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * kThreads, r = i / kQ, q = (i % kQ) * 4;
      v[j] = i < ROWS * kQ && r < valid ? ld4(src + r * stride + q) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  // Rows l0 + [0, ROWS) of a (batch, L, ...) matrix, as load_rows reads them.
  __device__ __forceinline__ void load_seq(const float* src, int64_t stride, int64_t b, int64_t L, int64_t l0) {
    load(src + (b * L + l0) * stride, stride, L - l0);
  }
  template <class Scale>
  __device__ __forceinline__ void store(float* dst, int ld, Scale scale) const {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * kThreads, r = i / kQ, q = (i % kQ) * 4;
      if (i >= ROWS * kQ) continue;
      const float f = scale(r);
      st4(dst + r * ld + q, make_float4(v[j].x * f, v[j].y * f, v[j].z * f, v[j].w * f));
    }
  }
};

// The chunk's outer-product sum out (P x N, row stride N) = Σ_l w_l·u_l ⊗ v_l, where u_l and v_l
// are rows l0 + l of (batch, L, ...) matrices (P and N floats each) and w is in shared memory:
// the forward's chunk states (u = x, v = B, w = decay·dt) and the backward's own state gradient
// (u = dy, v = C, w = exp(acs)). K-slabs of 32 positions; slab s0 + KS is in flight while slab
// s0 is multiplied; the caller issues the first slab's loads (load(0)) before its prologue, so
// that their latency overlaps it. Each warp owns one 16-column block of N, all of P.
template <int T>
struct ChunkOuter {
  const float *usrc, *vsrc;
  int64_t urow, vrow, b, L, l0;
  RowsRegs<KS, P_> ur;
  RowsRegs<KS, N_> vr;

  __device__ __forceinline__ void load(int64_t s0) {
    ur.load_seq(usrc, urow, b, L, l0 + s0);
    vr.load_seq(vsrc, vrow, b, L, l0 + s0);
  }

  __device__ __forceinline__ void run(const float* w, float* out) {
    __shared__ __align__(128) float us[KS * LDX];
    __shared__ __align__(128) float vs[KS * LDN];
    const int warp = threadIdx.x >> 5;
    FragC acc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) wmma::fill_fragment(acc[i], 0.f);
    for (int s0 = 0; s0 < T; s0 += KS) {
      ur.store(us, LDX, [&](int r) { return w[s0 + r]; });
      vr.store(vs, LDN, Unscaled{});
      __syncthreads();
      if (s0 + KS < T) load(s0 + KS);
#pragma unroll
      for (int kk = 0; kk < KS; kk += 8) {
        FragBrow fb;
        load_tf32(fb, vs + kk * LDN + warp * 16, LDN);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          FragAcol fa;  // A(p, l) = us[l][p]
          load_tf32(fa, us + kk * LDX + i * 16, LDX);
          wmma::mma_sync(acc[i], fa, fb, acc[i]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) wmma::store_matrix_sync(out + (i * 16) * N_ + warp * 16, acc[i], N_, wmma::mem_row_major);
  }
};

// cp.async.wait_group with a run-time count (0..3): at most n of this thread's groups pending.
__device__ __forceinline__ void cp_async_wait_upto(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    default: cp_async_wait<3>(); break;
  }
}

// ChunkOuter's product, version 2 (T <= 128): the whole chunk's u and v rows go to shared memory
// by cp.async at load() (one commit group per 32-row slab, all in flight at once), and run()
// multiplies slab s as soon as it has landed, on raw TF32 mma.sync fragments with w applied to
// A's elements in registers. Warp w owns the 32 x 32 output tile (w / 4, w % 4) of P x N. The
// caller provides kFloats of shared memory (dynamic: 106 KB at T = 128) and a __syncthreads()
// between load() and run() (w's writes). Rows at or past L read as zeros.
template <int T>
struct ChunkOuterV2 {
  static constexpr int LDU = P_ + 8, LDV = N_ + 8;  // ≡ 8 mod 32: conflict-free fragment loads
  static constexpr int kFloats = T * (LDU + LDV), kSlabs = T / KS;
  static_assert(T == 64 || T == 128, "T in {64, 128}");
  const float *usrc, *vsrc;
  int64_t urow, vrow, b, L, l0;
  float* smem = nullptr;

  __device__ __forceinline__ void load(int64_t) {
    float *us = smem, *vs = smem + T * LDU;
    const int64_t valid = L - l0;
    const float* u0 = usrc + (b * L + l0) * urow;
    const float* v0 = vsrc + (b * L + l0) * vrow;
    constexpr int UQ = P_ / 4, VQ = N_ / 4;  // 16-byte pieces per row
    for (int s = 0; s < kSlabs; ++s) {
      for (int i = threadIdx.x; i < KS * (UQ + VQ); i += kThreads) {
        if (i < KS * UQ) {
          const int r = s * KS + i / UQ, k4 = (i % UQ) * 4;
          cp_async16(us + r * LDU + k4, r < valid ? u0 + r * urow + k4 : u0, r < valid);
        } else {
          const int e = i - KS * UQ, r = s * KS + e / VQ, k4 = (e % VQ) * 4;
          cp_async16(vs + r * LDV + k4, r < valid ? v0 + r * vrow + k4 : v0, r < valid);
        }
      }
      cp_async_commit();
    }
  }

  __device__ __forceinline__ void run(const float* w, float* out) {
    const float *us = smem, *vs = smem + T * LDU;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
    float acc[2][4][4] = {};
    for (int s = 0; s < kSlabs; ++s) {
      cp_async_wait_upto(kSlabs - 1 - s);
      __syncthreads();  // slab s landed for every thread
#pragma unroll
      for (int kk = 0; kk < KS; kk += 8) {
        const int l = s * KS + kk + q;
        const float w0 = w[l], w1 = w[l + 4];
        uint32_t fa[2][4], fb[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const int p = pm + mi * 16 + g;
          fa[mi][0] = to_tf32(w0 * us[l * LDU + p]);
          fa[mi][1] = to_tf32(w0 * us[l * LDU + p + 8]);
          fa[mi][2] = to_tf32(w1 * us[(l + 4) * LDU + p]);
          fa[mi][3] = to_tf32(w1 * us[(l + 4) * LDU + p + 8]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int n = nn + ni * 8 + g;
          fb[ni][0] = to_tf32(vs[l * LDV + n]);
          fb[ni][1] = to_tf32(vs[(l + 4) * LDV + n]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int ni = 0; ni < 4; ++ni) mma_tf32(acc[mi][ni], fa[mi], fb[ni]);
      }
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int p = pm + mi * 16 + g, n = nn + ni * 8 + 2 * q;
        st2(out + p * N_ + n, acc[mi][ni][0], acc[mi][ni][1]);
        st2(out + (p + 8) * N_ + n, acc[mi][ni][2], acc[mi][ni][3]);
      }
  }
};

// A warp's 16x16 accumulator tile into rows of a matrix with row stride ld, starting at dst, of
// which only the first `valid` exist (the last chunk's partial tile): all 16 rows go straight to
// memory; fewer are staged through the warp's own 16 x LDE tile `stage` and written row by row.
__device__ __forceinline__ void store_tile_rows(float* dst, const FragC& acc, int64_t ld, int64_t valid,
                                                float* stage) {
  if (valid >= 16) {
    wmma::store_matrix_sync(dst, acc, unsigned(ld), wmma::mem_row_major);
    return;
  }
  wmma::store_matrix_sync(stage, acc, LDE, wmma::mem_row_major);
  __syncwarp();
  for (int e = threadIdx.x & 31; e < 256; e += 32) {
    const int r = e / 16, q = e % 16;
    if (r < valid) dst[r * ld + q] = stage[r * LDE + q];
  }
  __syncwarp();
}

// Inclusive prefix sum of v over the block's 256 threads (warp shuffles, then warp totals).
__device__ inline float block_scan(float v, float* warp_tot) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += u;
  }
  if (lane == 31) warp_tot[w] = v;
  __syncthreads();
  float add = 0;
  for (int i = 0; i < w; ++i) add += warp_tot[i];
  return v + add;
}

// The sum of v over the block's 256 threads, in every thread (warp_tot: kWarps floats, out: one).
__device__ __forceinline__ float block_sum(float v, float* warp_tot, float* out) {
  const float s = block_scan(v, warp_tot);
  if (threadIdx.x == kThreads - 1) *out = s;
  __syncthreads();
  const float r = *out;
  __syncthreads();
  return r;
}

// Launches `kernel` on kThreads-thread blocks with `smem` bytes of dynamic shared memory, first
// allowing it that much (needed above 48 KB). Returns the first error.
template <class Kernel, class... Args>
cudaError_t launch_dyn(Kernel kernel, dim3 grid, int smem, cudaStream_t stream, const Args&... args) {
  if (const auto e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem); e != cudaSuccess)
    return e;
  DFSSM_LAUNCH_SMEM(kernel, grid, smem, stream, args...);
  return cudaGetLastError();
}

}  // namespace scan_detail
}  // namespace dfssm::kernels
