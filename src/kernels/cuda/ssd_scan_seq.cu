// The chunked SSD forward for passes that keep nothing for a backward (the teacher's forward, the
// student's activation-checkpointed first forward, evaluation) as one sequential kernel after
// chunk_cb: y and the final state; the workspace holds only CB. ssd_scan.h has the math; kernels/cpu/ssd_scan_ref.cpp is the scalar twin.
// P = 64, N = 128; the model's chunk size (a.T) is not used: the result is the same sum.
// The same sequential form serves two more kernels below: ssd_states_seq_kernel (the backward's
// forward workspace at T = 64, for a recomputation that kept y) and ssd_dstates_seq_kernel (the
// backward's reverse state pass at T = 64, walking the chunks from the last to the first).
// Each also has a version on bf16 m16n8k16 mma (ssd_seq_bf16_kernel, ssd_states_seq_bf16_kernel,
// ssd_dstates_seq_bf16_kernel; DFSSM_SSD_SEQ_VERSION=3, DFSSM_SSD_STATES_BF16=1), the operand
// precision of mamba_ssm's kernels with bf16 inputs; they are opt-in until timed on a GPU.
//
// Why: the four-kernel forward (ssd_scan.cu) writes every chunk's state (P x N fp32, 32 KB per
// head) to HBM, passes them in a second kernel and reads them back in a third: at 16 x 2048 x 64
// heads that is ~2 GB of state traffic per call, more than x and y together. Here one block owns
// one (head, batch) sequence and walks its chunks in order with the state in registers, so the
// state never leaves the SM; the 1024 such sequences of a training batch fill the GPU.
//
// Memory layout (fp32, row-major): x (batch, L, H, P) and B, C (batch, L, G, N) with row strides
// x_row / bc_row (read in place in the conv output); dt (batch, L, H); y (batch, L, H, P)
// contiguous; init / final_state (batch, H, P, N).
//
// First ssd_scan.cu's chunk_cb at T = 64: CB = C·Bᵀ per chunk and group, (batch, chunks, G, 64,
// 64) in the workspace (8 MB at 16 x 2048), computed once instead of once per head.
// Then grid (H, batch), 8 warps, one block per SM (225 KB of dynamic shared memory: two chunk
// buffers of x, B, C rows, the masked matrix M, the state S). Per chunk of T = 64 positions:
//   0. the next chunk's x, B, C rows are issued by cp.async into the other buffer (in flight
//      during this chunk's work); acs = in-chunk cumsum of A·dt by a block scan;
//   1. M = L∘CB∘dt + D·I, in place of the chunk's CB (cp.async'd into shared during the previous
//      chunk's steps 2-3; the blocks above the diagonal are neither loaded nor used);
//   2. y = M·x + exp(acs)∘(C·Sᵀ) (64 x 64; M's tiles above the diagonal skipped), to HBM;
//   3. S = exp(acs_T-1)·S + (w∘x)ᵀ·B with w_l = exp(acs_T-1 - acs_l)·dt_l: S is the warps' mma
//      accumulators (warp w owns the 32 x 32 tile (w / 4, w % 4) of P x N), copied to shared
//      for the next chunk's step 2. Steps 2 and 3 are independent and run in one loop.
// All products are TF32 mma.sync m16n8k8 with fp32 accumulation (the fragment layouts at
// mma_tf32 in ssd_scan_common.cuh); every operand is rounded by cvt.rna.tf32, as in ssd_scan.cu
// (x, B and C once per chunk in shared memory, M and S when they are written there; the
// state update's w∘x after its product).
#include "kernels/cuda/ssd_scan_common.cuh"
#ifndef DFSSM_CUDA_EMULATE
#include <cuda_bf16.h>
#endif

#include <cstdlib>
#include <cstring>
#include <string>

namespace dfssm::kernels {
namespace {
using namespace scan_detail;

namespace seq {
constexpr int T = 64;        // positions per chunk
constexpr int LDX = P_ + 8;  // 72 ≡ 8 (mod 32 banks): x read k-major (step 2's B, step 3's A)
constexpr int LDB = N_ + 8;  // 136 ≡ 8: B read k-major in step 3 (2-way conflicts in step 1)
constexpr int LDC = N_ + 4;  // 132 ≡ 4: C read as row-major A (steps 1 and 2)
constexpr int LDM = T + 4;   // 68 ≡ 4: M read as row-major A
constexpr int LDS = N_ + 4;  // 132 ≡ 4: S read n-major as B (step 2)
constexpr int kBuf = T * (LDX + LDB + LDC);  // one chunk's x, B and C rows
constexpr int kFloats = 2 * kBuf + T * LDM + P_ * LDS;
constexpr int kSmemBytes = kFloats * 4;
static_assert(kSmemBytes <= 226 * 1024, "one block per SM on sm_90 (227 KB with the static arrays)");
}  // namespace seq

// y[i], y[i + 1] = a, b in bf16 (round to nearest even); y: bf16 elements, i even. One 4-byte
// store: two 2-byte stores doubled the store instructions of a latency-bound kernel.
__device__ __forceinline__ void st2_bf16(void* y, int64_t i, float a, float b) {
  __nv_bfloat16* p = static_cast<__nv_bfloat16*>(y) + i;
#ifndef DFSSM_CUDA_EMULATE
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
#else
  p[0] = __float2bfloat16(a), p[1] = __float2bfloat16(b);
#endif
}

// The warp's 32 x 32 tile of the state (rows pm + 16·mi + {g, g+8}, columns nn + 8·ni + 2q + {0, 1})
// to or from a row-major P x N array with row stride ld.
// Rounded to TF32 (round), or as is.
template <bool Round>
__device__ __forceinline__ void state_store(float* p, int ld, const float (&s)[2][4][4], int pm, int nn, int g, int q) {
  auto f = [](float v) { return Round ? tf32_bits(v) : v; };
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int r = pm + mi * 16 + g, n = nn + ni * 8 + 2 * q;
      st2(p + r * ld + n, f(s[mi][ni][0]), f(s[mi][ni][1]));
      st2(p + (r + 8) * ld + n, f(s[mi][ni][2]), f(s[mi][ni][3]));
    }
}
// ---- Pieces shared by the two sequential kernels ------------------------------------------------
// Chunk rows l0 + [0, T) into shared memory, 16 bytes per cp.async, by fixed per-thread pieces so
// that each address is a per-thread offset plus a row step: x as 16 pieces per row (thread t takes
// piece t % 16 of rows t / 16 + 16j), B (and C unless cs is null) as 32 (piece t % 32 of rows
// t / 32 + 8j). Rows at or past `valid` are zero-filled (their source stays a valid address: row
// l0). xg, Bg, Cg point at row 0 of the sequence. The shared rows are LX, LB and LC floats apart.
template <int LX = seq::LDX, int LB = seq::LDB, int LC = seq::LDC>
__device__ __forceinline__ void load_rows_seq(float* xs, float* bs, float* cs, const float* xg, const float* Bg,
                                              const float* Cg, int64_t x_row, int64_t bc_row, int64_t l0,
                                              int64_t valid) {
  const int t = threadIdx.x;
  {
    const int e = (t & 15) * 4, r0 = t >> 4;
    const float* src = xg + (l0 + r0) * x_row + e;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = r0 + 16 * j;
      const bool ok = r < valid;
      cp_async16(xs + r * LX + e, ok ? src + int64_t(16 * j) * x_row : xg + l0 * x_row, ok);
    }
  }
  const int e = (t & 31) * 4, r0 = t >> 5;
  const int64_t off = (l0 + r0) * bc_row + e;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int r = r0 + 8 * j;
    const bool ok = r < valid;
    const int64_t o = ok ? off + int64_t(8 * j) * bc_row : l0 * bc_row;
    cp_async16(bs + r * LB + e, Bg + o, ok);
    if (cs) cp_async16(cs + r * LC + e, Cg + o, ok);
  }
  cp_async_commit();
}
// The same pieces rounded to TF32 in place: each thread its own, visible to it after its wait.
__device__ __forceinline__ void round_rows_seq(float* xs, float* bs, float* cs) {
  const int t = threadIdx.x;
#pragma unroll
  for (int j = 0; j < 4; ++j) round4(xs + ((t >> 4) + 16 * j) * seq::LDX + (t & 15) * 4);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int r = (t >> 5) + 8 * j, e = (t & 31) * 4;
    round4(bs + r * seq::LDB + e);
    if (cs) round4(cs + r * seq::LDC + e);
  }
}
// dt of position c·T + t of head h (0 past L, for threads >= T and for c >= nc).
__device__ __forceinline__ float dt_seq(const SsdScanArgs& a, int64_t b, int h, int64_t c, int64_t nc) {
  const int t = threadIdx.x;
  const int64_t l = c * seq::T + t;
  return t < seq::T && c < nc && l < a.L ? a.dt[(b * a.L + l) * a.H + h] : 0.f;
}
// The warp's state tile (state_store's layout) from init (row-major P x N), or zero.
__device__ __forceinline__ void state_load(float (&s)[2][4][4], const float* init, int pm, int nn, int g, int q) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int r = pm + mi * 16 + g, n = nn + ni * 8 + 2 * q;
      const float2 u = init ? ld2(init + r * N_ + n) : make_float2(0.f, 0.f);
      const float2 v = init ? ld2(init + (r + 8) * N_ + n) : make_float2(0.f, 0.f);
      s[mi][ni][0] = u.x, s[mi][ni][1] = u.y, s[mi][ni][2] = v.x, s[mi][ni][3] = v.y;
    }
}
__device__ __forceinline__ void state_scale(float (&s)[2][4][4], float f) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mi][ni][e] *= f;
}
// One k-step of the state update S += (w∘x)ᵀ·B over positions k0 + [0, 8): w0 and w1 are w at
// positions k0 + q and k0 + q + 4; xs and bs are TF32-rounded rows (w∘x is rounded here).
__device__ __forceinline__ void state_kstep(float (&s)[2][4][4], const float* xs, const float* bs, int k0, float w0,
                                            float w1, int pm, int nn, int g, int q) {
  const int l = k0 + q;
  uint32_t fa[2][4], fb[4][2];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    const int p = pm + mi * 16 + g;
    fa[mi][0] = to_tf32(w0 * xs[l * seq::LDX + p]);
    fa[mi][1] = to_tf32(w0 * xs[l * seq::LDX + p + 8]);
    fa[mi][2] = to_tf32(w1 * xs[(l + 4) * seq::LDX + p]);
    fa[mi][3] = to_tf32(w1 * xs[(l + 4) * seq::LDX + p + 8]);
  }
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) frag_b_kmajor<true>(fb[ni], bs + k0 * seq::LDB + nn + ni * 8, seq::LDB, g, q);
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) mma_tf32(s[mi][ni], fa[mi], fb[ni]);
}

