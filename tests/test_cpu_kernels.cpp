// The CPU kernels' fast paths (AVX2, AVX-512: every ISA supported_isas() lists besides scalar)
// against the scalar references (ops_ref.cpp), op by op, at the Mamba-2 1.3B shapes plus odd
// sizes for the tails. Inputs are fresh random numbers each run; the seed (std::random_device, or
// DFSSM_TEST_SEED=<n> to replay one) is printed with INFO on failure.
//
// Every output is poisoned with NaN before each call; the checks are that every element the op
// owns was written (finite), that nothing outside its range (rows outside [r0, r1), the padding
// columns of ld > R, channels/heads outside the range) changed, and the relative L2 error
// ‖out − ref‖ / ‖ref‖ against the reference with these tolerances:
//   * kFp32Tol = 1e-5 for fp32 sums: the fast paths accumulate in fp32 (8-16 lanes, several
//     accumulators), the refs in fp64; the expected error is ~1e-7 · sqrt(C / lanes) ≈ 1e-6 at
//     C = 4096, so 1e-5 is a 10x margin that still catches any wrong sign / missed block (which
//     gives errors of order 1/sqrt(C) ≈ 1e-2 or more).
//   * kExactTol = 1e-6 where the fast path does the same operations as the ref (int8 sign GEMM:
//     exact integer sums, then the same fp32 products; SSM state; conv; norms' elementwise parts).
//   * kF16Tol = 1e-3 for the fp16 SSM state: one rounding to half may differ by one half-ulp (~5e-4
//     relative) where the fp32 value the fast path rounds differs in its last bit from the ref's.
//   * the int8 sign GEMM vs the fp32 reference: quantization error ~ (max|x| / 127) / sqrt(12) /
//     rms(x) ≈ 1e-2 for Gaussian activations; asserted < 2e-2 and reported with WARN.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "catch_compat.h"
#include "core/dtype.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernel_bench.h"
#include "kernels/cpu/ops.h"

using namespace dfssm;
using namespace dfssm::kernels::cpu;

namespace {

constexpr double kFp32Tol = 1e-5;
constexpr double kExactTol = 1e-6;
constexpr double kF16Tol = 1e-3;
constexpr double kI8VsFp32Tol = 2e-2;
constexpr double kI16VsFp32Tol = 1e-4;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

uint64_t base_seed() {
  static const uint64_t s = [] {
    if (const char* e = std::getenv("DFSSM_TEST_SEED"); e && *e) return uint64_t(std::strtoull(e, nullptr, 10));
    std::random_device rd;
    return (uint64_t(rd()) << 32) ^ rd();
  }();
  return s;
}

std::vector<Isa> fast_isas() {
  std::vector<Isa> out;
  for (Isa i : supported_isas())
    if (i != Isa::Scalar) out.push_back(i);
  return out;
}

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t salt) : g(base_seed() * 0x9E3779B97F4A7C15ull + salt) {}
  std::vector<float> normal(size_t n, float mean = 0.f, float sd = 1.f) {
    std::normal_distribution<float> d(mean, sd);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
  }
  std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
  }
  std::vector<int8_t> int8s(size_t n) {
    std::vector<int8_t> v(n);
    for (auto& x : v) x = int8_t(int(g() % 255) - 127);
    return v;
  }
};

// Relative L2 error over the elements idx(i) for i in [0, n).
template <class F>
double rel_l2(int64_t n, F&& pair) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto [o, r] = pair(i);
    num += (double(o) - r) * (double(o) - r);
    den += double(r) * r;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// A [T, ld] output poisoned with NaN; `inside(t, j)` says which entries the op must write.
struct Out {
  int64_t T, ld;
  std::vector<float> v;
  Out(int64_t T_, int64_t ld_) : T(T_), ld(ld_), v(size_t(T_ * ld_), kNaN) {}
  void poison() { std::fill(v.begin(), v.end(), kNaN); }
  float* data() { return v.data(); }
  // Rows [r0, r1) of every token written, nothing else.
  bool written_exactly(int64_t r0, int64_t r1) const {
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < ld; ++j) {
        const bool in = j >= r0 && j < r1;
        if (in != !std::isnan(v[size_t(t * ld + j)])) return false;
      }
    return true;
  }
  double rel_vs(const Out& ref, int64_t r0, int64_t r1) const {
    const int64_t w = r1 - r0;
    return rel_l2(T * w, [&](int64_t i) {
      const size_t k = size_t((i / w) * ld + r0 + i % w);
      return std::pair<float, float>(v[k], ref.v[k]);
    });
  }
};

// ---- sign GEMM (fp32 and int8) ---------------------------------------------------------------

