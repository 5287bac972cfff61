// AVX2 + FMA + F16C kernels (see ops.h for each op's definition and the memory layouts; this
// file is compiled with -mavx2 -mfma -mf16c -mbmi2 and only called after the CPUID check).
//
// Layouts, as in ops.h: activations fp32 row-major [T, ld]; packed sign rows are LSB-first bits,
// row r at codes + r*row_bytes (row_bytes a multiple of 8, pad bits past C ignored: the tail block
// is multiplied by a zero-padded copy of x); int8/fp16 weight rows [R, C] row-major; SSM state
// [H, P, N]; conv state / weights tap-major [K, D].
//
// What each op does here:
//   sign_gemm      fp32, 64 weights (one uint64 of bits) per row per step. The sign of 8 weights
//                  comes from a 256 x 8 table of ±1.0f indexed by the bits byte, then one FMA with
//                  xb (direct signed sum, no cancellation). Tiles: 8 rows x 1 token at T = 1, 4
//                  rows x 2 tokens otherwise, inside token tiles of 16 so a row's bits are read
//                  from memory once per 16 tokens. A variant with the sllv/blendv sign-bit trick is
//                  kept for kernel_bench (sign_gemm_avx2_sllv): the table is 1.3-2x faster both on
//                  this project's AMD EPYC (AVX2) host and on a Sapphire Rapids-class Xeon.
//   sign_gemm_i8   the bits expanded to 0/1 bytes (vpshufb/vpand/vpminub, shared by the tokens),
//                  then vpmaddubsw with xq into int16 (flushed to int32 every 4096 weights):
//                  P = Σ_{bit=1} xq exactly, Σ s·xq = 2P - xsum. Integer-exact like the ref.
//                  About 1.5-2x the fp32 table path at T = 1 and 2x at T >= 8 (kernel_bench), at
//                  the cost of the int8 activation error (~1e-2 relative, tests/test_cpu_kernels).
//   i8_rows_gemm / f16_rows_gemm   vpmovsxbd+cvtdq2ps / vcvtph2ps then FMA; 4 rows x 1-2 tokens.
//   lowrank_down   per 8 ranks: FMA of the int8 row of v (converted) with broadcast x[t, c].
//   lowrank_up     8 rows at a time: per row the rank-wide products, then an hadd-tree transpose.
//   ssm_step       over n, 8 at a time, the same fp32 operations (mul, mul, add) as the ref, so
//                  the state is bit-identical; y is an fp32 FMA sum (the ref sums in fp64).
//   conv_step_silu the tap sum in fp64 vectors (bit-identical to the ref), scalar SiLU.
//   gated_rmsnorm / add_rmsnorm / quantize_rows_i8   vectorized, same formulas as the ref.
//
// Only internal-linkage helpers here (anonymous namespace, no header inline functions that
// could be emitted out of line with AVX2 code and picked by the linker for other files).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/kernel_bench.h"
#include "kernels/cpu/ops.h"

namespace dfssm::kernels::cpu {

namespace {

#define DFSSM_AINLINE inline __attribute__((always_inline))

DFSSM_AINLINE float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

DFSSM_AINLINE int32_t hsum8_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

DFSSM_AINLINE double hsum4d(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

// 8 vectors -> one vector of their 8 horizontal sums (lane i = Σ v[i]).
DFSSM_AINLINE __m256 hsum8x8(const __m256 (&v)[8]) {
  const __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

float silu_l(float x) { return x / (1.0f + std::exp(-x)); }
float f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
uint16_t f32_to_f16(float f) { return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }
int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- sign GEMM (fp32) ------------------------------------------------------------------------

struct SignLut {
  alignas(32) float v[256][8];
};
constexpr SignLut make_sign_lut() {
  SignLut l{};
  for (int b = 0; b < 256; ++b)
    for (int i = 0; i < 8; ++i) l.v[b][i] = ((b >> i) & 1) ? 1.0f : -1.0f;
  return l;
}
alignas(64) constexpr SignLut kSignLut = make_sign_lut();

constexpr int kTokTile = 16;  // tokens per pass over the bits (bits re-read from L1 within a tile)

// 64 weights of RT rows x TG tokens. xp[t] points at the 64 activations of token t.
// bp[i] points at row i's 8 bytes of bits for this block (the table variant reads them byte by
// byte: a movzx load and a shift per 8 weights, cheaper than extracting bytes from a register).
template <bool kLut, int RT, int TG>
DFSSM_AINLINE void sg_block(__m256 (&acc)[RT][TG], const uint8_t* const (&bp)[RT], const float* const (&xp)[TG]) {
  if constexpr (kLut) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      __m256 x[TG];
#pragma GCC unroll 16
      for (int t = 0; t < TG; ++t) x[t] = _mm256_loadu_ps(xp[t] + 8 * j);
#pragma GCC unroll 16
      for (int i = 0; i < RT; ++i) {
        const __m256 s = _mm256_load_ps(kSignLut.v[bp[i][j]]);
#pragma GCC unroll 16
        for (int t = 0; t < TG; ++t) acc[i][t] = _mm256_fmadd_ps(s, x[t], acc[i][t]);
      }
    }
  } else {
    // sllv puts bit (8j + l) of the broadcast 32-bit half at the sign bit of lane l; blendv picks
    // x there (bit 1) and -x elsewhere.
    const __m256i sh = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256 sign = _mm256_set1_ps(-0.0f);
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      __m256i bc[RT];
#pragma GCC unroll 16
      for (int i = 0; i < RT; ++i) {
        uint32_t w32;
        std::memcpy(&w32, bp[i] + 4 * half, 4);
        bc[i] = _mm256_set1_epi32(int(w32));
      }
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        __m256 x[TG], nx[TG];
#pragma GCC unroll 16
        for (int t = 0; t < TG; ++t) {
          x[t] = _mm256_loadu_ps(xp[t] + 32 * half + 8 * j);
          nx[t] = _mm256_xor_ps(x[t], sign);
        }
        const __m256i shj = _mm256_sub_epi32(sh, _mm256_set1_epi32(8 * j));
#pragma GCC unroll 16
        for (int i = 0; i < RT; ++i) {
          const __m256 m = _mm256_castsi256_ps(_mm256_sllv_epi32(bc[i], shj));
#pragma GCC unroll 16
          for (int t = 0; t < TG; ++t) acc[i][t] = _mm256_add_ps(acc[i][t], _mm256_blendv_ps(nx[t], x[t], m));
        }
      }
    }
  }
}