// Chunk c's CB (64 x 64, from the workspace at src) into dst (row stride ld), by the same
// per-thread pieces as x (16 per row, rows t / 16 + 16j); pieces wholly above their 16-row
// strip's diagonal block are never read and not loaded. No commit.
__device__ __forceinline__ void load_cb_seq(float* dst, int ld, const float* src) {
  const int t = threadIdx.x, e = (t & 15) * 4, r0 = t >> 4;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int r = r0 + 16 * j;
    if (e <= (r | 15)) cp_async16(dst + r * ld + e, src + r * seq::T + e, true);
  }
}

// Version 2 (the default; DFSSM_SSD_SEQ_VERSION=1 runs version 1, =3 version 3 below): step 2's
// row-major fragments (M, C and the state) by ldmatrix, one instruction for four scalar loads, and the exponentials that end
// in a TF32 operand or in y (M's decays, the state weights w, y's exp(acs)) by the fast __expf
// (ex2.approx; y moved by 4e-6 relative against version 1 in the micro, well under TF32's 2^-11
// rounding). In the profile (docs/benchmarks.md) M's exact expf took 13% of the kernel's
// instructions and 16% of its stall samples; the kernel is bound by dependency latency at 8 warps
// per SM, so fewer instructions gained only 1.1% (bf16 y) to nothing (fp32 y). The state's own
// decay exp(acs_T-1), compounded over every chunk, keeps expf.
template <bool V2>
__device__ __forceinline__ float exp_seq(float v) {
  if constexpr (V2) return __expf(v);
  else return expf(v);
}

// M's element (r, s) = exp(acs_r - acs_s)·CB·dt_s (+ D on the diagonal), 0 above the diagonal.
template <bool V2>
__device__ __forceinline__ float m_seq(const float* acs, const float* dts, int r, int s, float cb, float D) {
  return s <= r ? exp_seq<V2>(acs[r] - acs[s]) * cb * dts[s] + (s == r ? D : 0.f) : 0.f;
}

// y = M·x + exp(acs)∘(C·Sᵀ) to HBM from the warp's accumulators: strips r0[si] (y1 = M·x, y2 =
// C·Sᵀ, eA / eB = exp(acs) of their rows g and g + 8), columns p0 + [0, 16); fp32 or bf16 (the
// kept copy, ssd_scan_args.h); rows at or past L skipped.
__device__ __forceinline__ void store_y_seq(const SsdScanArgs& a, const float (&y1)[2][2][4],
                                            const float (&y2)[2][2][4], const float (&eA)[2], const float (&eB)[2],
                                            const int (&r0)[2], int p0, int64_t b, int h, int64_t l0, int g, int q) {
  const int64_t ld = int64_t(a.H) * P_, y0 = (b * a.L + l0) * ld + int64_t(h) * P_;
  const int64_t valid = a.L - l0;
#pragma unroll
  for (int si = 0; si < 2; ++si) {
    const int rA = r0[si] + g, rB = rA + 8;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int col = p0 + nt * 8 + 2 * q;
      const float(&u)[4] = y1[si][nt], (&v)[4] = y2[si][nt];
      if (a.y_bf16) {  // (uniform)
        if (rA < valid) st2_bf16(a.y_bf16, y0 + rA * ld + col, u[0] + eA[si] * v[0], u[1] + eA[si] * v[1]);
        if (rB < valid) st2_bf16(a.y_bf16, y0 + rB * ld + col, u[2] + eB[si] * v[2], u[3] + eB[si] * v[3]);
      } else {
        if (rA < valid) st2(a.y + y0 + rA * ld + col, u[0] + eA[si] * v[0], u[1] + eA[si] * v[1]);
        if (rB < valid) st2(a.y + y0 + rB * ld + col, u[2] + eB[si] * v[2], u[3] + eB[si] * v[3]);
      }
    }
  }
}