struct SignWeights {
  int64_t R, C, row_bytes;
  std::vector<uint64_t> storage;  // codes start at +8 bytes: only 8-byte alignment guaranteed
  const uint8_t* codes;
  std::vector<float> a;
  SignWeights(Rng& rng, int64_t R_, int64_t C_) : R(R_), C(C_), row_bytes((C_ + 63) / 64 * 8) {
    storage.resize(size_t(R * row_bytes / 8 + 1));
    // Random bits everywhere, pad bits included: the kernels must ignore bits c >= C.
    for (auto& w : storage) w = rng.g();
    codes = reinterpret_cast<const uint8_t*>(storage.data() + 1);
    a = rng.uniform(size_t(R), 0.01f, 0.05f);
  }
};

void check_sign_gemm(uint64_t salt, int64_t R, int64_t C, int64_t T, int64_t r0, int64_t r1, float xmean = 0.f,
                     double tol = kFp32Tol) {
  Rng rng(salt);
  INFO("seed " << base_seed() << " salt " << salt << "  R=" << R << " C=" << C << " T=" << T << " rows [" << r0 << ","
               << r1 << ") xmean=" << xmean);
  SignWeights W(rng, R, C);
  const int64_t ldx = C + 5, ldy = R + 3;
  const std::vector<float> xb = rng.normal(size_t(T * ldx), xmean, 1.f);
  SignGemmArgs args{W.codes, W.row_bytes, W.a.data(), xb.data(), ldx, nullptr, ldy, T, C, r0, r1};
  Out ref(T, ldy);
  args.y = ref.data();
  sign_gemm_ref(args);
  REQUIRE(ref.written_exactly(r0, r1));

  // int8 activations (per-token quantization) and their reference.
  const int64_t ldq = C + 3;
  std::vector<int8_t> xq(size_t(T * ldq), 0);
  std::vector<float> xs(static_cast<size_t>(T));
  std::vector<int32_t> xsum(static_cast<size_t>(T));
  QuantizeI8Args qa{xb.data(), ldx, xq.data(), ldq, xs.data(), xsum.data(), T, C};
  quantize_rows_i8_ref(qa);
  SignGemmI8Args ia{W.codes, W.row_bytes, W.a.data(), xq.data(), ldq, xs.data(), xsum.data(), nullptr, ldy, T, C, r0, r1};
  Out ref8(T, ldy);
  ia.y = ref8.data();
  sign_gemm_i8_ref(ia);
  REQUIRE(ref8.written_exactly(r0, r1));

  // int16 activations: rows zero-padded to a multiple of 64 (ops.h), and their reference.
  const int64_t ld16 = (C + 63) / 64 * 64 + 64;
  std::vector<int16_t> xq16(size_t(T * ld16), 0x5555);
  std::vector<float> xs16(static_cast<size_t>(T));
  std::vector<int32_t> xsum16(static_cast<size_t>(T));
  quantize_rows_i16_ref({xb.data(), ldx, xq16.data(), ld16, xs16.data(), xsum16.data(), T, C});
  SignGemmI16Args ja{W.codes, W.row_bytes, W.a.data(), xq16.data(), ld16, xs16.data(), xsum16.data(), nullptr, ldy,
                     T, C, r0, r1};
  Out ref16(T, ldy);
  ja.y = ref16.data();
  sign_gemm_i16_ref(ja);
  REQUIRE(ref16.written_exactly(r0, r1));
  // 15-bit activations: ~2^-15 · max|x| / rms(x) per element, averaging down in the sum.
  const double e16ref = ref16.rel_vs(ref, r0, r1);
  INFO("int16 reference vs fp32 reference rel L2 " << e16ref);
  CHECK(e16ref < kI16VsFp32Tol);

  for (Isa isa : fast_isas()) {
    INFO("isa " << isa_name(isa));
    const KernelTable& k = kernel_table(isa);
    {
      Out y16(T, ldy);
      ja.y = y16.data();
      k.sign_gemm_i16(ja);
      CHECK(y16.written_exactly(r0, r1));
      const double e16 = y16.rel_vs(ref16, r0, r1);
      INFO("sign_gemm_i16 vs sign_gemm_i16_ref rel L2 " << e16);
      CHECK(e16 < kExactTol);  // integer sums: identical up to the final fp32 products
      if (isa == Isa::Avx512) {  // the movm variant kept for kernel_bench
        Out ym(T, ldy);
        ja.y = ym.data();
        sign_gemm_i16_avx512_movm(ja);
        CHECK(ym.written_exactly(r0, r1));
        CHECK(ym.rel_vs(ref16, r0, r1) < kExactTol);
      }
      if (T == 8 && xmean == 0.f)
        WARN(isa_name(isa) << " int16 sign GEMM vs fp32 reference (R=" << R << " C=" << C << "): rel L2 " << e16ref);
    }
    Out y(T, ldy);
    args.y = y.data();
    k.sign_gemm(args);
    CHECK(y.written_exactly(r0, r1));
    const double e = y.rel_vs(ref, r0, r1);
    INFO("sign_gemm rel L2 " << e);
    CHECK(e < tol);

    // The alternative variants (kernel_bench.h) that the table does not pick on this CPU.
    std::vector<std::pair<const char*, void (*)(const SignGemmArgs&)>> alts;
    if (isa == Isa::Avx2) alts = {{"avx2 sllv", sign_gemm_avx2_sllv}};
    if (isa == Isa::Avx512) alts = {{"avx512 maskadd", sign_gemm_avx512_maskadd}, {"avx512 blendfma", sign_gemm_avx512_blendfma}};
    for (const auto& alt : alts) {
      INFO("variant " << alt.first);
      Out ya(T, ldy);
      args.y = ya.data();
      alt.second(args);
      CHECK(ya.written_exactly(r0, r1));
      CHECK(ya.rel_vs(ref, r0, r1) < tol);
    }
    if (isa == Isa::Avx512) {  // the non-VNNI int8 path (Skylake-X), whatever the table picked
      Out yb(T, ldy);
      ia.y = yb.data();
      sign_gemm_i8_avx512_bw(ia);
      CHECK(yb.written_exactly(r0, r1));
      CHECK(yb.rel_vs(ref8, r0, r1) < kExactTol);
    }
    if (k.sign_gemm_i8) {
      Out y8(T, ldy);
      ia.y = y8.data();
      k.sign_gemm_i8(ia);
      CHECK(y8.written_exactly(r0, r1));
      const double e8 = y8.rel_vs(ref8, r0, r1);
      INFO("sign_gemm_i8 vs sign_gemm_i8_ref rel L2 " << e8);
      CHECK(e8 < kExactTol);
      const double eq = y8.rel_vs(ref, r0, r1);
      if (T == 8 && xmean == 0.f)
        WARN(isa_name(isa) << " int8 sign GEMM vs fp32 reference (R=" << R << " C=" << C << "): rel L2 " << eq);
      CHECK(eq < kI8VsFp32Tol);
    }
  }
}

}  // namespace