struct SgCtx {
  const SignGemmArgs* a;
  int64_t nfull;       // full 64-weight blocks
  bool tail;           // C % 64 != 0: one more block from the padded copy
  int64_t t0;          // first token of the tile
  const float* tailx;  // [kTokTile, 64] zero-padded last C % 64 activations of the tile's tokens
};

template <bool kLut, int RT, int TG>
void sg_tile(const SgCtx& c, int64_t r, int64_t t) {
  const SignGemmArgs& a = *c.a;
  __m256 acc[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc[i][j] = _mm256_setzero_ps();
  const uint8_t* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = a.codes + (r + i) * a.row_bytes;
  const float* xb[TG];
  for (int j = 0; j < TG; ++j) xb[j] = a.xb + (t + j) * a.ldx;
  for (int64_t kb = 0; kb < c.nfull; ++kb) {
    const uint8_t* bp[RT];
    for (int i = 0; i < RT; ++i) bp[i] = rows[i] + kb * 8;
    const float* xp[TG];
    for (int j = 0; j < TG; ++j) xp[j] = xb[j] + kb * 64;
    sg_block<kLut, RT, TG>(acc, bp, xp);
  }
  if (c.tail) {
    const uint8_t* bp[RT];
    for (int i = 0; i < RT; ++i) bp[i] = rows[i] + c.nfull * 8;
    const float* xp[TG];
    for (int j = 0; j < TG; ++j) xp[j] = c.tailx + (t + j - c.t0) * 64;
    sg_block<kLut, RT, TG>(acc, bp, xp);
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) a.y[(t + j) * a.ldy + r + i] = a.a[r + i] * hsum8(acc[i][j]);
}

template <bool kLut>
void sign_gemm_impl(const SignGemmArgs& a) {
  SgCtx c{&a, a.C / 64, (a.C % 64) != 0, 0, nullptr};
  alignas(32) float tailx[kTokTile * 64];
  c.tailx = tailx;
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
    int64_t r = a.r0;
    if (nt == 1) {
      for (; r + 8 <= a.r1; r += 8) sg_tile<kLut, 8, 1>(c, r, t0);
      for (; r < a.r1; ++r) sg_tile<kLut, 1, 1>(c, r, t0);
      continue;
    }
    for (; r + 4 <= a.r1; r += 4) {
      int64_t t = t0;
      for (; t + 2 <= t0 + nt; t += 2) sg_tile<kLut, 4, 2>(c, r, t);
      if (t < t0 + nt) sg_tile<kLut, 4, 1>(c, r, t);
    }
    for (; r < a.r1; ++r) {
      int64_t t = t0;
      for (; t + 4 <= t0 + nt; t += 4) sg_tile<kLut, 1, 4>(c, r, t);
      for (; t < t0 + nt; ++t) sg_tile<kLut, 1, 1>(c, r, t);
    }
  }
}

// ---- sign GEMM (int8 activations, vpmaddubsw) ------------------------------------------------

// 32 bits -> 32 bytes of 0/1 (byte k = bit k).
DFSSM_AINLINE __m256i expand_bits32(uint32_t b) {
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i sel = _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128,  //
                                       1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(b)), shuf);
  return _mm256_min_epu8(_mm256_and_si256(v, sel), _mm256_set1_epi8(1));
}