template <bool V2>
__global__ void __launch_bounds__(kThreads, 1) ssd_seq_kernel(SsdScanArgs a) {
  using namespace seq;
  const int h = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int gi = h / (a.H / a.G);
  DFSSM_DYN_SMEM(smem, kFloats);
  float* const Ms = smem + 2 * kBuf;
  float* const Ss = Ms + T * LDM;
  __shared__ float acs[T], dts[T], w[T], warp_tot[kWarps], total;

  const float* xg = a.x + (b * a.L) * a.x_row + int64_t(h) * P_;
  const float* Bg = a.B + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  const float* Cg = a.C + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  // Chunk c's x, B and C rows into buffer c % 2.
  auto load_chunk = [&](int64_t c) {
    float* xs = smem + (c & 1) * kBuf;
    load_rows_seq(xs, xs + T * LDX, xs + T * (LDX + LDB), xg, Bg, Cg, a.x_row, a.bc_row, c * T, a.L - c * T);
  };
  // Chunk c's CB into Ms, issued when the previous chunk's M has been read (the end of its step 2).
  const float* cbg = a.workspace + (b * nc * a.G + gi) * int64_t(T) * T;
  auto load_cb = [&](int64_t c) {
    load_cb_seq(Ms, LDM, cbg + c * a.G * int64_t(T) * T);
    cp_async_commit();
  };
  load_chunk(0);
  load_cb(0);
  float dt_next = dt_seq(a, b, h, 0, nc);
  const float Ah = a.A[h], D = a.D ? a.D[h] : 0.f;

  // The state: this warp's 32 x 32 tile of S in mma accumulator layout, from init (or zero).
  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  const int64_t PN = int64_t(P_) * N_;
  float S[2][4][4];
  state_load(S, a.init ? a.init + (b * a.H + h) * PN : nullptr, pm, nn, g, q);
  state_store<true>(Ss, LDS, S, pm, nn, g, q);

  for (int64_t c = 0; c < nc; ++c) {
    const float* xs = smem + (c & 1) * kBuf;
    const float* bs = xs + T * LDX;
    const float* cs = bs + T * LDB;
    const int64_t l0 = c * T;
    // ---- 0. next chunk in flight; acs and the state weights ----
    if (c + 1 < nc)
      load_chunk(c + 1);
    else
      cp_async_commit();  // an empty group keeps the wait count below uniform
    const float dtc = dt_next;
    dt_next = dt_seq(a, b, h, c + 1, nc);
    const float cum = block_scan(Ah * dtc, warp_tot);  // threads >= T add 0
    if (t < T) acs[t] = cum, dts[t] = dtc;
    if (t == T - 1) total = cum;
    cp_async_wait<1>();  // this chunk's rows landed (the next chunk's may still be in flight)
    // Each thread rounds the pieces it copied (visible to it after the wait) to TF32 in place, so
    // that the fragment loads below need no conversion.
    {
      float* xw = smem + (c & 1) * kBuf;
      round_rows_seq(xw, xw + T * LDX, xw + T * (LDX + LDB));
    }
    __syncthreads();
    if (t < T) w[t] = exp_seq<V2>(total - acs[t]) * dts[t];

    // ---- 1. M = L∘CB∘dt + D·I in place of CB, each thread on the pieces it loaded (visible to it
    // after its wait); acs and dt came through the barrier above. Rounded to TF32 for step 2. ----
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = (t >> 4) + 16 * j, e = (t & 15) * 4;
      if (e > (r | 15)) continue;
      float* p = Ms + r * LDM + e;
      const float4 v = ld4(p);
      auto m = [&](int s, float cb) { return m_seq<V2>(acs, dts, r, s, cb, D); };
      *reinterpret_cast<float4*>(p) = make_float4(tf32_bits(m(e, v.x)), tf32_bits(m(e + 1, v.y)),
                                                  tf32_bits(m(e + 2, v.z)), tf32_bits(m(e + 3, v.w)));
    }
    __syncthreads();

    // ---- 2 and 3 in one loop: y = M·x + exp(acs)∘(C·Sᵀ) and S = exp(acs_T-1)·S + (w∘x)ᵀ·B. The
    // three products are independent (step 2 reads the entering state from Ss, step 3 updates
    // the registers), so each iteration issues them together: 12 accumulator chains per warp
    // instead of 4, which the one block per SM needs to keep its tensor cores fed. For y, warp w
    // owns columns 16·(w % 4) + [0, 16) of P in two 16-row strips, {0, 3} (w < 4) or {1, 2}: M·x
    // skips M's blocks above the diagonal, and these pairs give every warp the same 10 of them. ----
    {
      const int p0 = (warp & 3) * 16, sp = warp >> 2;
      const int r0[2] = {sp * 16, (3 - sp) * 16};
      float eA[2], eB[2];
#pragma unroll
      for (int si = 0; si < 2; ++si) eA[si] = exp_seq<V2>(acs[r0[si] + g]), eB[si] = exp_seq<V2>(acs[r0[si] + g + 8]);
      state_scale(S, expf(total));
      // M·x and C·Sᵀ: separate chains, summed at the end, where exp(acs) scales C·Sᵀ's rows.
      // [strip][n-tile of 8 columns][fragment]
      float y1[2][2][4] = {}, y2[2][2][4] = {};
#pragma unroll 2
      for (int kk = 0; kk < T / 8; ++kk) {
        // M·x over source positions 8·kk + [0, 8), up to each strip's diagonal.
#pragma unroll
        for (int si = 0; si < 2; ++si) {
          if (kk * 8 > r0[si] + 8) continue;
          const int k0 = kk * 8;
          uint32_t fa[4];
          if constexpr (V2) frag_a_rows_ldsm(fa, Ms + r0[si] * LDM + k0, LDM, lane);
          else frag_a_rows<true>(fa, Ms + r0[si] * LDM + k0, LDM, g, q);
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            uint32_t fb[2];
            frag_b_kmajor<true>(fb, xs + k0 * LDX + p0 + nt * 8, LDX, g, q);
            mma_tf32(y1[si][nt], fa, fb);
          }
        }
        // C·Sᵀ over state columns 16·kk + [0, 16).
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int k0 = kk * 16 + half * 8;
          uint32_t fb[2][2];
          if constexpr (V2) {
            frag_b2_nmajor_ldsm(fb, Ss + p0 * LDS + k0, LDS, lane);
          } else {
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) frag_b_nmajor<true>(fb[nt], Ss + (p0 + nt * 8) * LDS + k0, LDS, g, q);
          }
#pragma unroll
          for (int si = 0; si < 2; ++si) {
            uint32_t fa[4];
            if constexpr (V2) frag_a_rows_ldsm(fa, cs + r0[si] * LDC + k0, LDC, lane);
            else frag_a_rows<true>(fa, cs + r0[si] * LDC + k0, LDC, g, q);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) mma_tf32(y2[si][nt], fa, fb[nt]);
          }
        }
        // (w∘x)ᵀ·B over positions 8·kk + [0, 8) into the state.
        state_kstep(S, xs, bs, kk * 8, w[kk * 8 + q], w[kk * 8 + q + 4], pm, nn, g, q);
      }
      store_y_seq(a, y1, y2, eA, eB, r0, p0, b, h, l0, g, q);
    }
    __syncthreads();  // every read of Ss, M, w and this chunk's buffer is done
    if (c + 1 < nc) load_cb(c + 1);
    state_store<true>(Ss, LDS, S, pm, nn, g, q);
  }
  cp_async_wait<0>();
  state_store<false>(a.final_state + (b * a.H + h) * PN, N_, S, pm, nn, g, q);
}

// ---- Version 3: bf16 operands (DFSSM_SSD_SEQ_VERSION=3; not the default until measured) --------
// The same chunk walk with every product on bf16 m16n8k16 mma (fp32 accumulation), the operand
// precision mamba_ssm's chunk_scan uses with bf16 inputs (x, B, C, CB·dt·decay and the entering
// state rounded to bf16; there the state is cast to C's dtype before C·Sᵀ). Why: version 2's
// main loop spends most of its instructions and shared-memory bytes on operand fragments (scalar
// k-major loads for the state update, w∘x and its TF32 rounding per element); here every
// fragment is one ldmatrix (.trans for the k-major ones) carrying twice the elements, each mma
// does twice the work, and w∘x is made once per chunk when the rows are converted. Numerics:
// rounding to bf16 (8 significant bits) instead of TF32 (11) moves y by ~3e-3 relative instead
// of ~4e-4 (the emulated test states the measured values).
// Shared memory (174 KB, one block per SM): the fp32 staging that cp.async fills (x, B, C rows
// and CB, unpadded: each thread converts the pieces it copied itself), one buffer: the next
// chunk's copies are issued as soon as this chunk's are converted, and land during its main
// loop; then the bf16 operands (uint16_t), rows padded to 16 bytes mod 128 for conflict-free
// ldmatrix: x and w∘x (T x LDX), B and C (T x LDN), M (T x LDM), the entering state S (P x LDN).
namespace seq3 {
constexpr int T = seq::T;
constexpr int LDX = P_ + 8;  // 72 bf16: 144 bytes
constexpr int LDN = N_ + 8;  // 136 bf16: 272 bytes
constexpr int LDM = T + 8;   // 72
constexpr int kStX = T * P_, kStB = T * N_;        // staging floats: x, then B, C, then CB (T x T)
constexpr int kStage = kStX + 2 * kStB + T * T;
constexpr int kX = T * LDX, kB = T * LDN, kM = T * LDM, kS = P_ * LDN;  // bf16 elements
constexpr int kHalfs = 2 * kX + 2 * kB + kM + kS;
constexpr int kSmemBytes = kStage * 4 + kHalfs * 2;
static_assert(kSmemBytes <= 226 * 1024, "one block per SM on sm_90");
static_assert((kStage * 4) % 16 == 0 && (kX * 2) % 16 == 0 && (kB * 2) % 16 == 0 && (kM * 2) % 16 == 0,
              "16-byte aligned buffers for ldmatrix");
}  // namespace seq3

// Four floats as bf16 at p (8-byte aligned), one 8-byte store: two 4-byte stores from a warp
// whose rows are 144 or 272 bytes apart would meet in the same banks.
struct alignas(8) U32x2 {
  uint32_t lo, hi;
};
__device__ __forceinline__ void st4_bf16(uint16_t* p, float a, float b, float c, float d) {
  *reinterpret_cast<U32x2*>(p) = U32x2{pack_bf16(a, b), pack_bf16(c, d)};
}

// One k-step of the state update on bf16 operands: S += (w∘u)ᵀ·v over positions 16·kk + [0, 16),
// the warp's 32 x 32 tile (rows pm of P, columns nn of N) in mma accumulator layout (state_store's).
// wu (T x LDU: w∘u, k-major A, read transposed) and v (T x LDV: k-major B) are bf16 rows.
template <int LDU, int LDV>
__device__ __forceinline__ void state_kstep_bf16(float (&S)[2][4][4], const uint16_t* wu, const uint16_t* v, int kk,
                                                 int pm, int nn, int lane) {
  const int tk = (lane & 7) + (lane >> 4) * 8, tm = lane & 8;   // A transposed: k by lane, m half
  const int bk = (lane & 7) + (lane & 8), bn = (lane >> 4) * 8;  // B k-major: k by lane, n half
  uint32_t fw[2][4], fv[2][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) ldsm_x4_b16_trans(fw[mi], wu + (kk * 16 + tk) * LDU + pm + mi * 16 + tm);
#pragma unroll
  for (int np = 0; np < 2; ++np) ldsm_x4_b16_trans(fv[np], v + (kk * 16 + bk) * LDV + nn + np * 16 + bn);
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      mma_bf16(S[mi][2 * np], fw[mi], fv[np][0], fv[np][1]);
      mma_bf16(S[mi][2 * np + 1], fw[mi], fv[np][2], fv[np][3]);
    }
}

