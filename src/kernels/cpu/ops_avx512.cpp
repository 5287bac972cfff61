// AVX-512 kernels (F, BW, VL, DQ; VNNI for the int8 sign GEMM where the CPU has it). See ops.h
// for each op's definition and the memory layouts. This file is compiled with the AVX-512 flags
// and only called after the CPUID check (isa.h), which also guarantees AVX2 + FMA + F16C.
//
// Layouts, as in ops.h: activations fp32 row-major [T, ld]; packed sign rows are LSB-first bits,
// row r at codes + r*row_bytes (row_bytes a multiple of 8; bits past C ignored: the tail block is
// multiplied by a zero-padded copy of x); int8/fp16 weight rows [R, C] row-major; SSM state
// [H, P, N].
//
// What each op does here:
//   sign_gemm      two variants, picked by T (measured on a Sapphire Rapids-class Xeon):
//                  * T = 1, "masked add": 16 sign bits are a __mmask16, acc{k} += xb, so per 64
//                    bits and row 4 vaddps. That gives P = Σ_{bit=1} xb; y = a·(2P - Σ_c xb), with
//                    P's lanes and Σ xb reduced in fp64. Caveat: when the activations have a large
//                    mean relative to their spread, 2P - Σx cancels and the fp32 error of P grows
//                    by about |mean|/std (a few 1e-6 relative at |mean| = std, C = 4096).
//                    ~1.3-1.7x the blend variant at T = 1 (8 rows x 1 token tiles).
//                  * T > 1, "blend FMA": ±1 = blend(k, -1, +1) once per row and 16 weights, then
//                    one FMA per token (a direct signed sum: no cancellation); 4 rows x 4 tokens,
//                    ~1.1-1.3x the masked add there.
//                  Token tiles of 16: a row's bits are read from memory once per 16 tokens.
//   sign_gemm_i8   VNNI: the 64 bits of a row -> 0/1 bytes with one vmovdqu8{z} (shared by the
//                  tokens), then vpdpbusd with xq: P = Σ_{bit=1} xq, Σ s·xq = 2P - xsum (exact).
//                  Without VNNI (Skylake-X) the same with vpmaddubsw + vpmaddwd.
//   i8_rows_gemm / f16_rows_gemm   vpmovsxbd+vcvtdq2ps / vcvtph2ps on 16 weights, FMA; 4 rows x
//                  1-2 tokens; the C % 16 tail with masked loads.
//   ssm_step       16 states at a time, the same fp32 mul/mul/add as the ref (bit-identical
//                  state, fp32 or fp16 via vcvtps2ph round-to-nearest-even); masked tail.
//   quantize_rows_i8, lowrank_down, lowrank_up, conv_step_silu, gated_rmsnorm, add_rmsnorm:
//                  the AVX2 versions (O(n) per token or rank-19 wide: 512-bit buys nothing).
//
// Only internal-linkage helpers here (anonymous namespace, no header inline functions that
// could be emitted out of line with AVX-512 code and picked by the linker for other files).
// GCC 12's AVX-512 intrinsics (e.g. _mm512_undefined_ps: `__m512 __Y = __Y;`) trip
// -Wuninitialized / -Wmaybe-uninitialized at every use (GCC bug 105593): silenced for this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_bench.h"
#include "kernels/cpu/ops.h"