struct Sg8Ctx {
  const SignGemmI8Args* a;
  int64_t nfull;
  bool tail;
  int64_t t0;
  const int8_t* tailx;  // [kTokTile, 64]
};

template <int RT, int TG>
DFSSM_AINLINE void sg8_block(__m256i (&acc16)[RT][TG], const uint64_t (&w)[RT], const int8_t* const (&xp)[TG]) {
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    __m256i x[TG];
#pragma GCC unroll 16
    for (int t = 0; t < TG; ++t) x[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp[t] + 32 * half));
#pragma GCC unroll 16
    for (int i = 0; i < RT; ++i) {
      const __m256i m = expand_bits32(uint32_t(w[i] >> (32 * half)));
#pragma GCC unroll 16
      for (int t = 0; t < TG; ++t) acc16[i][t] = _mm256_add_epi16(acc16[i][t], _mm256_maddubs_epi16(m, x[t]));
    }
  }
}

template <int RT, int TG>
void sg8_tile(const Sg8Ctx& c, int64_t r, int64_t t) {
  const SignGemmI8Args& a = *c.a;
  __m256i acc16[RT][TG], acc32[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc16[i][j] = acc32[i][j] = _mm256_setzero_si256();
  const __m256i ones16 = _mm256_set1_epi16(1);
  const uint8_t* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = a.codes + (r + i) * a.row_bytes;
  const int8_t* xb[TG];
  for (int j = 0; j < TG; ++j) xb[j] = a.xq + (t + j) * a.ldx;
  const int64_t nblocks = c.nfull + (c.tail ? 1 : 0);
  // Prefetch the tile two tiles ahead, one line per block (as in sg16_tile: the RT interleaved
  // row streams defeat the hardware prefetchers). Only the first token tile streams from memory.
  const char* pf = reinterpret_cast<const char*>(a.codes + (r + 2 * RT) * a.row_bytes);
  const int64_t pf_lines = t == c.t0 ? RT * a.row_bytes / 64 : 0;
  // An int16 lane gains at most 2 * 254 per block: flush every 64 blocks (32512 < 32767).
  for (int64_t kb0 = 0; kb0 < nblocks; kb0 += 64) {
    const int64_t kb1 = min64(nblocks, kb0 + 64);
    for (int64_t kb = kb0; kb < kb1; ++kb) {
      if (kb < pf_lines) _mm_prefetch(pf + kb * 64, _MM_HINT_T0);
      if (kb + nblocks < pf_lines) _mm_prefetch(pf + (kb + nblocks) * 64, _MM_HINT_T0);
      uint64_t w[RT];
      for (int i = 0; i < RT; ++i) std::memcpy(&w[i], rows[i] + kb * 8, 8);
      const int8_t* xp[TG];
      for (int j = 0; j < TG; ++j) xp[j] = kb < c.nfull ? xb[j] + kb * 64 : c.tailx + (t + j - c.t0) * 64;
      sg8_block<RT, TG>(acc16, w, xp);
    }
    for (int i = 0; i < RT; ++i)
      for (int j = 0; j < TG; ++j) {
        acc32[i][j] = _mm256_add_epi32(acc32[i][j], _mm256_madd_epi16(acc16[i][j], ones16));
        acc16[i][j] = _mm256_setzero_si256();
      }
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) {
      const int32_t s = 2 * hsum8_epi32(acc32[i][j]) - a.xsum[t + j];
      a.y[(t + j) * a.ldy + r + i] = a.a[r + i] * (a.xs[t + j] * float(s));
    }
}

void sign_gemm_i8_avx2(const SignGemmI8Args& a) {
  Sg8Ctx c{&a, a.C / 64, (a.C % 64) != 0, 0, nullptr};
  alignas(32) int8_t tailx[kTokTile * 64];
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
    for (; r + 4 <= a.r1; r += 4) {
      int64_t t = t0;
      for (; t + 2 <= t0 + nt; t += 2) sg8_tile<4, 2>(c, r, t);
      if (t < t0 + nt) sg8_tile<4, 1>(c, r, t);
    }
    for (; r < a.r1; ++r)
      for (int64_t t = t0; t < t0 + nt; ++t) sg8_tile<1, 1>(c, r, t);
  }
}

// ---- quantize_rows_i8 --------------------------------------------------------------------------