// Steps 2 and 3 of versions 3 and 4 on one chunk's bf16 operands (x, w∘x, B, C: T x LDX / LDN
// rows; M: T x LDM; the entering state S: P x LDN, n-major): y = M·x + exp(acs)∘(C·Sᵀ) to HBM and
// S = exp(acs_T-1)·S + (w∘x)ᵀ·B in the accumulators, as version 2 (warp w: y columns 16·(w % 4) +
// [0, 16) in strips {0, 3} or {1, 2}; the state tile (w / 4, w % 4)), in k-steps of 16: positions
// 16·kk + [0, 16) for M·x and the state update, state columns 32·kk + [0, 32) for C·Sᵀ.
__device__ __forceinline__ void seq_bf16_products(const SsdScanArgs& a, float (&S)[2][4][4], const uint16_t* xh,
                                                  const uint16_t* wxh, const uint16_t* bh, const uint16_t* ch,
                                                  const uint16_t* mh, const uint16_t* sh, const float* acs, float tot,
                                                  int64_t b, int h, int64_t l0) {
  using namespace seq3;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  const int p0 = (warp & 3) * 16, sp = warp >> 2;
  const int r0[2] = {sp * 16, (3 - sp) * 16};
  // ldmatrix row addresses: A row-major (rows 0-15 by lane & 15 in matrices 0-1 / 2-3, k
  // half by lane / 16); k-major operands (.trans): k row lane & 7 (+8 for matrices 1, 3),
  // column half by lane / 16.
  const int ar = (lane & 7) + (lane & 8), ak = (lane >> 4) * 8;
  const int bk = (lane & 7) + (lane & 8), bn = (lane >> 4) * 8;
  float eA[2], eB[2];
#pragma unroll
  for (int si = 0; si < 2; ++si) eA[si] = __expf(acs[r0[si] + g]), eB[si] = __expf(acs[r0[si] + g + 8]);
  state_scale(S, expf(tot));
  float y1[2][2][4] = {}, y2[2][2][4] = {};
#pragma unroll
  for (int kk = 0; kk < T / 16; ++kk) {
    // M·x over source positions 16·kk + [0, 16), up to each strip's diagonal block.
    uint32_t fx[4];  // x's k-major tiles: columns p0 + [0, 8) in fx[0..1], p0 + [8, 16) in fx[2..3]
    ldsm_x4_b16_trans(fx, xh + (kk * 16 + bk) * LDX + p0 + bn);
#pragma unroll
    for (int si = 0; si < 2; ++si) {
      if (kk * 16 > r0[si]) continue;
      uint32_t fa[4];
      ldsm_x4_b16(fa, mh + (r0[si] + ar) * LDM + kk * 16 + ak);
      mma_bf16(y1[si][0], fa, fx[0], fx[1]);
      mma_bf16(y1[si][1], fa, fx[2], fx[3]);
    }
    // C·Sᵀ over state columns 32·kk + [0, 32): B[n][p] = S[p][n], n-major in sh.
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int k0 = kk * 32 + hh * 16;
      uint32_t fs[4];  // p rows p0 + [0, 8): fs[0..1]; p0 + [8, 16): fs[2..3]
      ldsm_x4_b16(fs, sh + (p0 + (lane & 7) + bn) * LDN + k0 + (lane & 8));
#pragma unroll
      for (int si = 0; si < 2; ++si) {
        uint32_t fa[4];
        ldsm_x4_b16(fa, ch + (r0[si] + ar) * LDN + k0 + ak);
        mma_bf16(y2[si][0], fa, fs[0], fs[1]);
        mma_bf16(y2[si][1], fa, fs[2], fs[3]);
      }
    }
    // (w∘x)ᵀ·B over positions 16·kk + [0, 16) into the state.
    state_kstep_bf16<LDX, LDN>(S, wxh, bh, kk, pm, nn, lane);
  }
  store_y_seq(a, y1, y2, eA, eB, r0, p0, b, h, l0, g, q);
}

// The warp's state tile (state_store's layout) into S's bf16 rows (n-major, LDN apart).
__device__ __forceinline__ void store_state_bf16(uint16_t* sh, const float (&S)[2][4][4], int pm, int nn, int g,
                                                 int q) {
  using seq3::LDN;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int r = pm + mi * 16 + g, n = nn + ni * 8 + 2 * q;
      *reinterpret_cast<uint32_t*>(sh + r * LDN + n) = pack_bf16(S[mi][ni][0], S[mi][ni][1]);
      *reinterpret_cast<uint32_t*>(sh + (r + 8) * LDN + n) = pack_bf16(S[mi][ni][2], S[mi][ni][3]);
    }
}

__global__ void __launch_bounds__(kThreads, 1) ssd_seq_bf16_kernel(SsdScanArgs a) {
  using namespace seq3;
  const int h = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int gi = h / (a.H / a.G);
  DFSSM_DYN_SMEM(smem, kSmemBytes / 4);
  float* const stx = smem;  // staging
  float* const stb = stx + kStX;
  float* const stc = stb + kStB;
  float* const stcb = stc + kStB;
  uint16_t* const xh = reinterpret_cast<uint16_t*>(smem + kStage);  // bf16 operands
  uint16_t* const wxh = xh + kX;
  uint16_t* const bh = wxh + kX;
  uint16_t* const ch = bh + kB;
  uint16_t* const mh = ch + kB;
  uint16_t* const sh = mh + kM;
  __shared__ float acs[T], dts[T], warp_tot[kWarps], total;

  const float* xg = a.x + (b * a.L) * a.x_row + int64_t(h) * P_;
  const float* Bg = a.B + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  const float* Cg = a.C + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  const float* cbg = a.workspace + (b * nc * a.G + gi) * int64_t(T) * T;
  // Chunk c's x, B, C rows and CB into the staging (CB's pieces above their strip's diagonal
  // block are never used and not loaded), one commit group.
  auto load_chunk = [&](int64_t c) {
    load_rows_seq<P_, N_, N_>(stx, stb, stc, xg, Bg, Cg, a.x_row, a.bc_row, c * T, a.L - c * T);
    load_cb_seq(stcb, T, cbg + c * a.G * int64_t(T) * T);
    cp_async_commit();
  };
  load_chunk(0);
  float dt_next = dt_seq(a, b, h, 0, nc);
  const float Ah = a.A[h], D = a.D ? a.D[h] : 0.f;

  // The state: this warp's 32 x 32 tile of S (rows pm, columns nn) in mma accumulator layout.
  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  const int64_t PN = int64_t(P_) * N_;
  float S[2][4][4];
  state_load(S, a.init ? a.init + (b * a.H + h) * PN : nullptr, pm, nn, g, q);
  store_state_bf16(sh, S, pm, nn, g, q);

  for (int64_t c = 0; c < nc; ++c) {
    const int64_t l0 = c * T;
    // ---- 0. acs and dt; this chunk's staging landed ----
    const float dtc = dt_next;
    dt_next = dt_seq(a, b, h, c + 1, nc);
    const float cum = block_scan(Ah * dtc, warp_tot);  // threads >= T add 0
    if (t < T) acs[t] = cum, dts[t] = dtc;
    if (t == T - 1) total = cum;
    cp_async_wait<0>();
    __syncthreads();  // acs, dts, total; the previous chunk's reads of the bf16 buffers are done

    // ---- 1. the bf16 operands from each thread's own staged pieces: x, w∘x (w_l =
    // exp(acs_T-1 - acs_l)·dt_l), B, C, and M = L∘CB∘dt + D·I (strip-diagonal blocks and below);
    // then the next chunk's copies into the staging just read. ----
    const float tot = total;
    {
      const int e = (t & 15) * 4;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = (t >> 4) + 16 * j;
        const float4 v = ld4(stx + r * P_ + e);
        const float wr = __expf(tot - acs[r]) * dts[r];
        st4_bf16(xh + r * LDX + e, v.x, v.y, v.z, v.w);
        st4_bf16(wxh + r * LDX + e, wr * v.x, wr * v.y, wr * v.z, wr * v.w);
        if (e > (r | 15)) continue;
        const float4 u = ld4(stcb + r * T + e);
        auto m = [&](int s, float cb) { return m_seq<true>(acs, dts, r, s, cb, D); };
        st4_bf16(mh + r * LDM + e, m(e, u.x), m(e + 1, u.y), m(e + 2, u.z), m(e + 3, u.w));
      }
    }
    {
      const int e = (t & 31) * 4;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int r = (t >> 5) + 8 * j;
        const float4 u = ld4(stb + r * N_ + e), v = ld4(stc + r * N_ + e);
        st4_bf16(bh + r * LDN + e, u.x, u.y, u.z, u.w);
        st4_bf16(ch + r * LDN + e, v.x, v.y, v.z, v.w);
      }
    }
    if (c + 1 < nc)
      load_chunk(c + 1);  // this thread's staged pieces are read: their stores above used them
    else
      cp_async_commit();
    __syncthreads();  // the bf16 operands

    // ---- 2 and 3: y and the state update ----
    seq_bf16_products(a, S, xh, wxh, bh, ch, mh, sh, acs, tot, b, h, l0);
    __syncthreads();  // every read of sh is done
    store_state_bf16(sh, S, pm, nn, g, q);
  }
  cp_async_wait<0>();
  state_store<false>(a.final_state + (b * a.H + h) * PN, N_, S, pm, nn, g, q);
}