TEST_CASE("cpu kernels: tables", "[cpu_kernels]") {
  for (Isa isa : supported_isas()) {
    INFO("isa " << isa_name(isa));
    const KernelTable& k = kernel_table(isa);
    CHECK(k.isa == isa);
    CHECK(k.sign_gemm);
    CHECK(k.quantize_rows_i8);
    CHECK(k.sign_gemm_i16);
    CHECK(k.quantize_rows_i16);
    CHECK(k.i8_rows_gemm_i16);
    CHECK(k.lowrank_down);
    CHECK(k.lowrank_up);
    CHECK(k.i8_rows_gemm);
    CHECK(k.f16_rows_gemm);
    CHECK(k.conv_step_silu);
    CHECK(k.ssm_step);
    CHECK(k.gated_rmsnorm);
    CHECK(k.add_rmsnorm);
  }
  if (fast_isas().empty()) WARN("this CPU has no AVX2/AVX-512: only the scalar references exist, nothing to compare");
}

TEST_CASE("cpu kernels: sign_gemm in_proj 8512 x 2048", "[cpu_kernels]") {
  for (int64_t T : {1, 3, 8}) check_sign_gemm(100 + uint64_t(T), 8512, 2048, T, 0, 8512);
  check_sign_gemm(110, 8512, 2048, 1, 4097, 8509);      // row sub-range, odd end (remainder rows)
  check_sign_gemm(111, 8512, 2048, 64, 1003, 1390);     // prefill chunk, token tiles
}

TEST_CASE("cpu kernels: sign_gemm out_proj 2048 x 4096", "[cpu_kernels]") {
  for (int64_t T : {1, 3, 8}) check_sign_gemm(200 + uint64_t(T), 2048, 4096, T, 0, 2048);
  check_sign_gemm(210, 2048, 4096, 64, 512, 771);
  check_sign_gemm(211, 2048, 4096, 8, 1, 2047);
}

TEST_CASE("cpu kernels: sign_gemm odd C (tail bits)", "[cpu_kernels]") {
  for (int64_t T : {1, 3, 8, 64}) check_sign_gemm(300 + uint64_t(T), 517, 2000, T, 3, 514);
  for (int64_t C : {1, 7, 63, 65, 127, 130}) check_sign_gemm(320 + uint64_t(C), 37, C, 5, 0, 37);
  check_sign_gemm(340, 13, 2000, 17, 2, 11);
}

TEST_CASE("cpu kernels: sign_gemm with biased activations", "[cpu_kernels]") {
  // Mean = 1 sd: the AVX-512 masked-add variant computes 2·Σ_{bit=1} x − Σ x, which cancels;
  // its fp32 error grows by ~|mean|/sd (ops_avx512.cpp), so 1e-4 here instead of 1e-5.
  check_sign_gemm(400, 2048, 4096, 1, 0, 2048, 1.0f, 1e-4);
  check_sign_gemm(401, 2048, 4096, 8, 0, 512, 1.0f, 1e-4);
}