void quantize_rows_i8_avx2(const QuantizeI8Args& a) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t t = 0; t < a.T; ++t) {
    const float* x = a.x + t * a.ldx;
    int8_t* q = a.xq + t * a.ldq;
    __m256 mv = _mm256_setzero_ps();
    int64_t c = 0;
    // max_ps/min_ps return their second operand when either is NaN: the orders below ignore NaN
    // in the max and send a NaN activation to +127, exactly as the ref's fmax/fmin do.
    for (; c + 8 <= a.C; c += 8) mv = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + c), absmask), mv);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float m = _mm_cvtss_f32(m4);
    for (; c < a.C; ++c) m = std::fmax(m, std::fabs(x[c]));
    const float s = m > 0 ? m / 127.f : 1.f;
    const float inv = 1.f / s;
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    __m256i vsum = _mm256_setzero_si256();
    c = 0;
    for (; c + 8 <= a.C; c += 8) {
      __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + c), vinv), _MM_FROUND_CUR_DIRECTION);
      v = _mm256_max_ps(_mm256_min_ps(v, hi), lo);
      const __m256i i32 = _mm256_cvtps_epi32(v);
      vsum = _mm256_add_epi32(vsum, i32);
      const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + c), _mm_packs_epi16(p16, p16));
    }
    int32_t sum = hsum8_epi32(vsum);
    for (; c < a.C; ++c) {
      const float r = std::nearbyint(x[c] * inv);
      const int8_t v = int8_t(std::fmax(-127.f, std::fmin(127.f, r)));
      q[c] = v;
      sum += v;
    }
    a.xs[t] = s;
    a.xsum[t] = sum;
  }
}

// ---- low-rank correction -----------------------------------------------------------------------

// 8 int8 -> 8 floats.
DFSSM_AINLINE __m256 cvt8_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

void lowrank_down_avx2(const LowRankDownArgs& a) {
  const int64_t total = a.C * a.rank;
  constexpr int TG = 8;
  for (int64_t t0 = 0; t0 < a.T; t0 += TG) {
    const int nt = int(min64(TG, a.T - t0));
    for (int64_t k0 = 0; k0 < a.rank; k0 += 8) {
      __m256 acc[TG];
      for (int j = 0; j < TG; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t c = 0; c < a.C; ++c) {
        const int64_t off = c * a.rank + k0;
        __m256 w;
        if (off + 8 <= total) {
          w = cvt8_i8(a.v + off);
        } else {  // the last row's last group: do not read past v
          int8_t tmp[8] = {};
          std::memcpy(tmp, a.v + off, size_t(total - off));
          w = cvt8_i8(tmp);
        }
        if (nt == TG) {
#pragma GCC unroll 8
          for (int j = 0; j < TG; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(a.x + (t0 + j) * a.ldx + c), acc[j]);
        } else {
          for (int j = 0; j < nt; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_broadcast_ss(a.x + (t0 + j) * a.ldx + c), acc[j]);
        }
      }
      const int kn = int(min64(8, a.rank - k0));
      for (int j = 0; j < nt; ++j) {
        alignas(32) float o[8];
        _mm256_store_ps(o, acc[j]);
        for (int k = 0; k < kn; ++k) a.z[(t0 + j) * a.rank + k0 + k] = a.vs[k0 + k] * o[k];
      }
    }
  }
}

constexpr int64_t kMaxRank = 256;  // wider ranks fall back to the reference

void lowrank_up_avx2(const LowRankUpArgs& a) {
  if (a.rank > kMaxRank || a.rank <= 0) return lowrank_up_ref(a);
  const int64_t ng = (a.rank + 7) / 8;  // 8-wide groups of k
  const int64_t end = a.r1 * a.rank;    // rows < r1 exist: never read past row r1 - 1
  alignas(32) float wz[kMaxRank];
  for (int64_t t = 0; t < a.T; ++t) {
    for (int64_t k = 0; k < ng * 8; ++k) wz[k] = k < a.rank ? a.us[k] * a.z[t * a.rank + k] : 0.f;
    float* y = a.y + t * a.ldy;
    auto row_dot = [&](int64_t r) {
      __m256 s = _mm256_setzero_ps();
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t off = r * a.rank + g * 8;
        __m256 u;
        if (off + 8 <= end) {
          u = cvt8_i8(a.u + off);
        } else {
          int8_t tmp[8] = {};
          std::memcpy(tmp, a.u + off, size_t(end - off));
          u = cvt8_i8(tmp);
        }
        s = _mm256_fmadd_ps(u, _mm256_load_ps(wz + g * 8), s);  // lanes past rank: u * 0
      }
      return s;
    };
    int64_t r = a.r0;
    for (; r + 8 <= a.r1; r += 8) {
      __m256 p[8];
      for (int i = 0; i < 8; ++i) p[i] = row_dot(r + i);
      _mm256_storeu_ps(y + r, _mm256_add_ps(_mm256_loadu_ps(y + r), hsum8x8(p)));
    }
    for (; r < a.r1; ++r) y[r] += hsum8(row_dot(r));
  }
}

// ---- int8 / fp16 rows GEMM ---------------------------------------------------------------------

struct I8Rows {
  using W = int8_t;
  static DFSSM_AINLINE __m256 load8(const int8_t* p) { return cvt8_i8(p); }
  static float elem(const int8_t* p) { return float(*p); }
};
struct F16Rows {
  using W = uint16_t;
  static DFSSM_AINLINE __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float elem(const uint16_t* p) { return f16_to_f32(*p); }
};