// ---- Version 4: version 3 on bf16 inputs (a.x_bf16; DFSSM_SSD_SEQ_VERSION=4 makes the model's
// no-grad passes take it; not the default until measured) -------------------------------------
// The conv writes x, B and C in bf16 for passes without a backward (conv_train.h), so their rows
// land by cp.async straight in version 3's padded bf16 operand tiles: no fp32 staging and no
// conversion of them. What is left of step 1 makes w∘x from the bf16 x and M from CB, which
// chunk_cb_bf16_kernel computes from the bf16 B and C. Why: version 3 converts 27K elements per
// chunk and head, 60% of them B and C, which every head of a group converts again; here 6.6K. x,
// B and C cost half the HBM and L2 bytes (the conv writes half as many too). Numerics: version
// 3's operands, but w∘x is rounded from the already rounded x (one more bf16 rounding).
// Shared memory (137 KB): CB's fp32 staging (as version 3), then two chunk buffers of bf16 x, B,
// C rows (the next chunk's rows are issued at the top of this chunk's step 0), then w∘x, M, S.
namespace seq4 {
constexpr int T = seq::T, LDX = seq3::LDX, LDN = seq3::LDN, LDM = seq3::LDM;
constexpr int kX = T * LDX, kB = T * LDN, kM = T * LDM, kS = P_ * LDN;  // bf16 elements
constexpr int kBuf = kX + 2 * kB;                                       // one chunk's x, B, C
constexpr int kHalfs = 2 * kBuf + kX + kM + kS;
constexpr int kSmemBytes = T * T * 4 + kHalfs * 2;
static_assert(kSmemBytes <= 226 * 1024 && (kX * 2) % 16 == 0 && (kB * 2) % 16 == 0 && (kM * 2) % 16 == 0,
              "16-byte aligned buffers for cp.async and ldmatrix");
}  // namespace seq4

// Chunk rows l0 + [0, T) of bf16 x (P_ per row: 8 pieces of 16 bytes) and B, C (N_: 16 pieces)
// into the padded tiles, zero-filled at or past `valid` (their source stays row l0); thread t
// takes x piece t % 8 of rows t / 8 + 32j and B, C piece t % 16 of rows t / 16 + 16j. No commit.
__device__ __forceinline__ void load_rows_bf16(uint16_t* xs, uint16_t* bs, uint16_t* cs, const uint16_t* xg,
                                               const uint16_t* Bg, const uint16_t* Cg, int64_t x_row, int64_t bc_row,
                                               int64_t l0, int64_t valid) {
  using seq4::LDN;
  using seq4::LDX;
  const int t = threadIdx.x;
  {
    const int e = (t & 7) * 8, r0 = t >> 3;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int r = r0 + 32 * j;
      const bool ok = r < valid;
      cp_async16(xs + r * LDX + e, xg + (ok ? l0 + r : l0) * x_row + e, ok);
    }
  }
  const int e = (t & 15) * 8, r0 = t >> 4;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int r = r0 + 16 * j;
    const bool ok = r < valid;
    const int64_t o = (ok ? l0 + r : l0) * bc_row + e;
    cp_async16(bs + r * LDN + e, Bg + o, ok);
    cp_async16(cs + r * LDN + e, Cg + o, ok);
  }
}

// Eight bf16 (16 bytes) times f, rounded to bf16 again: the bf16 values are exact in fp32.
struct alignas(16) U32x4 {
  uint32_t v[4];
};
__device__ __forceinline__ float bf16_bits_to_float(uint32_t hi_bits) {
#ifndef DFSSM_CUDA_EMULATE
  return __uint_as_float(hi_bits);
#else
  float f;
  std::memcpy(&f, &hi_bits, 4);
  return f;
#endif
}
__device__ __forceinline__ void scale8_bf16(uint16_t* dst, const uint16_t* src, float f) {
  const U32x4 u = *reinterpret_cast<const U32x4*>(src);
  U32x4 o;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    o.v[i] = pack_bf16(bf16_bits_to_float(u.v[i] << 16) * f, bf16_bits_to_float(u.v[i] & 0xffff0000u) * f);
  *reinterpret_cast<U32x4*>(dst) = o;
}

__global__ void __launch_bounds__(kThreads, 1) ssd_seq_bf16in_kernel(SsdScanArgs a) {
  using namespace seq4;
  const int h = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int gi = h / (a.H / a.G);
  DFSSM_DYN_SMEM(smem, kSmemBytes / 4);
  float* const stcb = smem;  // CB's staging
  uint16_t* const buf = reinterpret_cast<uint16_t*>(smem + T * T);  // two chunks of x, B, C rows
  uint16_t* const wxh = buf + 2 * kBuf;
  uint16_t* const mh = wxh + kX;
  uint16_t* const sh = mh + kM;
  __shared__ float acs[T], dts[T], warp_tot[kWarps], total;

  const uint16_t* xg = a.x_bf16 + (b * a.L) * a.x_row + int64_t(h) * P_;
  const uint16_t* Bg = a.B_bf16 + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  const uint16_t* Cg = a.C_bf16 + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  const float* cbg = a.workspace + (b * nc * a.G + gi) * int64_t(T) * T;
  auto load_rows = [&](int64_t c) {
    uint16_t* x = buf + (c & 1) * kBuf;
    load_rows_bf16(x, x + kX, x + kX + kB, xg, Bg, Cg, a.x_row, a.bc_row, c * T, a.L - c * T);
  };
  // Commit groups in order: {rows 0, CB 0}, then per chunk c: rows c + 1 (step 0), CB c + 1 (after
  // step 1; empty past the last chunk), so that step 0's wait<1> leaves only rows c + 1 in flight.
  load_rows(0);
  load_cb_seq(stcb, T, cbg);
  cp_async_commit();
  float dt_next = dt_seq(a, b, h, 0, nc);
  const float Ah = a.A[h], D = a.D ? a.D[h] : 0.f;

  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  const int64_t PN = int64_t(P_) * N_;
  float S[2][4][4];
  state_load(S, a.init ? a.init + (b * a.H + h) * PN : nullptr, pm, nn, g, q);
  store_state_bf16(sh, S, pm, nn, g, q);

  for (int64_t c = 0; c < nc; ++c) {
    const int64_t l0 = c * T;
    const uint16_t* xh = buf + (c & 1) * kBuf;
    // ---- 0. the next chunk's rows into the other buffer (read last in the previous chunk's
    // steps 2-3, which ended at a barrier); acs and dt; this chunk's rows and CB landed ----
    if (c + 1 < nc) load_rows(c + 1);
    cp_async_commit();
    const float dtc = dt_next;
    dt_next = dt_seq(a, b, h, c + 1, nc);
    const float cum = block_scan(Ah * dtc, warp_tot);  // threads >= T add 0
    if (t < T) acs[t] = cum, dts[t] = dtc;
    if (t == T - 1) total = cum;
    cp_async_wait<1>();
    __syncthreads();  // acs, dts, total, this chunk's rows; the previous chunk's reads are done

    // ---- 1. w∘x (w_l = exp(acs_T-1 - acs_l)·dt_l) from the bf16 x, and M = L∘CB∘dt + D·I from
    // each thread's own staged CB pieces (strip-diagonal blocks and below, as version 3); then
    // the next chunk's CB into the staging just read. ----
    const float tot = total;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int r = (t >> 3) + 32 * j, e = (t & 7) * 8;
      scale8_bf16(wxh + r * LDX + e, xh + r * LDX + e, __expf(tot - acs[r]) * dts[r]);
    }
    {
      const int e = (t & 15) * 4;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = (t >> 4) + 16 * j;
        if (e > (r | 15)) continue;
        const float4 u = ld4(stcb + r * T + e);
        auto m = [&](int s, float cb) { return m_seq<true>(acs, dts, r, s, cb, D); };
        st4_bf16(mh + r * LDM + e, m(e, u.x), m(e + 1, u.y), m(e + 2, u.z), m(e + 3, u.w));
      }
    }
    if (c + 1 < nc) load_cb_seq(stcb, T, cbg + (c + 1) * a.G * int64_t(T) * T);
    cp_async_commit();
    __syncthreads();  // w∘x and M

    // ---- 2 and 3 (version 3's) ----
    seq_bf16_products(a, S, xh, wxh, xh + kX, xh + kX + kB, mh, sh, acs, tot, b, h, l0);
    __syncthreads();  // every read of sh and of this chunk's rows is done
    store_state_bf16(sh, S, pm, nn, g, q);
  }
  cp_async_wait<0>();
  state_store<false>(a.final_state + (b * a.H + h) * PN, N_, S, pm, nn, g, q);
}