TEST_CASE("cpu kernels: quantize_rows_i8", "[cpu_kernels]") {
  for (int64_t C : {2048, 4096, 2001, 5}) {
    Rng rng(500 + uint64_t(C));
    INFO("seed " << base_seed() << " C=" << C);
    const int64_t T = 9, ldx = C + 1, ldq = C + 2;
    std::vector<float> x = rng.normal(size_t(T * ldx), 0.f, 2.f);
    for (int64_t c = 0; c < C; ++c) x[size_t(2 * ldx + c)] = 0.f;  // a zero row: xs = 1
    // A row with max 127 (scale 1) and exact .5 ties: half-to-even rounding must match.
    for (int64_t c = 0; c < C; ++c) x[size_t(3 * ldx + c)] = float(int(c % 200) - 100) + 0.5f;
    x[size_t(3 * ldx)] = 127.f;
    std::vector<int8_t> qr(size_t(T * ldq), 0x55), q(size_t(T * ldq), 0x55);
    std::vector<float> sr(size_t(T), kNaN), s(size_t(T), kNaN);
    std::vector<int32_t> zr(size_t(T), -1), z(size_t(T), -1);
    quantize_rows_i8_ref({x.data(), ldx, qr.data(), ldq, sr.data(), zr.data(), T, C});
    for (Isa isa : fast_isas()) {
      INFO("isa " << isa_name(isa));
      std::fill(q.begin(), q.end(), int8_t(0x55));
      std::fill(s.begin(), s.end(), kNaN);
      std::fill(z.begin(), z.end(), -1);
      kernel_table(isa).quantize_rows_i8({x.data(), ldx, q.data(), ldq, s.data(), z.data(), T, C});
      CHECK(q == qr);  // padding bytes (ldq > C) untouched on both sides
      CHECK(std::memcmp(s.data(), sr.data(), s.size() * 4) == 0);
      CHECK(z == zr);
    }
  }
}

TEST_CASE("cpu kernels: quantize_rows_i16", "[cpu_kernels]") {
  for (int64_t C : {2048, 4096, 2001, 5}) {
    Rng rng(600 + uint64_t(C));
    INFO("seed " << base_seed() << " C=" << C);
    const int64_t T = 9, ldx = C + 1, ldq = (C + 63) / 64 * 64;
    std::vector<float> x = rng.normal(size_t(T * ldx), 0.f, 2.f);
    for (int64_t c = 0; c < C; ++c) x[size_t(2 * ldx + c)] = 0.f;  // a zero row: xs = 1
    // Scale 1 (max 32767) with exact .5 ties: half-to-even rounding must match.
    for (int64_t c = 0; c < C; ++c) x[size_t(3 * ldx + c)] = float(int(c % 2000) - 1000) + 0.5f;
    x[size_t(3 * ldx)] = 32767.f;
    x[size_t(4 * ldx + C / 2)] = kNaN;  // NaN goes to +32767 and is ignored by the max, as in the ref
    std::vector<int16_t> qr(size_t(T * ldq), 0x5555), q(size_t(T * ldq), 0x5555);
    std::vector<float> sr(size_t(T), kNaN), s(size_t(T), kNaN);
    std::vector<int32_t> zr(size_t(T), -1), z(size_t(T), -1);
    quantize_rows_i16_ref({x.data(), ldx, qr.data(), ldq, sr.data(), zr.data(), T, C});
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = C; c < ldq; ++c) REQUIRE(qr[size_t(t * ldq + c)] == 0);  // zero padding
    for (Isa isa : fast_isas()) {
      INFO("isa " << isa_name(isa));
      std::fill(q.begin(), q.end(), int16_t(0x5555));
      std::fill(s.begin(), s.end(), kNaN);
      std::fill(z.begin(), z.end(), -1);
      kernel_table(isa).quantize_rows_i16({x.data(), ldx, q.data(), ldq, s.data(), z.data(), T, C});
      CHECK(q == qr);
      CHECK(std::memcmp(s.data(), sr.data(), s.size() * 4) == 0);
      CHECK(z == zr);
    }
  }
}