template <class L, int RT, int TG>
void rows_tile(const typename L::W* w, const float* scale, const float* x, int64_t ldx, float* y, int64_t ldy,
               int64_t C, int64_t r, int64_t t) {
  __m256 acc[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc[i][j] = _mm256_setzero_ps();
  const typename L::W* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = w + (r + i) * C;
  const float* xs[TG];
  for (int j = 0; j < TG; ++j) xs[j] = x + (t + j) * ldx;
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 xv[TG];
#pragma GCC unroll 8
    for (int j = 0; j < TG; ++j) xv[j] = _mm256_loadu_ps(xs[j] + c);
#pragma GCC unroll 8
    for (int i = 0; i < RT; ++i) {
      const __m256 wv = L::load8(rows[i] + c);
#pragma GCC unroll 8
      for (int j = 0; j < TG; ++j) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) {
      float s = hsum8(acc[i][j]);
      for (int64_t cc = c; cc < C; ++cc) s += L::elem(rows[i] + cc) * xs[j][cc];
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

void i8_rows_gemm_avx2(const I8RowsGemmArgs& a) {
  rows_gemm<I8Rows>(a.q, a.scale, a.x, a.ldx, a.y, a.ldy, a.T, a.C, a.r0, a.r1);
}
void f16_rows_gemm_avx2(const F16RowsGemmArgs& a) {
  rows_gemm<F16Rows>(a.w, nullptr, a.x, a.ldx, a.y, a.ldy, a.T, a.C, a.r0, a.r1);
}

// ---- conv step + SiLU --------------------------------------------------------------------------

void conv_step_silu_avx2(const ConvStepArgs& a) {
  int64_t c = a.c0;
  for (; c + 4 <= a.c1; c += 4) {
    for (int64_t k = 0; k + 1 < a.K; ++k)
      _mm_storeu_ps(a.state + k * a.D + c, _mm_loadu_ps(a.state + (k + 1) * a.D + c));
    _mm_storeu_ps(a.state + (a.K - 1) * a.D + c, _mm_loadu_ps(a.x + c));
    __m256d acc = a.bias ? _mm256_cvtps_pd(_mm_loadu_ps(a.bias + c)) : _mm256_setzero_pd();
    for (int64_t k = 0; k < a.K; ++k)  // fp64 products are exact: fma == the ref's mul + add
      acc = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a.w + k * a.D + c)),
                            _mm256_cvtps_pd(_mm_loadu_ps(a.state + k * a.D + c)), acc);
    alignas(16) float v[4];
    _mm_store_ps(v, _mm256_cvtpd_ps(acc));
    for (int i = 0; i < 4; ++i) a.out[c + i] = silu_l(v[i]);
  }
  for (; c < a.c1; ++c) {
    for (int64_t k = 0; k + 1 < a.K; ++k) a.state[k * a.D + c] = a.state[(k + 1) * a.D + c];
    a.state[(a.K - 1) * a.D + c] = a.x[c];
    double acc = a.bias ? a.bias[c] : 0.0;
    for (int64_t k = 0; k < a.K; ++k) acc += double(a.w[k * a.D + c]) * a.state[k * a.D + c];
    a.out[c] = silu_l(float(acc));
  }
}

// ---- SSM step ----------------------------------------------------------------------------------

template <bool kF16>
void ssm_rows(const SsmStepArgs& a) {
  const int64_t hpg = a.H / a.G, PN = a.P * a.N;
  for (int64_t h = a.h0; h < a.h1; ++h) {
    const float dt = std::fmin(std::fmax(softplus20(a.dt_raw[h] + a.dt_bias[h]), a.dt_min), a.dt_max);
    const float dA = std::exp(dt * a.A[h]);
    const float* B = a.B + (h / hpg) * a.N;
    const float* Cm = a.C + (h / hpg) * a.N;
    const __m256 vdA = _mm256_set1_ps(dA);
    for (int64_t p = 0; p < a.P; ++p) {
      const float xv = a.x[h * a.P + p];
      const float xdt = xv * dt;
      const __m256 vxdt = _mm256_set1_ps(xdt);
      const int64_t base = h * PN + p * a.N;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      int64_t n = 0;
      auto step8 = [&](int64_t nn) {
        __m256 old;
        if constexpr (kF16) old = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.state_f16 + base + nn)));
        else old = _mm256_loadu_ps(a.state + base + nn);
        __m256 s = _mm256_add_ps(_mm256_mul_ps(old, vdA), _mm256_mul_ps(vxdt, _mm256_loadu_ps(B + nn)));
        if constexpr (kF16) {
          const __m128i hs = _mm256_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(a.state_f16 + base + nn), hs);
          s = _mm256_cvtph_ps(hs);
        } else {
          _mm256_storeu_ps(a.state + base + nn, s);
        }
        return _mm256_mul_ps(_mm256_loadu_ps(Cm + nn), s);
      };
      for (; n + 16 <= a.N; n += 16) {
        acc0 = _mm256_add_ps(acc0, step8(n));
        acc1 = _mm256_add_ps(acc1, step8(n + 8));
      }
      for (; n + 8 <= a.N; n += 8) acc0 = _mm256_add_ps(acc0, step8(n));
      float acc = hsum8(_mm256_add_ps(acc0, acc1));
      for (; n < a.N; ++n) {
        const int64_t i = base + n;
        const float old = kF16 ? f16_to_f32(a.state_f16[i]) : a.state[i];
        float s = old * dA + xdt * B[n];
        if constexpr (kF16) a.state_f16[i] = f32_to_f16(s), s = f16_to_f32(a.state_f16[i]);
        else a.state[i] = s;
        acc += Cm[n] * s;
      }
      a.y[h * a.P + p] = acc + a.D[h] * xv;
    }
  }
}