namespace dfssm::kernels::cpu {

namespace {

#define DFSSM_AINLINE inline __attribute__((always_inline))

int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Σ of the 16 fp32 lanes in fp64.
DFSSM_AINLINE double hsum16_pd(__m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

constexpr int kTokTile = 16;  // tokens per pass over the bits (bits re-read from L1 within a tile)

// ---- sign GEMM (fp32) ------------------------------------------------------------------------

// 64 weights of RT rows x TG tokens; xp[t] points at the 64 activations of token t.
// kMaskAdd: acc{bit} += x (P = Σ_{bit=1} x); else acc += blend(bit ? +1 : -1) * x.
template <bool kMaskAdd, int RT, int TG>
DFSSM_AINLINE void sg_block(__m512 (&acc)[RT][TG], const uint64_t (&w)[RT], const float* const (&xp)[TG]) {
  const __m512 pos = _mm512_set1_ps(1.0f), neg = _mm512_set1_ps(-1.0f);
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    __m512 x[TG];
#pragma GCC unroll 16
    for (int t = 0; t < TG; ++t) x[t] = _mm512_loadu_ps(xp[t] + 16 * q);
#pragma GCC unroll 16
    for (int i = 0; i < RT; ++i) {
      const __mmask16 k = _cvtu32_mask16(uint32_t(w[i] >> (16 * q)) & 0xffffu);
      if constexpr (kMaskAdd) {
#pragma GCC unroll 16
        for (int t = 0; t < TG; ++t) acc[i][t] = _mm512_mask_add_ps(acc[i][t], k, acc[i][t], x[t]);
      } else {
        const __m512 s = _mm512_mask_blend_ps(k, neg, pos);  // bit 1 -> +1
#pragma GCC unroll 16
        for (int t = 0; t < TG; ++t) acc[i][t] = _mm512_fmadd_ps(s, x[t], acc[i][t]);
      }
    }
  }
}

struct SgCtx {
  const SignGemmArgs* a;
  int64_t nfull;          // full 64-weight blocks
  bool tail;              // C % 64 != 0: one more block from the padded copy
  int64_t t0;             // first token of the tile
  const float* tailx;     // [kTokTile, 64] zero-padded last C % 64 activations
  const double* xtotal;   // [kTokTile] Σ_c xb[t, c] (mask-add variant)
};

template <bool kMaskAdd, int RT, int TG>
void sg_tile(const SgCtx& c, int64_t r, int64_t t) {
  const SignGemmArgs& a = *c.a;
  __m512 acc[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc[i][j] = _mm512_setzero_ps();
  const uint8_t* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = a.codes + (r + i) * a.row_bytes;
  const float* xb[TG];
  for (int j = 0; j < TG; ++j) xb[j] = a.xb + (t + j) * a.ldx;
  for (int64_t kb = 0; kb < c.nfull; ++kb) {
    uint64_t w[RT];
    for (int i = 0; i < RT; ++i) std::memcpy(&w[i], rows[i] + kb * 8, 8);
    const float* xp[TG];
    for (int j = 0; j < TG; ++j) xp[j] = xb[j] + kb * 64;
    sg_block<kMaskAdd, RT, TG>(acc, w, xp);
  }
  if (c.tail) {
    uint64_t w[RT];
    for (int i = 0; i < RT; ++i) std::memcpy(&w[i], rows[i] + c.nfull * 8, 8);
    const float* xp[TG];
    for (int j = 0; j < TG; ++j) xp[j] = c.tailx + (t + j - c.t0) * 64;
    sg_block<kMaskAdd, RT, TG>(acc, w, xp);
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) {
      float v;
      if constexpr (kMaskAdd) v = float(double(a.a[r + i]) * (2.0 * hsum16_pd(acc[i][j]) - c.xtotal[t + j - c.t0]));
      else v = a.a[r + i] * _mm512_reduce_add_ps(acc[i][j]);
      a.y[(t + j) * a.ldy + r + i] = v;
    }
}

template <bool kMaskAdd>
void sign_gemm_impl(const SignGemmArgs& a) {
  SgCtx c{&a, a.C / 64, (a.C % 64) != 0, 0, nullptr, nullptr};
  alignas(64) float tailx[kTokTile * 64];
  double xtotal[kTokTile];
  c.tailx = tailx;
  c.xtotal = xtotal;
  for (int64_t t0 = 0; t0 < a.T; t0 += kTokTile) {
    const int64_t nt = min64(kTokTile, a.T - t0);
    c.t0 = t0;
    if (c.tail) {
      const int64_t rem = a.C % 64;
      for (int64_t j = 0; j < nt; ++j) {
        std::memcpy(tailx + j * 64, a.xb + (t0 + j) * a.ldx + c.nfull * 64, size_t(rem) * 4);
        std::memset(tailx + j * 64 + rem, 0, size_t(64 - rem) * 4);
      }
    }
    if constexpr (kMaskAdd) {
      for (int64_t j = 0; j < nt; ++j) {
        const float* x = a.xb + (t0 + j) * a.ldx;
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        int64_t cc = 0;
        for (; cc + 16 <= a.C; cc += 16) {
          const __m512 v = _mm512_loadu_ps(x + cc);
          s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
          s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
        }
        double s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
        for (; cc < a.C; ++cc) s += x[cc];
        xtotal[j] = s;
      }
    }
    int64_t r = a.r0;
    if (nt == 1) {
      for (; r + 8 <= a.r1; r += 8) sg_tile<kMaskAdd, 8, 1>(c, r, t0);
      for (; r < a.r1; ++r) sg_tile<kMaskAdd, 1, 1>(c, r, t0);
      continue;
    }
    for (; r + 4 <= a.r1; r += 4) {
      int64_t t = t0;
      for (; t + 4 <= t0 + nt; t += 4) sg_tile<kMaskAdd, 4, 4>(c, r, t);
      for (; t < t0 + nt; ++t) sg_tile<kMaskAdd, 4, 1>(c, r, t);
    }
    for (; r < a.r1; ++r) {
      int64_t t = t0;
      for (; t + 4 <= t0 + nt; t += 4) sg_tile<kMaskAdd, 1, 4>(c, r, t);
      for (; t < t0 + nt; ++t) sg_tile<kMaskAdd, 1, 1>(c, r, t);
    }
  }
}

// ---- sign GEMM (int8 activations) --------------------------------------------------------------

struct Sg8Ctx {
  const SignGemmI8Args* a;
  int64_t nfull;
  bool tail;
  int64_t t0;
  const int8_t* tailx;  // [kTokTile, 64]
};

// acc += Σ over groups of 4 bytes of m (u8, 0/1) * x (s8).
template <bool kVnni>
DFSSM_AINLINE __m512i dot_u8s8(__m512i acc, __m512i m, __m512i x) {
  if constexpr (kVnni) return _mm512_dpbusd_epi32(acc, m, x);
  else return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(m, x), _mm512_set1_epi16(1)));
}

template <bool kVnni, int RT, int TG>
void sg8_tile(const Sg8Ctx& c, int64_t r, int64_t t) {
  const SignGemmI8Args& a = *c.a;
  const __m512i ones8 = _mm512_set1_epi8(1);
  __m512i acc[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc[i][j] = _mm512_setzero_si512();
  const uint8_t* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = a.codes + (r + i) * a.row_bytes;
  const int8_t* xb[TG];
  for (int j = 0; j < TG; ++j) xb[j] = a.xq + (t + j) * a.ldx;
  const int64_t nblocks = c.nfull + (c.tail ? 1 : 0);
  for (int64_t kb = 0; kb < nblocks; ++kb) {
    __m512i x[TG];
#pragma GCC unroll 16
    for (int j = 0; j < TG; ++j)
      x[j] = _mm512_loadu_si512(kb < c.nfull ? static_cast<const void*>(xb[j] + kb * 64)
                                             : static_cast<const void*>(c.tailx + (t + j - c.t0) * 64));
#pragma GCC unroll 16
    for (int i = 0; i < RT; ++i) {
      uint64_t w;
      std::memcpy(&w, rows[i] + kb * 8, 8);
      const __m512i m = _mm512_maskz_mov_epi8(_cvtu64_mask64(w), ones8);  // byte k = bit k
#pragma GCC unroll 16
      for (int j = 0; j < TG; ++j) acc[i][j] = dot_u8s8<kVnni>(acc[i][j], m, x[j]);
    }
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) {
      const int32_t s = 2 * _mm512_reduce_add_epi32(acc[i][j]) - a.xsum[t + j];
      a.y[(t + j) * a.ldy + r + i] = a.a[r + i] * (a.xs[t + j] * float(s));
    }
}

template <bool kVnni>
void sign_gemm_i8_impl(const SignGemmI8Args& a) {
  Sg8Ctx c{&a, a.C / 64, (a.C % 64) != 0, 0, nullptr};
  alignas(64) int8_t tailx[kTokTile * 64];
  c.tailx = tailx;
  for (int64_t t0 = 0; t0 < a.T; t0 += kTokTile) {
    const int64_t nt = min64(kTokTile, a.T - t0);
    c.t0 = t0;
    if (c.tail) {
      const int64_t rem = a.C % 64;
      for (int64_t j = 0; j < nt; ++j) {
        std::memcpy(tailx + j * 64, a.xq + (t0 + j) * a.ldx + c.nfull * 64, size_t(rem));
        std::memset(tailx + j * 64 + rem, 0, size_t(64 - rem));
      }
    }
    int64_t r = a.r0;
    if (nt == 1) {
      for (; r + 8 <= a.r1; r += 8) sg8_tile<kVnni, 8, 1>(c, r, t0);
      for (; r < a.r1; ++r) sg8_tile<kVnni, 1, 1>(c, r, t0);
      continue;
    }
    for (; r + 4 <= a.r1; r += 4) {
      int64_t t = t0;
      for (; t + 4 <= t0 + nt; t += 4) sg8_tile<kVnni, 4, 4>(c, r, t);
      for (; t < t0 + nt; ++t) sg8_tile<kVnni, 4, 1>(c, r, t);
    }
    for (; r < a.r1; ++r)
      for (int64_t t = t0; t < t0 + nt; ++t) sg8_tile<kVnni, 1, 1>(c, r, t);
  }
}

// ---- int8 / fp16 rows GEMM ---------------------------------------------------------------------

struct I8Rows {
  using W = int8_t;
  static DFSSM_AINLINE __m512 load16(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static DFSSM_AINLINE __m512 load16_masked(const int8_t* p, __mmask16 k) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, p)));
  }
};
struct F16Rows {
  using W = uint16_t;
  static DFSSM_AINLINE __m512 load16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static DFSSM_AINLINE __m512 load16_masked(const uint16_t* p, __mmask16 k) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
  }
};