TEST_CASE("cpu kernels: lowrank down/up (rank 19)", "[cpu_kernels]") {
  struct Shape {
    int64_t R, C, T;
  };
  for (const Shape& sh : std::vector<Shape>{{8512, 2048, 1}, {8512, 2048, 8}, {2048, 4096, 3}, {33, 7, 2}}) {
    const int64_t R = sh.R, C = sh.C, T = sh.T;
    for (int64_t rank : {19, 3}) {
      Rng rng(600 + uint64_t(R + C + T + rank));
      INFO("seed " << base_seed() << " R=" << R << " C=" << C << " T=" << T << " rank=" << rank);
      const int64_t ldx = C + 3, ldy = R + 2;
      const std::vector<int8_t> v = rng.int8s(static_cast<size_t>(C * rank)), u = rng.int8s(static_cast<size_t>(R * rank));
      const std::vector<float> vs = rng.uniform(size_t(rank), 0.001f, 0.01f), us = rng.uniform(size_t(rank), 0.001f, 0.01f);
      const std::vector<float> x = rng.normal(static_cast<size_t>(T * ldx));
      std::vector<float> zr(size_t(T * rank), kNaN);
      lowrank_down_ref({v.data(), vs.data(), x.data(), ldx, zr.data(), T, C, rank});
      const int64_t r0 = R > 40 ? 5 : 1, r1 = R > 40 ? R - 3 : R;  // a row sub-range ending before R
      std::vector<float> y0 = rng.normal(static_cast<size_t>(T * ldy));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t r = 0; r < ldy; ++r)
          if (r < r0 || r >= r1) y0[size_t(t * ldy + r)] = kNaN;
      Out yr(T, ldy);
      yr.v = y0;
      lowrank_up_ref({u.data(), us.data(), zr.data(), yr.data(), ldy, T, rank, r0, r1});
      for (Isa isa : fast_isas()) {
        INFO("isa " << isa_name(isa));
        const KernelTable& k = kernel_table(isa);
        std::vector<float> z(size_t(T * rank), kNaN);
        k.lowrank_down({v.data(), vs.data(), x.data(), ldx, z.data(), T, C, rank});
        bool all = true;
        for (float f : z) all = all && !std::isnan(f);
        CHECK(all);
        CHECK(rel_l2(T * rank, [&](int64_t i) { return std::pair<float, float>(z[size_t(i)], zr[size_t(i)]); }) < kFp32Tol);
        Out y(T, ldy);
        y.v = y0;
        k.lowrank_up({u.data(), us.data(), zr.data(), y.data(), ldy, T, rank, r0, r1});
        CHECK(y.written_exactly(r0, r1));
        // The correction only (y − y0) vs the ref's, so the error is relative to what the op adds.
        const int64_t w = r1 - r0;
        const double e = rel_l2(T * w, [&](int64_t i) {
          const size_t kk = size_t((i / w) * ldy + r0 + i % w);
          return std::pair<double, double>(double(y.v[kk]) - y0[kk], double(yr.v[kk]) - y0[kk]);
        });
        INFO("lowrank_up rel L2 of the correction " << e);
        CHECK(e < kFp32Tol);
      }
    }
  }
}

TEST_CASE("cpu kernels: i8_rows_gemm (tied int8 LM head)", "[cpu_kernels]") {
  // R = 50288, C = 2048; rows [r0, r1) only (the buffer holds rows < r1), plus odd C for tails.
  struct Shape {
    int64_t R, C, T, r0, r1;
  };
  for (const Shape& sh : std::vector<Shape>{
           {50288, 2048, 1, 1001, 4006}, {50288, 2048, 3, 7, 1030}, {50288, 2048, 8, 0, 600}, {101, 2001, 5, 2, 99}, {9, 13, 2, 0, 9}}) {
    const int64_t R = sh.R, C = sh.C, T = sh.T, r0 = sh.r0, r1 = sh.r1;
    Rng rng(700 + uint64_t(C + T + r0));
    INFO("seed " << base_seed() << " R=" << R << " C=" << C << " T=" << T << " rows [" << r0 << "," << r1 << ")");
    const int64_t ldx = C + 3, ldy = r1 + 2;
    const std::vector<int8_t> q = rng.int8s(static_cast<size_t>(r1 * C));
    const std::vector<float> scale = rng.uniform(size_t(r1), 0.001f, 0.01f), x = rng.normal(static_cast<size_t>(T * ldx));
    I8RowsGemmArgs args{q.data(), scale.data(), x.data(), ldx, nullptr, ldy, T, C, r0, r1};
    Out ref(T, ldy);
    args.y = ref.data();
    i8_rows_gemm_ref(args);
    for (Isa isa : fast_isas()) {
      INFO("isa " << isa_name(isa));
      Out y(T, ldy);
      args.y = y.data();
      kernel_table(isa).i8_rows_gemm(args);
      CHECK(y.written_exactly(r0, r1));
      CHECK(y.rel_vs(ref, r0, r1) < kFp32Tol);
    }
  }
}