void ssm_step_avx2(const SsmStepArgs& a) {
  if (a.state) ssm_rows<false>(a);
  else ssm_rows<true>(a);
}

// ---- norms -------------------------------------------------------------------------------------

void gated_rmsnorm_avx2(const GatedRmsNormArgs& a) {
  const int64_t gs = a.n / a.G;
  for (int64_t i = 0; i < a.n; ++i) a.out[i] = silu_l(a.z[i]);  // silu(z), scaled in place below
  for (int64_t g = 0; g < a.G; ++g) {
    const int64_t i0 = g * gs, i1 = i0 + gs;
    __m256d ss4 = _mm256_setzero_pd();
    int64_t i = i0;
    for (; i + 4 <= i1; i += 4) {
      const __m256d v = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(a.y + i)), _mm256_cvtps_pd(_mm_loadu_ps(a.out + i)));
      ss4 = _mm256_add_pd(ss4, _mm256_mul_pd(v, v));
    }
    double ss = hsum4d(ss4);
    for (; i < i1; ++i) {
      const double v = double(a.y[i]) * a.out[i];
      ss += v * v;
    }
    const float rstd = float(1.0 / std::sqrt(ss / double(gs) + a.eps));
    const __m256 vr = _mm256_set1_ps(rstd);
    i = i0;
    for (; i + 8 <= i1; i += 8) {
      const __m256 gv = _mm256_mul_ps(_mm256_loadu_ps(a.y + i), _mm256_loadu_ps(a.out + i));
      _mm256_storeu_ps(a.out + i, _mm256_mul_ps(_mm256_mul_ps(gv, vr), _mm256_loadu_ps(a.w + i)));
    }
    for (; i < i1; ++i) a.out[i] = (a.y[i] * a.out[i]) * rstd * a.w[i];
  }
}

void add_rmsnorm_avx2(const AddRmsNormArgs& a) {
  __m256d ss4 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 4 <= a.n; i += 4) {
    __m128 r = _mm_loadu_ps(a.residual + i);
    if (a.x) {
      r = _mm_add_ps(r, _mm_loadu_ps(a.x + i));
      _mm_storeu_ps(a.residual + i, r);
    }
    const __m256d d = _mm256_cvtps_pd(r);
    ss4 = _mm256_add_pd(ss4, _mm256_mul_pd(d, d));
  }
  double ss = hsum4d(ss4);
  for (; i < a.n; ++i) {
    if (a.x) a.residual[i] += a.x[i];
    ss += double(a.residual[i]) * a.residual[i];
  }
  const float rstd = float(1.0 / std::sqrt(ss / double(a.n) + a.eps));
  const __m256 vr = _mm256_set1_ps(rstd);
  i = 0;
  for (; i + 8 <= a.n; i += 8)
    _mm256_storeu_ps(a.out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(a.residual + i), vr), _mm256_loadu_ps(a.w + i)));
  for (; i < a.n; ++i) a.out[i] = a.residual[i] * rstd * a.w[i];
}