// CB = C·Bᵀ per 64-position chunk and group from bf16 B and C (version 4's), fp32 out (the
// workspace layout of chunk_cb: (batch, chunks, G, 64, 64)); rows past L are zero. Grid (chunks
// x G, batch), 8 warps; warp w computes rows 16·(w % 4) + [0, 16), columns 32·(w / 4) + [0, 32)
// on bf16 m16n8k16 mma with fp32 accumulation (C row-major as A; B's rows, n-major, as the
// column operand, the layout version 3's C·Sᵀ reads S in).
__global__ void __launch_bounds__(kThreads) chunk_cb_bf16_kernel(SsdScanArgs a, float* cb) {
  using namespace seq4;
  __shared__ __align__(16) uint16_t cs[T * LDN], bs[T * LDN];
  const int t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int c = int(blockIdx.x) / a.G, gi = int(blockIdx.x) % a.G;
  const int64_t l0 = int64_t(c) * T, valid = a.L - l0;
  {
    const int e = (t & 15) * 8, r0 = t >> 4;
    const int64_t base = (b * a.L) * a.bc_row + int64_t(gi) * N_;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = r0 + 16 * j;
      const bool ok = r < valid;
      const int64_t o = base + (ok ? l0 + r : l0) * a.bc_row + e;
      cp_async16(cs + r * LDN + e, a.C_bf16 + o, ok);
      cp_async16(bs + r * LDN + e, a.B_bf16 + o, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  }
  const int m0 = (warp & 3) * 16, n0 = (warp >> 2) * 32;
  const int ar = (lane & 7) + (lane & 8), ak = (lane >> 4) * 8, bn = (lane >> 4) * 8;
  float acc[4][4] = {};
#pragma unroll
  for (int kk = 0; kk < N_ / 16; ++kk) {
    uint32_t fa[4];
    ldsm_x4_b16(fa, cs + (m0 + ar) * LDN + kk * 16 + ak);
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      uint32_t fb[4];  // B rows n0 + 16·np + [0, 8): fb[0..1]; + [8, 16): fb[2..3]
      ldsm_x4_b16(fb, bs + (n0 + np * 16 + (lane & 7) + bn) * LDN + kk * 16 + (lane & 8));
      mma_bf16(acc[2 * np], fa, fb[0], fb[1]);
      mma_bf16(acc[2 * np + 1], fa, fb[2], fb[3]);
    }
  }
  float* out = cb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) {
    const int col = n0 + ni * 8 + 2 * q;
    st2(out + (m0 + g) * T + col, acc[ni][0], acc[ni][1]);
    st2(out + (m0 + g + 8) * T + col, acc[ni][2], acc[ni][3]);
  }
}

// ---- The backward's workspace in the same sequential form --------------------------------------
// ssd_states_seq_kernel: what ssd_scan.cu's chunk_state + state_pass leave for the backward at
// T = 64 (acs per chunk; the state entering each chunk, fp32; the final state), for a
// recomputation that kept y. Grid (H, batch), 8 warps, one block per sequence; x and B rows only
// (C and M are not needed), two chunks in flight: 104 KB of shared memory, two blocks per SM. Per
// chunk: acs by the same block scan as chunk_state (bit-identical), the entering state stored
// from the accumulators, then S = exp(acs_T-1)·S + (w∘x)ᵀ·B as in ssd_seq_kernel's step 3.
namespace seqst {
constexpr int T = seq::T, LDX = seq::LDX, LDB = seq::LDB;
constexpr int kBuf = T * (LDX + LDB);
constexpr int kFloats = 2 * kBuf;
constexpr int kSmemBytes = kFloats * 4;
static_assert(kSmemBytes <= 112 * 1024, "two blocks per SM");
}  // namespace seqst

__global__ void __launch_bounds__(kThreads, 2) ssd_states_seq_kernel(SsdScanArgs a) {
  using namespace seqst;
  const int h = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int gi = h / (a.H / a.G);
  DFSSM_DYN_SMEM(smem, kFloats);
  __shared__ float acs[T], dts[T], warp_tot[kWarps], total;
  float* const acs_out = a.workspace + (b * a.H + h) * nc * T;  // (batch, H, chunks, T)
  float* const states = a.workspace + a.acs_floats();           // (batch, chunks, H, P, N)
  const int64_t PN = int64_t(P_) * N_;

  const float* xg = a.x + (b * a.L) * a.x_row + int64_t(h) * P_;
  const float* Bg = a.B + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  auto load_chunk = [&](int64_t c) {  // x and B rows into buffer c % 2 (no C)
    float* xs = smem + (c & 1) * kBuf;
    load_rows_seq(xs, xs + T * LDX, nullptr, xg, Bg, nullptr, a.x_row, a.bc_row, c * T, a.L - c * T);
  };
  load_chunk(0);
  float dt_next = dt_seq(a, b, h, 0, nc);
  const float Ah = a.A[h];

  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  float S[2][4][4];
  state_load(S, a.init ? a.init + (b * a.H + h) * PN : nullptr, pm, nn, g, q);

  for (int64_t c = 0; c < nc; ++c) {
    const float* xs = smem + (c & 1) * kBuf;
    const float* bs = xs + T * LDX;
    if (c + 1 < nc)
      load_chunk(c + 1);
    else
      cp_async_commit();
    const float dtc = dt_next;
    dt_next = dt_seq(a, b, h, c + 1, nc);
    const float cum = block_scan(Ah * dtc, warp_tot);  // as chunk_state_kernel: threads >= T add 0
    if (t < T) acs[t] = cum, dts[t] = dtc, acs_out[c * T + t] = cum;
    if (t == T - 1) total = cum;
    // The state entering chunk c, as state_pass leaves it.
    state_store<false>(states + ((b * nc + c) * a.H + h) * PN, N_, S, pm, nn, g, q);
    cp_async_wait<1>();
    {
      float* xw = smem + (c & 1) * kBuf;
      round_rows_seq(xw, xw + T * LDX, nullptr);
    }
    __syncthreads();
    const float tot = total;
    state_scale(S, expf(tot));
#pragma unroll 2
    for (int k0 = 0; k0 < T; k0 += 8) {
      const int l = k0 + q;
      state_kstep(S, xs, bs, k0, expf(tot - acs[l]) * dts[l], expf(tot - acs[l + 4]) * dts[l + 4], pm, nn, g, q);
    }
    __syncthreads();  // this chunk's buffer, acs, dts and total are free again
  }
  cp_async_wait<0>();
  state_store<false>(a.final_state + (b * a.H + h) * PN, N_, S, pm, nn, g, q);
}