TEST_CASE("cpu kernels: i8_rows_gemm_i16 (the i16 path's LM head)", "[cpu_kernels]") {
  for (int64_t T : {1, 8}) {
    Rng rng(700 + uint64_t(T));
    const int64_t R = 50288, C = 2048, r0 = 12000, r1 = 15000 + T, ld = C + 64, ldy = R;
    INFO("seed " << base_seed() << " T=" << T);
    const std::vector<int8_t> q = rng.int8s(size_t(R * C));
    const std::vector<float> scale = rng.uniform(size_t(R), 1e-4f, 1e-3f), x = rng.normal(size_t(T * C));
    std::vector<int16_t> xq(size_t(T * ld));
    std::vector<float> xs(static_cast<size_t>(T));
    std::vector<int32_t> xsum(static_cast<size_t>(T));
    quantize_rows_i16_ref({x.data(), C, xq.data(), ld, xs.data(), xsum.data(), T, C});
    Out ref(T, ldy), ref32(T, ldy);
    i8_rows_gemm_i16_ref({q.data(), scale.data(), xq.data(), ld, xs.data(), ref.data(), ldy, T, C, r0, r1});
    i8_rows_gemm_ref({q.data(), scale.data(), x.data(), C, ref32.data(), ldy, T, C, r0, r1});
    REQUIRE(ref.written_exactly(r0, r1));
    CHECK(ref.rel_vs(ref32, r0, r1) < kI16VsFp32Tol);  // 15-bit activations vs fp32
    for (Isa isa : fast_isas()) {
      INFO("isa " << isa_name(isa));
      Out y(T, ldy);
      kernel_table(isa).i8_rows_gemm_i16({q.data(), scale.data(), xq.data(), ld, xs.data(), y.data(), ldy, T, C, r0, r1});
      CHECK(y.written_exactly(r0, r1));
      CHECK(y.rel_vs(ref, r0, r1) < kExactTol);
    }
  }
}

TEST_CASE("cpu kernels: f16_rows_gemm", "[cpu_kernels]") {
  struct Shape {
    int64_t R, C, T, r0, r1;
  };
  for (const Shape& sh : std::vector<Shape>{{2048, 2048, 1, 0, 2048}, {2048, 4096, 5, 3, 1029}, {77, 2001, 3, 1, 76}, {5, 9, 2, 0, 5}}) {
    const int64_t R = sh.R, C = sh.C, T = sh.T, r0 = sh.r0, r1 = sh.r1;
    Rng rng(800 + uint64_t(C + T + r0));
    INFO("seed " << base_seed() << " R=" << R << " C=" << C << " T=" << T);
    const int64_t ldx = C + 1, ldy = R + 1;
    std::vector<uint16_t> w(static_cast<size_t>(R * C));
    {
      const std::vector<float> wf = rng.normal(size_t(R * C), 0.f, 0.05f);
      for (size_t i = 0; i < w.size(); ++i) w[i] = float_to_half(wf[i]);
    }
    const std::vector<float> x = rng.normal(static_cast<size_t>(T * ldx));
    F16RowsGemmArgs args{w.data(), x.data(), ldx, nullptr, ldy, T, C, r0, r1};
    Out ref(T, ldy);
    args.y = ref.data();
    f16_rows_gemm_ref(args);
    for (Isa isa : fast_isas()) {
      INFO("isa " << isa_name(isa));
      Out y(T, ldy);
      args.y = y.data();
      kernel_table(isa).f16_rows_gemm(args);
      CHECK(y.written_exactly(r0, r1));
      CHECK(y.rel_vs(ref, r0, r1) < kFp32Tol);
    }
  }
}

TEST_CASE("cpu kernels: conv_step_silu", "[cpu_kernels]") {
  struct Shape {
    int64_t D, K, c0, c1;
  };
  for (const Shape& sh : std::vector<Shape>{{4352, 4, 0, 4352}, {4352, 4, 13, 4343}, {4352, 4, 4096, 4352}, {11, 3, 1, 10}}) {
    const int64_t D = sh.D, K = sh.K, c0 = sh.c0, c1 = sh.c1;
    for (bool bias : {true, false}) {
      Rng rng(900 + uint64_t(D + K + c0 + c1) + (bias ? 1 : 0));
      INFO("seed " << base_seed() << " D=" << D << " K=" << K << " channels [" << c0 << "," << c1 << ") bias " << bias);
      const std::vector<float> state0 = rng.normal(static_cast<size_t>(K * D)), w = rng.normal(size_t(K * D), 0.f, 0.5f),
                               b = rng.normal(size_t(D)), x = rng.normal(size_t(D));
      std::vector<float> sr = state0, outr(size_t(D), kNaN);
      conv_step_silu_ref({sr.data(), w.data(), bias ? b.data() : nullptr, x.data(), outr.data(), D, K, c0, c1});
      for (Isa isa : fast_isas()) {
        INFO("isa " << isa_name(isa));
        std::vector<float> s = state0;
        Out out(1, D);
        kernel_table(isa).conv_step_silu({s.data(), w.data(), bias ? b.data() : nullptr, x.data(), out.data(), D, K, c0, c1});
        CHECK(out.written_exactly(c0, c1));
        CHECK(s == sr);  // a copy and a shift: exact, channels outside [c0, c1) untouched
        CHECK(rel_l2(c1 - c0, [&](int64_t i) {
                return std::pair<float, float>(out.v[size_t(c0 + i)], outr[size_t(c0 + i)]);
              }) < kExactTol);
      }
    }
  }
}