// ---- sign GEMM on int16 activations ----------------------------------------------------------
// Per 32 weights of a row: one 32-bit broadcast of the sign bits puts bits 0-15 in the even and
// bits 16-31 in the odd int16 lanes. AND + compare with lane masks (selA tests bits 0-7 and
// 16-23, selB bits 8-15 and 24-31) gives -1 in the lanes whose bit is set; vpmaddwd with the
// activations, permuted once per call into the same lane order, sums -x over the set bits in
// int32 (acc = -P). The masks are shared by the TG tokens of a tile. Σ s·x = 2P - X = -2·acc - xsum.
template <int RT, int TG>
DFSSM_AINLINE void sg16_tile(const SignGemmI16Args& a, const int16_t* xp, int64_t ldp, int64_t r, int64_t t,
                             int64_t Cp) {
  const __m256i selA = _mm256_setr_epi16(1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128);
  const __m256i selB = _mm256_slli_epi16(selA, 8);
  __m256i acc[RT][TG];
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) acc[i][j] = _mm256_setzero_si256();
  const uint8_t* rows[RT];
  for (int i = 0; i < RT; ++i) rows[i] = a.codes + (r + i) * a.row_bytes;
  // The tile reads RT rows in parallel, 4 bytes of each per step: RT interleaved streams in a few
  // KB, which the hardware prefetchers follow poorly (out_proj streamed at ~half its cached
  // speed). Prefetch the tile two tiles ahead, one line per step (prefetches never fault).
  const char* pf = reinterpret_cast<const char*>(a.codes + (r + 2 * RT) * a.row_bytes);
  const int64_t pf_lines = RT * a.row_bytes / 64;
  for (int64_t c = 0, k = 0; c < Cp; c += 32, ++k) {
    if (k < pf_lines) _mm_prefetch(pf + k * 64, _MM_HINT_T0);
    if (k + Cp / 32 < pf_lines) _mm_prefetch(pf + (k + Cp / 32) * 64, _MM_HINT_T0);
    __m256i xa[TG], xb[TG];
    for (int j = 0; j < TG; ++j) {
      xa[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + (t + j) * ldp + c));
      xb[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + (t + j) * ldp + c + 16));
    }
    for (int i = 0; i < RT; ++i) {
      int32_t bits;
      std::memcpy(&bits, rows[i] + (c >> 3), 4);
      const __m256i b = _mm256_set1_epi32(bits);
      const __m256i ma = _mm256_cmpeq_epi16(_mm256_and_si256(b, selA), selA);
      const __m256i mb = _mm256_cmpeq_epi16(_mm256_and_si256(b, selB), selB);
      for (int j = 0; j < TG; ++j)
        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_add_epi32(_mm256_madd_epi16(ma, xa[j]), _mm256_madd_epi16(mb, xb[j])));
    }
  }
  for (int i = 0; i < RT; ++i)
    for (int j = 0; j < TG; ++j) {
      const int64_t sx = -2 * int64_t(hsum8_epi32(acc[i][j])) - a.xsum[t + j];
      a.y[(t + j) * a.ldy + r + i] = a.a[r + i] * (a.xs[t + j] * float(sx));
    }
}

void sign_gemm_i16_avx2(const SignGemmI16Args& a) {
  // Cp <= row_bytes * 8 (rows are whole 64-bit words) and x is zero-padded to it (ops.h), so pad
  // bits multiply zeros. Permute each token's activations into the lane order of sg16_tile:
  // per 32: [x0 x16 x1 x17 .. x7 x23 | x8 x24 .. x15 x31].
  const int64_t Cp = (a.C + 31) / 32 * 32;
  thread_local std::vector<int16_t> perm;
  perm.resize(size_t(a.T * Cp));
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t c = 0; c < Cp; c += 32) {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + t * a.ldx + c));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + t * a.ldx + c + 16));
      const __m256i ul = _mm256_unpacklo_epi16(lo, hi), uh = _mm256_unpackhi_epi16(lo, hi);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&perm[size_t(t * Cp + c)]), _mm256_permute2x128_si256(ul, uh, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&perm[size_t(t * Cp + c + 16)]), _mm256_permute2x128_si256(ul, uh, 0x31));
    }
  const int16_t* xp = perm.data();
  int64_t r = a.r0;
  if (a.T == 1) {
    for (; r + 8 <= a.r1; r += 8) sg16_tile<8, 1>(a, xp, Cp, r, 0, Cp);
    for (; r < a.r1; ++r) sg16_tile<1, 1>(a, xp, Cp, r, 0, Cp);
    return;
  }
  // Rows outer, token groups inner: a row pair's bits stay in L1 across the token groups.
  for (; r + 2 <= a.r1; r += 2) {
    int64_t t = 0;
    for (; t + 4 <= a.T; t += 4) sg16_tile<2, 4>(a, xp, Cp, r, t, Cp);
    for (; t < a.T; ++t) sg16_tile<2, 1>(a, xp, Cp, r, t, Cp);
  }
  for (; r < a.r1; ++r)
    for (int64_t t = 0; t < a.T; ++t) sg16_tile<1, 1>(a, xp, Cp, r, t, Cp);
}