// ssd_dstates_seq_kernel: the backward's reverse state pass at T = 64 (the dstates that
// ssd_scan_bwd.cu's dstate_local + dstate_pass leave for chunk_bwd and dbc) for one (head, batch)
// sequence per block, walking the chunks from the last to the first with the state gradient dS
// (P x N) in the warps' mma accumulators, as ssd_states_seq_kernel walks forward with S. Per
// chunk c:
//   dstates[c] = dS (the gradient of the state leaving chunk c);
//   dS = exp(Λ_c)·dS + Σ_l e_l·dy_lᵀ ⊗ C_l, e_l = exp(acs_l): ssd_seq_kernel's state update with
//     x -> dy, B -> C and w_l = e_l (dy and C rows by cp.async, two chunks in flight).
// The last dS is the initial state's gradient. dΛ_c = exp(Λ_c)·Σ dS∘S_c is chunk_bwd's (version
// 2, the only one this kernel runs with: it holds S_c and dS there), so S is not read here. Why:
// dstate_local writes every chunk's Σ_l e_l·dy_lᵀ ⊗ C_l (1 GB at 16 x 2048 x 64 heads) for
// dstate_pass to read back; here it stays on the chip. Shared memory as ssd_states_seq_kernel's
// (dy in x's place, C in B's): two blocks per SM.
__global__ void __launch_bounds__(kThreads, 2)
    ssd_dstates_seq_kernel(SsdScanArgs a, SsdScanGrads gr, float* dstates) {
  using namespace seqst;
  const int h = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int gi = h / (a.H / a.G);
  DFSSM_DYN_SMEM(smem, kFloats);
  __shared__ float es[T];
  const float* const acs = a.workspace + (b * a.H + h) * nc * T;  // (batch, H, chunks, T)
  const int64_t PN = int64_t(P_) * N_, dy_row = int64_t(a.H) * P_;

  const float* dyg = gr.dy + (b * a.L) * dy_row + int64_t(h) * P_;
  const float* Cg = a.C + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  auto load_chunk = [&](int64_t c, int buf) {  // dy and C rows of chunk c into buffer buf
    float* ys = smem + buf * kBuf;
    load_rows_seq(ys, ys + T * LDX, nullptr, dyg, Cg, nullptr, dy_row, a.bc_row, c * T, a.L - c * T);
  };
  load_chunk(nc - 1, 0);
  float acs_next = t < T ? acs[(nc - 1) * T + t] : 0.f;

  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  float dS[2][4][4];
  state_load(dS, gr.dfinal ? gr.dfinal + (b * a.H + h) * PN : nullptr, pm, nn, g, q);

  for (int64_t it = 0; it < nc; ++it) {
    const int64_t c = nc - 1 - it;
    const float* ys = smem + (it & 1) * kBuf;
    const float* cs = ys + T * LDX;
    if (c > 0)
      load_chunk(c - 1, int((it + 1) & 1));
    else
      cp_async_commit();
    if (t < T) es[t] = expf(acs_next);
    acs_next = c > 0 && t < T ? acs[(c - 1) * T + t] : 0.f;
    state_store<false>(dstates + ((b * nc + c) * a.H + h) * PN, N_, dS, pm, nn, g, q);
    cp_async_wait<1>();
    {
      float* yw = smem + (it & 1) * kBuf;
      round_rows_seq(yw, yw + T * LDX, nullptr);
    }
    __syncthreads();
    state_scale(dS, es[T - 1]);  // exp(Λ_c)
#pragma unroll 2
    for (int k0 = 0; k0 < T; k0 += 8) state_kstep(dS, ys, cs, k0, es[k0 + q], es[k0 + q + 4], pm, nn, g, q);
    __syncthreads();  // this chunk's buffer and es are free again
  }
  cp_async_wait<0>();
  if (gr.dinit) state_store<false>(gr.dinit + (b * a.H + h) * PN, N_, dS, pm, nn, g, q);
}

// ---- The two state walks on bf16 operands (the default since 2026-12-05; DFSSM_SSD_STATES_BF16=0
// runs the TF32 ones) ------------------------------------------------------------------------------
// ssd_states_seq_kernel and ssd_dstates_seq_kernel with the update S += (w∘u)ᵀ·v on bf16 mma, as
// ssd_seq_bf16_kernel's (u, v = x, B or dy, C). The stored states stay fp32 (the accumulators);
// only the products' operands are bf16, as in mamba_ssm's chunk_state (which also stores its
// states in bf16). Shared memory 74 KB, two blocks per SM: the fp32 staging of u and v rows (one
// buffer: the next chunk's copies are issued once this chunk's are converted) and the bf16 w∘u
// and v rows.
namespace seqst3 {
constexpr int T = seq::T, LDU = P_ + 8, LDV = N_ + 8;  // 144- and 272-byte rows: ≡ 16 mod 128
constexpr int kStU = T * P_, kStage = kStU + T * N_;    // staging floats
constexpr int kHalfs = T * LDU + T * LDV;
constexpr int kSmemBytes = kStage * 4 + kHalfs * 2;
static_assert(kSmemBytes <= 112 * 1024, "two blocks per SM");
static_assert((kStage * 4) % 16 == 0 && (T * LDU * 2) % 16 == 0, "16-byte aligned buffers for ldmatrix");

// This thread's staged pieces (load_rows_seq's: u 16 per row, v 32) as bf16: wu = w(l)·u, v.
template <class W>
__device__ __forceinline__ void convert_rows(const float* stu, const float* stv, uint16_t* wu, uint16_t* v, W w) {
  const int t = threadIdx.x;
  {
    const int e = (t & 15) * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = (t >> 4) + 16 * j;
      const float4 x = ld4(stu + r * P_ + e);
      const float wr = w(r);
      st4_bf16(wu + r * LDU + e, wr * x.x, wr * x.y, wr * x.z, wr * x.w);
    }
  }
  const int e = (t & 31) * 4;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int r = (t >> 5) + 8 * j;
    const float4 x = ld4(stv + r * N_ + e);
    st4_bf16(v + r * LDV + e, x.x, x.y, x.z, x.w);
  }
}
}  // namespace seqst3

__global__ void __launch_bounds__(kThreads, 2) ssd_states_seq_bf16_kernel(SsdScanArgs a) {
  using namespace seqst3;
  const int h = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int gi = h / (a.H / a.G);
  DFSSM_DYN_SMEM(smem, kSmemBytes / 4);
  float* const stu = smem;
  float* const stv = smem + kStU;
  uint16_t* const wuh = reinterpret_cast<uint16_t*>(smem + kStage);
  uint16_t* const vh = wuh + T * LDU;
  __shared__ float acs[T], dts[T], warp_tot[kWarps], total;
  float* const acs_out = a.workspace + (b * a.H + h) * nc * T;  // (batch, H, chunks, T)
  float* const states = a.workspace + a.acs_floats();           // (batch, chunks, H, P, N)
  const int64_t PN = int64_t(P_) * N_;

  const float* xg = a.x + (b * a.L) * a.x_row + int64_t(h) * P_;
  const float* Bg = a.B + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  auto load_chunk = [&](int64_t c) {
    load_rows_seq<P_, N_, N_>(stu, stv, nullptr, xg, Bg, nullptr, a.x_row, a.bc_row, c * T, a.L - c * T);
  };
  load_chunk(0);
  float dt_next = dt_seq(a, b, h, 0, nc);
  const float Ah = a.A[h];

  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  float S[2][4][4];
  state_load(S, a.init ? a.init + (b * a.H + h) * PN : nullptr, pm, nn, g, q);

  for (int64_t c = 0; c < nc; ++c) {
    const float dtc = dt_next;
    dt_next = dt_seq(a, b, h, c + 1, nc);
    // The scan's barrier also orders the previous chunk's reads of wu and v before this chunk's
    // conversion overwrites them.
    const float cum = block_scan(Ah * dtc, warp_tot);  // as chunk_state_kernel: threads >= T add 0
    if (t < T) acs[t] = cum, dts[t] = dtc, acs_out[c * T + t] = cum;
    if (t == T - 1) total = cum;
    // The state entering chunk c, as state_pass leaves it.
    state_store<false>(states + ((b * nc + c) * a.H + h) * PN, N_, S, pm, nn, g, q);
    cp_async_wait<0>();
    __syncthreads();  // acs, dts, total
    const float tot = total;
    convert_rows(stu, stv, wuh, vh, [&](int r) { return __expf(tot - acs[r]) * dts[r]; });
    if (c + 1 < nc)
      load_chunk(c + 1);  // this thread's staged pieces are converted
    else
      cp_async_commit();
    __syncthreads();  // the bf16 rows
    state_scale(S, expf(tot));
#pragma unroll
    for (int kk = 0; kk < T / 16; ++kk) state_kstep_bf16<LDU, LDV>(S, wuh, vh, kk, pm, nn, lane);
  }
  cp_async_wait<0>();
  state_store<false>(a.final_state + (b * a.H + h) * PN, N_, S, pm, nn, g, q);
}