TEST_CASE("cpu kernels: ssm_step (fp32 and fp16 state)", "[cpu_kernels]") {
  struct Shape {
    int64_t H, P, N, G, h0, h1;
  };
  for (const Shape& sh : std::vector<Shape>{{64, 64, 128, 1, 0, 64}, {64, 64, 128, 2, 5, 61}, {6, 5, 37, 2, 1, 6}, {4, 3, 8, 1, 0, 4}}) {
    for (bool f16 : {false, true}) {
      Rng rng(1000 + uint64_t(sh.H + sh.N + sh.G + sh.h0) + (f16 ? 7 : 0));
      INFO("seed " << base_seed() << " H=" << sh.H << " P=" << sh.P << " N=" << sh.N << " G=" << sh.G << " heads ["
                   << sh.h0 << "," << sh.h1 << ") fp16 state " << f16);
      const int64_t S = sh.H * sh.P * sh.N;
      std::vector<float> st0 = rng.normal(static_cast<size_t>(S));
      std::vector<uint16_t> st16_0(static_cast<size_t>(S));
      for (int64_t i = 0; i < S; ++i) st16_0[size_t(i)] = float_to_half(st0[size_t(i)]);
      std::vector<float> A = rng.uniform(size_t(sh.H), 0.f, 2.f);
      for (auto& a : A) a = -std::exp(a);
      const std::vector<float> Dv = rng.normal(size_t(sh.H)), dt_bias = rng.uniform(size_t(sh.H), -4.f, -1.f);
      std::vector<float> st_r = st0, st = st0;
      std::vector<uint16_t> st16_r = st16_0, st16 = st16_0;
      std::vector<std::vector<float>> sts(fast_isas().size(), st0);
      std::vector<std::vector<uint16_t>> st16s(fast_isas().size(), st16_0);
      for (int step = 0; step < 3; ++step) {  // a few steps: the state carries over
        INFO("step " << step);
        const std::vector<float> x = rng.normal(size_t(sh.H * sh.P)), B = rng.normal(size_t(sh.G * sh.N)),
                                 C = rng.normal(size_t(sh.G * sh.N)), dt_raw = rng.normal(size_t(sh.H), 0.f, 2.f);
        // dt_raw spans the clamps: dt_min 1e-3 and dt_max 0.1 both bite for some heads.
        SsmStepArgs args{nullptr, nullptr, x.data(), B.data(), C.data(), dt_raw.data(), dt_bias.data(), A.data(),
                         Dv.data(), nullptr, 1e-3f, 0.1f, sh.H, sh.P, sh.N, sh.G, sh.h0, sh.h1};
        Out yr(1, sh.H * sh.P);
        args.y = yr.data();
        if (f16) args.state_f16 = st16_r.data();
        else args.state = st_r.data();
        ssm_step_ref(args);
        const int64_t y0 = sh.h0 * sh.P, y1 = sh.h1 * sh.P;
        for (size_t ii = 0; ii < fast_isas().size(); ++ii) {
          const Isa isa = fast_isas()[ii];
          INFO("isa " << isa_name(isa));
          Out y(1, sh.H * sh.P);
          args.y = y.data();
          args.state = f16 ? nullptr : sts[ii].data();
          args.state_f16 = f16 ? st16s[ii].data() : nullptr;
          kernel_table(isa).ssm_step(args);
          CHECK(y.written_exactly(y0, y1));
          CHECK(y.rel_vs(yr, y0, y1) < (f16 ? kF16Tol : kFp32Tol));
          if (f16) {
            int64_t outside_changed = 0;
            for (int64_t i = 0; i < S; ++i)
              if ((i < sh.h0 * sh.P * sh.N || i >= sh.h1 * sh.P * sh.N) && st16s[ii][size_t(i)] != st16_0[size_t(i)])
                ++outside_changed;
            CHECK(outside_changed == 0);
            CHECK(rel_l2(S, [&](int64_t i) {
                    return std::pair<float, float>(half_to_float(st16s[ii][size_t(i)]), half_to_float(st16_r[size_t(i)]));
                  }) < kF16Tol);
          } else {
            CHECK(rel_l2(S, [&](int64_t i) { return std::pair<float, float>(sts[ii][size_t(i)], st_r[size_t(i)]); }) <
                  kExactTol);
            int64_t outside_changed = 0;
            for (int64_t i = 0; i < S; ++i)
              if ((i < sh.h0 * sh.P * sh.N || i >= sh.h1 * sh.P * sh.N) && sts[ii][size_t(i)] != st0[size_t(i)])
                ++outside_changed;
            CHECK(outside_changed == 0);
          }
        }
      }
    }
  }
}