// ---- int8 rows on int16 activations (the i16 path's LM head) ----------------------------------
// Per 16 weights: vpmovsxbw widens the int8 codes to int16, vpmaddwd with the activations sums
// pairs into int32. 4 rows x 1 token per tile; the tail (C % 16) in scalar.
template <int RT>
DFSSM_AINLINE void r16_tile(const I8RowsGemmI16Args& a, int64_t r, int64_t t) {
  __m256i acc[RT];
  for (int i = 0; i < RT; ++i) acc[i] = _mm256_setzero_si256();
  const int16_t* x = a.xq + t * a.ldx;
  // Prefetch the tile two tiles ahead (RT rows of C bytes), one line per 16 columns.
  const char* pf = reinterpret_cast<const char*>(a.q + (r + 2 * RT) * a.C);
  const int64_t pf_lines = t == 0 ? RT * a.C / 64 : 0;
  int64_t c = 0;
  for (int64_t k = 0; c + 16 <= a.C; c += 16, ++k) {
    if (k < pf_lines) _mm_prefetch(pf + k * 64, _MM_HINT_T0);
    if (k + a.C / 16 < pf_lines) _mm_prefetch(pf + (k + a.C / 16) * 64, _MM_HINT_T0);
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + c));
    for (int i = 0; i < RT; ++i) {
      const __m128i q8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.q + (r + i) * a.C + c));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_cvtepi8_epi16(q8), xv));
    }
  }
  for (int i = 0; i < RT; ++i) {
    int64_t s = hsum8_epi32(acc[i]);
    for (int64_t cc = c; cc < a.C; ++cc) s += int64_t(a.q[(r + i) * a.C + cc]) * x[cc];
    a.y[t * a.ldy + r + i] = a.scale[r + i] * (a.xs[t] * float(s));
  }
}

void i8_rows_gemm_i16_avx2(const I8RowsGemmI16Args& a) {
  // Rows outer, tokens inner: a 4-row tile (8 KB at d = 2048) stays in L1 for all the tokens,
  // so a batch reads the 103 MB head once, not once per sequence.
  int64_t r = a.r0;
  for (; r + 4 <= a.r1; r += 4)
    for (int64_t t = 0; t < a.T; ++t) r16_tile<4>(a, r, t);
  for (; r < a.r1; ++r)
    for (int64_t t = 0; t < a.T; ++t) r16_tile<1>(a, r, t);
}

void quantize_rows_i16_avx2(const QuantizeI16Args& a) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t t = 0; t < a.T; ++t) {
    const float* x = a.x + t * a.ldx;
    int16_t* q = a.xq + t * a.ldq;
    __m256 mv = _mm256_setzero_ps();
    int64_t c = 0;
    // Operand orders make NaN behave as in the ref (ignored by the max, +32767 after the clamp).
    for (; c + 8 <= a.C; c += 8) mv = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + c), absmask), mv);
    float m = 0;
    alignas(32) float mx[8];
    _mm256_store_ps(mx, mv);
    for (float v : mx) m = std::fmax(m, v);
    for (; c < a.C; ++c) m = std::fmax(m, std::fabs(x[c]));
    const float s = m > 0 ? m / 32767.f : 1.f;
    const float inv = 1.f / s;
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-32767.f), hi = _mm256_set1_ps(32767.f);
    __m256i vsum = _mm256_setzero_si256();
    auto q8 = [&](const float* p) {
      __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(p), vinv), _MM_FROUND_CUR_DIRECTION);
      v = _mm256_max_ps(_mm256_min_ps(v, hi), lo);
      const __m256i i32 = _mm256_cvtps_epi32(v);
      vsum = _mm256_add_epi32(vsum, i32);
      return i32;
    };
    c = 0;
    for (; c + 16 <= a.C; c += 16) {
      const __m256i lo8 = q8(x + c), hi8 = q8(x + c + 8);
      // packs works per 128-bit lane: [lo0-3, hi0-3, lo4-7, hi4-7] -> reorder the 64-bit quarters.
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo8, hi8), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), p);
    }
    int32_t sum = hsum8_epi32(vsum);
    for (; c < a.C; ++c) {
      const float rr = std::nearbyint(x[c] * inv);
      const int16_t v = int16_t(std::fmax(-32767.f, std::fmin(32767.f, rr)));
      q[c] = v;
      sum += v;
    }
    for (c = a.C; c < a.ldq; ++c) q[c] = 0;
    a.xs[t] = s;
    a.xsum[t] = sum;
  }
}

}  // namespace

// Variants kept for kernel_bench (declared in kernel_bench.h).
void sign_gemm_avx2_lut(const SignGemmArgs& a) { sign_gemm_impl<true>(a); }
void sign_gemm_avx2_sllv(const SignGemmArgs& a) { sign_gemm_impl<false>(a); }

const KernelTable& kernel_table_avx2() {
  static const KernelTable t = {Isa::Avx2,          sign_gemm_avx2_lut,  sign_gemm_i8_avx2,  quantize_rows_i8_avx2,
                                lowrank_down_avx2,  lowrank_up_avx2,     i8_rows_gemm_avx2,  f16_rows_gemm_avx2,
                                conv_step_silu_avx2, ssm_step_avx2,      gated_rmsnorm_avx2, add_rmsnorm_avx2,
                                sign_gemm_i16_avx2, quantize_rows_i16_avx2, i8_rows_gemm_i16_avx2};
  return t;
}

}  // namespace dfssm::kernels::cpu