__global__ void __launch_bounds__(kThreads, 2)
    ssd_dstates_seq_bf16_kernel(SsdScanArgs a, SsdScanGrads gr, float* dstates) {
  using namespace seqst3;
  const int h = blockIdx.x, t = threadIdx.x, warp = t >> 5, lane = t & 31, g = lane >> 2, q = lane & 3;
  const int64_t b = blockIdx.y, nc = (a.L + T - 1) / T;
  const int gi = h / (a.H / a.G);
  DFSSM_DYN_SMEM(smem, kSmemBytes / 4);
  float* const stu = smem;
  float* const stv = smem + kStU;
  uint16_t* const wuh = reinterpret_cast<uint16_t*>(smem + kStage);
  uint16_t* const vh = wuh + T * LDU;
  // exp(acs) of the chunk, by iteration parity: iteration it + 2 rewrites a buffer only after
  // every thread has passed iteration it + 1's first barrier, i.e. finished iteration it.
  __shared__ float es[2][T];
  const float* const acs = a.workspace + (b * a.H + h) * nc * T;  // (batch, H, chunks, T)
  const int64_t PN = int64_t(P_) * N_, dy_row = int64_t(a.H) * P_;

  const float* dyg = gr.dy + (b * a.L) * dy_row + int64_t(h) * P_;
  const float* Cg = a.C + (b * a.L) * a.bc_row + int64_t(gi) * N_;
  auto load_chunk = [&](int64_t c) {
    load_rows_seq<P_, N_, N_>(stu, stv, nullptr, dyg, Cg, nullptr, dy_row, a.bc_row, c * T, a.L - c * T);
  };
  load_chunk(nc - 1);
  float acs_next = t < T ? acs[(nc - 1) * T + t] : 0.f;

  const int pm = (warp >> 2) * 32, nn = (warp & 3) * 32;
  float dS[2][4][4];
  state_load(dS, gr.dfinal ? gr.dfinal + (b * a.H + h) * PN : nullptr, pm, nn, g, q);

  for (int64_t it = 0; it < nc; ++it) {
    const int64_t c = nc - 1 - it;
    float* const e = es[it & 1];
    if (t < T) e[t] = expf(acs_next);
    acs_next = c > 0 && t < T ? acs[(c - 1) * T + t] : 0.f;
    state_store<false>(dstates + ((b * nc + c) * a.H + h) * PN, N_, dS, pm, nn, g, q);
    cp_async_wait<0>();
    __syncthreads();  // e; every thread is done with the previous chunk's bf16 rows
    convert_rows(stu, stv, wuh, vh, [&](int r) { return e[r]; });
    if (c > 0)
      load_chunk(c - 1);
    else
      cp_async_commit();
    __syncthreads();  // the bf16 rows
    state_scale(dS, e[T - 1]);  // exp(Λ_c)
#pragma unroll
    for (int kk = 0; kk < T / 16; ++kk) state_kstep_bf16<LDU, LDV>(dS, wuh, vh, kk, pm, nn, lane);
  }
  cp_async_wait<0>();
  if (gr.dinit) state_store<false>(gr.dinit + (b * a.H + h) * PN, N_, dS, pm, nn, g, q);
}

// The two walks above on bf16 operands: the default since the H100 run of 2026-12-05 (the GPU
// tests pass with it; the 1.3B step 25,416 -> 26,010 tokens/s with DFSSM_SSD_BWD_TF32_TRUNC, and
// +537 tokens/s alone on the H200); DFSSM_SSD_STATES_BF16=0 keeps TF32. -1: not read yet.
int g_states_bf16 = -1;
bool states_bf16() {
  if (g_states_bf16 < 0) {
    const char* e = std::getenv("DFSSM_SSD_STATES_BF16");
    g_states_bf16 = e && std::string(e) == "0" ? 0 : 1;
  }
  return g_states_bf16 == 1;
}

int g_seq = -1;  // -1: not read yet
// ssd_scan_fwd_seq_cuda's kernel: version 1, 2, 3 (bf16 operands) or 4 (the default: version 3 on
// bf16 inputs, which the model gives it where in_proj's output is bf16; fp32 inputs run version 2,
// so an fp32 pass keeps fp32-class accuracy); -1: not read yet. Version 4 became the default after
// the H200 A/B of 2026-12-05 (docs/benchmarks.md: the 1.3B step 25,541 -> 26,939 tokens/s).
int g_seq_version = -1;
int seq_version() {
  if (g_seq_version < 0) {
    const char* v = std::getenv("DFSSM_SSD_SEQ_VERSION");
    const char* v1 = std::getenv("DFSSM_SSD_SEQ_V1");  // the older switch, still honoured
    const std::string s = v ? v : "";
    g_seq_version = s == "1" || s == "2" || s == "3" || s == "4" ? s[0] - '0' : v1 && std::string(v1) == "1" ? 1 : 4;
  }
  return g_seq_version;
}

bool aligned_to(const void* p, uintptr_t n) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

bool ssd_scan_seq_enabled() {
  if (g_seq < 0) {
    const char* e = std::getenv("DFSSM_SSD_FWD_SEQ");
    g_seq = e && std::string(e) == "0" ? 0 : 1;
  }
  return g_seq == 1;
}
void ssd_scan_set_seq(int on) { g_seq = on < 0 ? -1 : on ? 1 : 0; }
void ssd_scan_set_states_bf16(int on) { g_states_bf16 = on < 0 ? -1 : on ? 1 : 0; }
void ssd_scan_set_seq_version(int v) { g_seq_version = v < 0 ? -1 : v == 1 || v == 3 || v == 4 ? v : 2; }
int ssd_scan_seq_version() { return seq_version(); }

bool ssd_scan_states_seq_supported(const SsdScanArgs& a) {
  return ssd_scan_inputs_ok(a) && a.T == seq::T && a.final_state && aligned_to(a.init, 8) &&
         aligned_to(a.final_state, 8);
}

cudaError_t ssd_scan_states_seq_cuda(const SsdScanArgs& a, cudaStream_t stream) {
  if (!ssd_scan_states_seq_supported(a)) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.H), unsigned(a.batch));
  if (const auto e = states_bf16() ? launch_dyn(ssd_states_seq_bf16_kernel, grid, seqst3::kSmemBytes, stream, a)
                                   : launch_dyn(ssd_states_seq_kernel, grid, seqst::kSmemBytes, stream, a);
      e != cudaSuccess)
    return e;
  return ssd_chunk_cb64_cuda(a, a.workspace + a.acs_floats() + a.states_floats(), stream);
}

bool ssd_scan_dstates_seq_supported(const SsdScanArgs& a, const SsdScanGrads& g) {
  return ssd_scan_inputs_ok(a) && a.T == seq::T && g.dy && aligned_to(g.dy, 16) && aligned_to(g.dfinal, 8) &&
         aligned_to(g.dinit, 8);
}

cudaError_t ssd_scan_dstates_seq_cuda(const SsdScanArgs& a, const SsdScanGrads& g, float* dstates,
                                      cudaStream_t stream) {
  if (!ssd_scan_dstates_seq_supported(a, g) || !dstates) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.H), unsigned(a.batch));
  return states_bf16() ? launch_dyn(ssd_dstates_seq_bf16_kernel, grid, seqst3::kSmemBytes, stream, a, g, dstates)
                       : launch_dyn(ssd_dstates_seq_kernel, grid, seqst::kSmemBytes, stream, a, g, dstates);
}

bool ssd_scan_seq_supported(const SsdScanArgs& a) {
  // fp32 inputs: rows of 16-byte pieces; bf16 inputs (version 4): the same with 8 elements.
  const bool in_ok = a.x_bf16 ? a.B_bf16 && a.C_bf16 && a.x_row % 8 == 0 && a.bc_row % 8 == 0 &&
                                    aligned_to(a.x_bf16, 16) && aligned_to(a.B_bf16, 16) && aligned_to(a.C_bf16, 16)
                              : a.x && a.B && a.C && a.x_row % 4 == 0 && a.bc_row % 4 == 0 && aligned_to(a.x, 16) &&
                                    aligned_to(a.B, 16) && aligned_to(a.C, 16);
  return a.P == P_ && a.N == N_ && a.G > 0 && a.H > 0 && a.H % a.G == 0 && a.batch > 0 && a.batch <= 65535 &&
         a.L > 0 && in_ok && a.dt && a.A && (a.y || a.y_bf16) && a.final_state && a.workspace &&
         (a.L + 63) / 64 * a.G <= 65535 && aligned_to(a.workspace, 16) && aligned_to(a.init, 8) &&
         aligned_to(a.y, 8) && aligned_to(a.y_bf16, 4) && aligned_to(a.final_state, 8);
}

cudaError_t ssd_scan_fwd_seq_cuda(const SsdScanArgs& a, cudaStream_t stream) {
  if (!ssd_scan_seq_supported(a)) return cudaErrorInvalidValue;
  SsdScanArgs a64 = a;  // the kernels' own chunking
  a64.T = seq::T;
  const dim3 grid(unsigned(a.H), unsigned(a.batch));
  if (a.x_bf16) {  // bf16 inputs: version 4 whatever the version switch says
    const dim3 cb_grid(unsigned(a64.chunks() * a.G), unsigned(a.batch));
    if (const auto e = launch_dyn(chunk_cb_bf16_kernel, cb_grid, 0, stream, a64, a.workspace); e != cudaSuccess)
      return e;
    return launch_dyn(ssd_seq_bf16in_kernel, grid, seq4::kSmemBytes, stream, a64);
  }
  if (const auto e = ssd_chunk_cb64_cuda(a64, a.workspace, stream); e != cudaSuccess) return e;
  switch (seq_version()) {
    case 1: return launch_dyn(ssd_seq_kernel<false>, grid, seq::kSmemBytes, stream, a64);
    case 3: return launch_dyn(ssd_seq_bf16_kernel, grid, seq3::kSmemBytes, stream, a64);
    default: return launch_dyn(ssd_seq_kernel<true>, grid, seq::kSmemBytes, stream, a64);  // 2, and 4 on fp32
  }
}

}  // namespace dfssm::kernels