TEST_CASE("cpu kernels: gated_rmsnorm and add_rmsnorm", "[cpu_kernels]") {
  for (const auto& ng : std::vector<std::pair<int64_t, int64_t>>{{4096, 1}, {4096, 2}, {2048, 1}, {2048, 2}, {2001, 1}, {30, 3}}) {
    const int64_t n = ng.first, G = ng.second;
    Rng rng(1100 + uint64_t(n + G));
    INFO("seed " << base_seed() << " n=" << n << " G=" << G);
    const std::vector<float> y = rng.normal(static_cast<size_t>(n)), z = rng.normal(static_cast<size_t>(n)), w = rng.normal(size_t(n), 1.f, 0.1f),
                             x = rng.normal(size_t(n));
    const std::vector<float> res0 = rng.normal(size_t(n), 0.f, 3.f);
    Out gr(1, n), ar(1, n), an(1, n);
    gated_rmsnorm_ref({y.data(), z.data(), w.data(), gr.data(), n, G, 1e-5f});
    std::vector<float> res_r = res0, res_rn = res0;
    add_rmsnorm_ref({x.data(), res_r.data(), w.data(), ar.data(), n, 1e-5f});
    add_rmsnorm_ref({nullptr, res_rn.data(), w.data(), an.data(), n, 1e-5f});
    for (Isa isa : fast_isas()) {
      INFO("isa " << isa_name(isa));
      const KernelTable& k = kernel_table(isa);
      Out g(1, n), o(1, n), on(1, n);
      k.gated_rmsnorm({y.data(), z.data(), w.data(), g.data(), n, G, 1e-5f});
      CHECK(g.written_exactly(0, n));
      CHECK(g.rel_vs(gr, 0, n) < kExactTol);
      if (G == 1) {
        std::vector<float> res = res0, resn = res0;
        k.add_rmsnorm({x.data(), res.data(), w.data(), o.data(), n, 1e-5f});
        k.add_rmsnorm({nullptr, resn.data(), w.data(), on.data(), n, 1e-5f});
        CHECK(res == res_r);
        CHECK(resn == res0);
        CHECK(o.written_exactly(0, n));
        CHECK(on.written_exactly(0, n));
        CHECK(o.rel_vs(ar, 0, n) < kExactTol);
        CHECK(on.rel_vs(an, 0, n) < kExactTol);
      }
    }
  }
}

TEST_CASE("cpu kernels: 1-bit activation planes round trip (the CUDA decode's batch-1 format)", "[cpu_kernels]") {
  // quantize_planes_ref defines the format (kernels/cuda/decode.h "planes"); the CUDA producers
  // are compared with it bit for bit on the GPU (test_cuda_runtime "CUDA planes").
  Rng rng(41);
  const int64_t C = 2048;
  auto u = rng.normal(size_t(C), 0.f, 3.f);
  for (int64_t c = 0; c < 16; ++c) u[size_t(c)] = 0.f;                     // an all-zero group
  for (int64_t c = 16; c < 32; ++c) u[size_t(c)] *= 1e-30f;                // a tiny one (the exponent floor)
  for (int64_t c = 32; c < 48; ++c) u[size_t(c)] = c == 40 ? 1024.f : 1.f;  // an exact power of two as the max
  std::vector<uint16_t> planes(static_cast<size_t>(C));
  std::vector<int8_t> exps(static_cast<size_t>(C / 16));
  quantize_planes_ref(u.data(), C, planes.data(), exps.data());
  std::vector<float> x(static_cast<size_t>(C));
  dequantize_planes_ref(planes.data(), exps.data(), C, x.data());
  CHECK(exps[0] == -112);
  CHECK(exps[2] == 11);  // 1024 = 2^10 < 2^11
  for (int64_t G = 0; G < C / 16; ++G) {
    float m = 0.f;
    for (int i = 0; i < 16; ++i) m = std::fmax(m, std::fabs(u[size_t(G * 16 + i)]));
    INFO("group " << G << " max " << m << " exponent " << int(exps[size_t(G)]));
    CHECK(exps[size_t(G)] >= -112);
    if (m > 1e-30f) CHECK(std::ldexp(1.f, exps[size_t(G)] - 1) <= m * (1.f + 1e-6f));  // e is the smallest such
    CHECK(m < std::ldexp(1.f, exps[size_t(G)]));
    const float half_step = std::ldexp(1.f, exps[size_t(G)] - 16);  // rounding to nearest
    for (int i = 0; i < 16; ++i) CHECK(std::fabs(x[size_t(G * 16 + i)] - u[size_t(G * 16 + i)]) <= half_step);
  }
  // Relative to the group's max the error is at most 2^-15: finer than fp16's 2^-11 for the values
  // near it.
  double worst = 0.0;
  for (int64_t c = 48; c < C; ++c) worst = std::max(worst, double(std::fabs(x[size_t(c)] - u[size_t(c)])));
  CHECK(worst <= 3.f * 8.f * std::ldexp(1.f, -15));
}