template <class L, int RT, int TG>
void rows_tile(const typename L::W* w, const float* scale, const float* x, int64_t ldx, float* y, int64_t ldy,
               int64_t C, int64_t r, int64_t t) {
  __m512 acc[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc[i][j] = _mm512_setzero_ps();
  const typename L::W* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = w + (r + i) * C;
  const float* xs[TG];
  for (int j = 0; j < TG; ++j) xs[j] = x + (t + j) * ldx;
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    __m512 xv[TG];
#pragma GCC unroll 8
    for (int j = 0; j < TG; ++j) xv[j] = _mm512_loadu_ps(xs[j] + c);
#pragma GCC unroll 8
    for (int i = 0; i < RT; ++i) {
      const __m512 wv = L::load16(rows[i] + c);
#pragma GCC unroll 8
      for (int j = 0; j < TG; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  if (c < C) {  // masked tail: masked-off lanes are neither read nor counted
    const __mmask16 k = _cvtu32_mask16((1u << (C - c)) - 1u);
    __m512 xv[TG];
    for (int j = 0; j < TG; ++j) xv[j] = _mm512_maskz_loadu_ps(k, xs[j] + c);
    for (int i = 0; i < RT; ++i) {
      const __m512 wv = L::load16_masked(rows[i] + c, k);
      for (int j = 0; j < TG; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) {
      const float s = _mm512_reduce_add_ps(acc[i][j]);
      y[(t + j) * ldy + r + i] = scale ? scale[r + i] * s : s;
    }
}

template <class L>
void rows_gemm(const typename L::W* w, const float* scale, const float* x, int64_t ldx, float* y, int64_t ldy,
               int64_t T, int64_t C, int64_t r0, int64_t r1) {
  constexpr int64_t TT = kTokTile;
  for (int64_t t0 = 0; t0 < T; t0 += TT) {
    const int64_t t1 = min64(T, t0 + TT);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
      int64_t t = t0;
      for (; t + 2 <= t1; t += 2) rows_tile<L, 4, 2>(w, scale, x, ldx, y, ldy, C, r, t);
      if (t < t1) rows_tile<L, 4, 1>(w, scale, x, ldx, y, ldy, C, r, t);
    }
    for (; r < r1; ++r)
      for (int64_t t = t0; t < t1; ++t) rows_tile<L, 1, 1>(w, scale, x, ldx, y, ldy, C, r, t);
  }
}

void i8_rows_gemm_avx512(const I8RowsGemmArgs& a) {
  rows_gemm<I8Rows>(a.q, a.scale, a.x, a.ldx, a.y, a.ldy, a.T, a.C, a.r0, a.r1);
}
void f16_rows_gemm_avx512(const F16RowsGemmArgs& a) {
  rows_gemm<F16Rows>(a.w, nullptr, a.x, a.ldx, a.y, a.ldy, a.T, a.C, a.r0, a.r1);
}

// ---- SSM step ----------------------------------------------------------------------------------

// One group of 16 states (k: the lanes in range): s = old·dA + xdt·B (the ref's fp32 operations),
// stored (fp32, or fp16 rounded to nearest even and read back); returns C ⊙ s.
template <bool kF16>
DFSSM_AINLINE __m512 ssm16(const SsmStepArgs& a, int64_t i, const float* B, const float* Cm, __m512 vdA,
                           __m512 vxdt, __mmask16 k) {
  __m512 old;
  if constexpr (kF16) old = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, a.state_f16 + i));
  else old = _mm512_maskz_loadu_ps(k, a.state + i);
  __m512 s = _mm512_add_ps(_mm512_mul_ps(old, vdA), _mm512_mul_ps(vxdt, _mm512_maskz_loadu_ps(k, B)));
  if constexpr (kF16) {
    const __m256i hs = _mm512_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(a.state_f16 + i, k, hs);
    s = _mm512_cvtph_ps(hs);
  } else {
    _mm512_mask_storeu_ps(a.state + i, k, s);
  }
  return _mm512_mul_ps(_mm512_maskz_loadu_ps(k, Cm), s);
}

template <bool kF16>
void ssm_rows(const SsmStepArgs& a) {
  const int64_t hpg = a.H / a.G, PN = a.P * a.N;
  const __mmask16 all = _cvtu32_mask16(0xffffu);
  for (int64_t h = a.h0; h < a.h1; ++h) {
    const float dt = std::fmin(std::fmax(softplus20(a.dt_raw[h] + a.dt_bias[h]), a.dt_min), a.dt_max);
    const float dA = std::exp(dt * a.A[h]);
    const float* B = a.B + (h / hpg) * a.N;
    const float* Cm = a.C + (h / hpg) * a.N;
    const __m512 vdA = _mm512_set1_ps(dA);
    for (int64_t p = 0; p < a.P; ++p) {
      const float xv = a.x[h * a.P + p];
      const __m512 vxdt = _mm512_set1_ps(xv * dt);
      const int64_t base = h * PN + p * a.N;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
      int64_t n = 0;
      for (; n + 32 <= a.N; n += 32) {
        acc0 = _mm512_add_ps(acc0, ssm16<kF16>(a, base + n, B + n, Cm + n, vdA, vxdt, all));
        acc1 = _mm512_add_ps(acc1, ssm16<kF16>(a, base + n + 16, B + n + 16, Cm + n + 16, vdA, vxdt, all));
      }
      for (; n < a.N; n += 16) {
        const __mmask16 k = a.N - n >= 16 ? all : _cvtu32_mask16((1u << (a.N - n)) - 1u);
        acc0 = _mm512_add_ps(acc0, ssm16<kF16>(a, base + n, B + n, Cm + n, vdA, vxdt, k));
      }
      a.y[h * a.P + p] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + a.D[h] * xv;
    }
  }
}

void ssm_step_avx512(const SsmStepArgs& a) {
  if (a.state) ssm_rows<false>(a);
  else ssm_rows<true>(a);
}

// ---- sign GEMM on int16 activations ----------------------------------------------------------
// Per 32 weights of a row: the 32 sign bits become a __mmask32 and vpmovm2w turns it into -1 /
// 0 int16 lanes; vpmaddwd with the activations sums -x over the set bits (acc = -P), shared by
// the TG tokens. Σ s·x = 2P - X = -2·acc - xsum.
template <int RT, int TG>
DFSSM_AINLINE void sg16_tile(const SignGemmI16Args& a, int64_t r, int64_t t, int64_t Cp) {
  __m512i acc[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc[i][j] = _mm512_setzero_si512();
  const uint8_t* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = a.codes + (r + i) * a.row_bytes;
  for (int64_t c = 0; c < Cp; c += 32) {
    __m512i xv[TG];
    for (int j = 0; j < TG; ++j) xv[j] = _mm512_loadu_si512(a.xq + (t + j) * a.ldx + c);
    for (int i = 0; i < RT; ++i) {
      uint32_t bits;
      std::memcpy(&bits, rows[i] + (c >> 3), 4);
      const __m512i m = _mm512_movm_epi16(_cvtu32_mask32(bits));
      for (int j = 0; j < TG; ++j) acc[i][j] = _mm512_add_epi32(acc[i][j], _mm512_madd_epi16(m, xv[j]));
    }
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) {
      const int64_t sx = -2 * int64_t(_mm512_reduce_add_epi32(acc[i][j])) - a.xsum[t + j];
      a.y[(t + j) * a.ldy + r + i] = a.a[r + i] * (a.xs[t + j] * float(sx));
    }
}

void sign_gemm_i16_movm(const SignGemmI16Args& a) {
  const int64_t Cp = (a.C + 31) / 32 * 32;  // <= row_bytes * 8 and x is zero-padded to it (ops.h)
  int64_t r = a.r0;
  if (a.T == 1) {
    for (; r + 8 <= a.r1; r += 8) sg16_tile<8, 1>(a, r, 0, Cp);
    for (; r < a.r1; ++r) sg16_tile<1, 1>(a, r, 0, Cp);
    return;
  }
  for (; r + 4 <= a.r1; r += 4) {
    int64_t t = 0;
    for (; t + 4 <= a.T; t += 4) sg16_tile<4, 4>(a, r, t, Cp);
    for (; t < a.T; ++t) sg16_tile<4, 1>(a, r, t, Cp);
  }
  for (; r < a.r1; ++r)
    for (int64_t t = 0; t < a.T; ++t) sg16_tile<1, 1>(a, r, t, Cp);
}

KernelTable make_table() {
  const KernelTable& v2 = kernel_table_avx2();  // AVX-512 CPUs have AVX2 + FMA + F16C (isa.cpp)
  KernelTable t = v2;
  t.isa = Isa::Avx512;
  t.sign_gemm = sign_gemm_avx512;
  t.sign_gemm_i8 = cpu_has_avx512_vnni() ? sign_gemm_i8_avx512_vnni : sign_gemm_i8_avx512_bw;
  t.i8_rows_gemm = i8_rows_gemm_avx512;
  t.f16_rows_gemm = f16_rows_gemm_avx512;
  t.ssm_step = ssm_step_avx512;
  // sign_gemm_i16 stays the AVX2 kernel: the movm + vpmaddwd version below measured 2x slower on
  // a Sapphire Rapids-class Xeon (kernel_bench "avx512 i16 movm+maddwd"; reason not found yet).
  return t;
}

}  // namespace

void sign_gemm_avx512_maskadd(const SignGemmArgs& a) { sign_gemm_impl<true>(a); }
void sign_gemm_avx512(const SignGemmArgs& a) {
  if (a.T == 1) sign_gemm_impl<true>(a);
  else sign_gemm_impl<false>(a);
}
void sign_gemm_avx512_blendfma(const SignGemmArgs& a) { sign_gemm_impl<false>(a); }
void sign_gemm_i8_avx512_vnni(const SignGemmI8Args& a) { sign_gemm_i8_impl<true>(a); }
void sign_gemm_i8_avx512_bw(const SignGemmI8Args& a) { sign_gemm_i8_impl<false>(a); }
void sign_gemm_i16_avx512_movm(const SignGemmI16Args& a) { sign_gemm_i16_movm(a); }

const KernelTable& kernel_table_avx512() {
  static const KernelTable t = make_table();
  return t;
}

}  // namespace dfssm::kernels::cpu
