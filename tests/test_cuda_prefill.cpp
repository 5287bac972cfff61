// The CUDA prefill kernels (src/kernels/cuda/prefill.h) against the scalar CPU references of
// src/kernels/cpu/ops_ref.cpp, composed (label gpu: runs on the device only):
//   * expand_signs_i8, quantize_act_i8: bit-exact (same IEEE operations as quantize_rows_i8_ref);
//   * I8Gemm (cuBLASLt INT8): exact int32 sums vs an integer reference, T up to 2048;
//   * the whole projection (quantize, GEMM, lowrank_down, proj_epilogue) vs quantize_rows_i8_ref
//     + sign_gemm_i8_ref + lowrank_down_ref + lowrank_up_ref;
//   * conv_prefill vs T calls of conv_step_silu_ref; ssm_scan vs T calls of ssm_step_ref (fp32
//     and fp16 state); chunked calls (256 + 44 tokens) equal one call, bit for bit;
//   * rmsnorm_rows / gated_rmsnorm_rows vs add_rmsnorm_ref / gated_rmsnorm_ref per row, and the
//     fused norm + quantize kernels bit-identical to the norm then quantize_act_i8;
//   * argument checks; and a hidden timing test ("[bench]": one 1.3B layer at T = 2048).
// At the Mamba-2 1.3B geometry and a tiny one; fresh random inputs, outputs poisoned with NaN
// first. The seed is printed; DFSSM_TEST_SEED replays one.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "catch_compat.h"
#include "cuda_test_util.h"
#include "core/dtype.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/prefill.h"

using namespace dfssm;
namespace kc = dfssm::kernels::cuda;
namespace cpu = dfssm::kernels::cpu;

#define CUDA_OK(x) REQUIRE((x) == cudaSuccess)

namespace {

uint64_t test_seed() { return test::cuda_test_seed("test_cuda_prefill"); }
using test::DevBuf;
using test::rel_err;
using test::Rng;
// Rows `rows` of a [*, ld] matrix, columns [0, n), packed.
std::vector<float> take_rows(const std::vector<float>& m, int64_t ld, int64_t n, const std::vector<int64_t>& rows) {
  std::vector<float> o;
  o.reserve(rows.size() * size_t(n));
  for (int64_t t : rows) o.insert(o.end(), m.begin() + t * ld, m.begin() + t * ld + n);
  return o;
}
// The tokens a (slow) reference is computed for: all when T <= 8, else 16 of them (first, last, random).
std::vector<int64_t> sample_tokens(int64_t T, Rng& rng) {
  std::vector<int64_t> v;
  if (T <= 8) {
    for (int64_t t = 0; t < T; ++t) v.push_back(t);
    return v;
  }
  v = {0, 1, T / 2, T - 1};
  while (v.size() < 16) v.push_back(int64_t(rng.g() % uint64_t(T)));
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}
std::vector<float> half_vec_to_float(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = half_to_float(h[i]);
  return f;
}

// Geometries: Mamba-2 1.3B and the tiny test model.
struct Geo {
  int64_t d, di, P, H, N, G, K, r;
  int64_t D() const { return di + 2 * G * N; }
  int64_t dip() const { return 2 * di + 2 * G * N + H; }
};
const Geo k13b{2048, 4096, 64, 64, 128, 1, 4, 19};
Geo tiny(int64_t G) { return Geo{128, 256, 32, 8, 32, G, 4, 19}; }

// A projection's host tensors in the file's layout and its device copies in the kernels' layout.
struct Proj {
  int64_t R, C, r, rb, ld;
  std::vector<uint8_t> codes;
  std::vector<float> a, b, us, vs;
  std::vector<int8_t> U, V;
  DevBuf<int8_t> S;
  DevBuf<float> da, db, dus, dvs;
  DevBuf<int8_t> dU, dV;
  Proj(Rng& rng, int64_t R_, int64_t C_, int64_t r_)
      : R(R_), C(C_), r(r_), rb((C_ + 63) / 64 * 8), ld(kc::i8_cols(C_)), codes(rng.bits(R_, C_, rb)),
        a(rng.normal(size_t(R_), 0.02f, 0.05f)), b(rng.normal(size_t(C_), 0.05f, 0.2f)),
        us(rng.normal(size_t(r_), 1e-4f, 3e-4f)), vs(rng.normal(size_t(r_), 1e-4f, 3e-4f)), U(rng.i8(size_t(R_ * r_))),
        V(rng.i8(size_t(C_ * r_))), S(size_t(R_ * ld)), da(a), db(b), dus(us), dvs(vs), dU(U), dV(V) {
    DevBuf<uint8_t> tmp(codes);
    S.poison();
    CUDA_OK(kc::expand_signs_i8(tmp.p, rb, R, C, S.p, ld, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
  }
  int sign(int64_t row, int64_t c) const { return (codes[size_t(row * rb + c / 8)] >> (c % 8)) & 1 ? 1 : -1; }
};

}  // namespace

TEST_CASE("expand_signs_i8 and quantize_act_i8 are exact", "[gpu][cuda_prefill]") {
  Rng rng(test_seed() + 1);
  for (auto [R, C] : std::vector<std::pair<int64_t, int64_t>>{{8512, 2048}, {2048, 4096}, {584, 128}, {12, 100}}) {
    INFO("R " << R << " C " << C);
    const int64_t rb = (C + 63) / 64 * 8 + (C == 100 ? 3 : 0), ld = kc::i8_cols(C);
    const auto codes = rng.bits(R, C, rb);
    DevBuf<uint8_t> dcodes(codes);
    DevBuf<int8_t> S(size_t(R * ld));
    S.poison();
    CUDA_OK(kc::expand_signs_i8(dcodes.p, rb, R, C, S.p, ld, nullptr));
    const auto hs = S.get();
    int64_t bad = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < ld; ++c) {
        const int want = c >= C ? 0 : ((codes[size_t(r * rb + c / 8)] >> (c % 8)) & 1 ? 1 : -1);
        bad += hs[size_t(r * ld + c)] != want;
      }
    CHECK(bad == 0);
  }
  for (int64_t C : {2048, 4096, 128, 100})
    for (int64_t T : {1, 7, 256})
      for (bool with_b : {true, false}) {
        const int64_t ldx = C + (C == 128 ? 3 : 8), ldq = kc::i8_cols(C) + (C == 128 ? 16 : 0);
        INFO("C " << C << " T " << T << " b " << with_b);
        auto x = rng.normal(size_t(T * ldx), 1.5f);
        if (T > 1)
          for (int64_t c = 0; c < C; ++c) x[size_t(ldx + c)] = 0.f;  // a zero row: scale 1, q 0
        const auto b = rng.normal(size_t(C), 0.05f, 0.2f);
        DevBuf<float> dx(x), db(b), sc(static_cast<size_t>(T));
        DevBuf<int8_t> q(size_t(T * ldq));
        sc.poison(), q.poison();
        CUDA_OK(kc::quantize_act_i8(dx.p, ldx, with_b ? db.p : nullptr, T, C, q.p, ldq, sc.p, nullptr));
        std::vector<float> xb(size_t(T * C)), xs(static_cast<size_t>(T));
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = 0; c < C; ++c)
            xb[size_t(t * C + c)] = with_b ? b[size_t(c)] * x[size_t(t * ldx + c)] : x[size_t(t * ldx + c)];
        std::vector<int8_t> qr(size_t(T * ldq), 0);
        std::vector<int32_t> xsum(static_cast<size_t>(T));
        cpu::quantize_rows_i8_ref({xb.data(), C, qr.data(), ldq, xs.data(), xsum.data(), T, C});
        const auto hq = q.get();
        const auto hsc = sc.get();
        int64_t bad = 0;
        for (size_t i = 0; i < hq.size(); ++i) bad += hq[i] != qr[i];
        CHECK(bad == 0);
        CHECK(std::memcmp(hsc.data(), xs.data(), xs.size() * 4) == 0);
        if (T > 1) CHECK(hsc[1] == 1.f);
      }
}

TEST_CASE("I8Gemm (cuBLASLt INT8) gives exact int32 sums", "[gpu][cuda_prefill]") {
  Rng rng(test_seed() + 2);
  kc::I8Gemm gemm;
  struct Case {
    int64_t R, C;
    std::vector<int64_t> Ts;
  };
  const Geo g1 = tiny(1), g2 = tiny(2);
  const std::vector<Case> cases = {{k13b.dip(), k13b.d, {1, 7, 256, 2048}},
                                   {k13b.d, k13b.di, {1, 7, 256, 2048}},
                                   {g1.dip(), g1.d, {1, 7, 33}},
                                   {g2.dip(), g2.d, {5}},
                                   {g1.d, g1.di, {1, 7, 33}}};
  for (const Case& cs : cases) {
    const int64_t R = cs.R, C = cs.C, rb = (C + 63) / 64 * 8, ld = kc::i8_cols(C);
    const auto codes = rng.bits(R, C, rb);
    DevBuf<uint8_t> dcodes(codes);
    DevBuf<int8_t> S(size_t(R * ld));
    CUDA_OK(kc::expand_signs_i8(dcodes.p, rb, R, C, S.p, ld, nullptr));
    std::vector<int8_t> sg(size_t(R * C));
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) sg[size_t(r * C + c)] = (codes[size_t(r * rb + c / 8)] >> (c % 8)) & 1 ? 1 : -1;
    for (int64_t T : cs.Ts) {
      INFO("R " << R << " C " << C << " T " << T);
      std::vector<int8_t> q = rng.i8(size_t(T * ld));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = C; c < ld; ++c) q[size_t(t * ld + c)] = 0;  // quantize_act_i8's padding
      DevBuf<int8_t> dq(q);
      const int64_t ldc = R + 4;
      DevBuf<int32_t> acc(size_t(T * ldc));
      CUDA_OK(cudaMemset(acc.p, 0x7f, acc.n * 4));
      const cudaError_t e = gemm.run(dq.p, S.p, acc.p, T, R, ld, ldc, nullptr);
      if (e != cudaSuccess) std::printf("I8Gemm R=%lld C=%lld T=%lld: %s, cublas status %d\n", (long long)R,
                                        (long long)C, (long long)T, cudaGetErrorString(e), gemm.last_status());
      CUDA_OK(e);
      CUDA_OK(cudaDeviceSynchronize());
      const auto h = acc.get();
      const auto toks = sample_tokens(T, rng);
      int64_t bad = 0;
      for (int64_t t : toks)
        for (int64_t r = 0; r < R; ++r) {
          int32_t s = 0;
          for (int64_t c = 0; c < C; ++c) s += int32_t(sg[size_t(r * C + c)]) * q[size_t(t * ld + c)];
          bad += h[size_t(t * ldc + r)] != s;
        }
      std::printf("i8 gemm R=%lld C=%lld T=%lld: %lld of %zu sampled rows' sums differ\n", (long long)R, (long long)C,
                  (long long)T, (long long)bad, toks.size());
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("Projection: quantize + I8Gemm + lowrank_down + proj_epilogue vs the CPU references",
          "[gpu][cuda_prefill]") {
  Rng rng(test_seed() + 3);
  kc::I8Gemm gemm;
  const Geo g1 = tiny(1);
  struct Case {
    int64_t R, C;
    std::vector<int64_t> Ts;
  };
  const std::vector<Case> cases = {{k13b.dip(), k13b.d, {1, 7, 256}},
                                   {k13b.d, k13b.di, {1, 7, 256}},
                                   {g1.dip(), g1.d, {1, 7, 33}},
                                   {g1.d, g1.di, {1, 7, 33}}};
  for (const Case& cs : cases) {
    Proj P(rng, cs.R, cs.C, k13b.r);
    const int64_t R = P.R, C = P.C, r = P.r, ld = P.ld;
    for (int64_t T : cs.Ts) {
      INFO("R " << R << " C " << C << " T " << T);
      const int64_t ldx = C + 4, ldy = R + 8;
      const auto x = rng.normal(size_t(T * ldx), 1.f);
      DevBuf<float> dx(x), sx(static_cast<size_t>(T)), z(size_t(T * r)), y(size_t(T * ldy));
      DevBuf<int8_t> q(size_t(T * ld));
      DevBuf<int32_t> acc(size_t(T * R));
      sx.poison(), z.poison(), y.poison();
      CUDA_OK(kc::quantize_act_i8(dx.p, ldx, P.db.p, T, C, q.p, ld, sx.p, nullptr));
      CUDA_OK(gemm.run(q.p, P.S.p, acc.p, T, R, ld, R, nullptr));
      CUDA_OK(kc::lowrank_down(dx.p, ldx, P.dV.p, P.dvs.p, T, C, r, z.p, nullptr));
      CUDA_OK(kc::proj_epilogue(acc.p, R, T, R, P.da.p, sx.p, P.dU.p, P.dus.p, z.p, r, y.p, ldy, nullptr));
      CUDA_OK(cudaDeviceSynchronize());

      // Reference: quantize b ⊙ x (the same int8 operand: only accumulation order differs below),
      // sign_gemm_i8_ref, and the low-rank term on the UN-scaled x.
      std::vector<float> xb(size_t(T * C)), xs(static_cast<size_t>(T)), zr(size_t(T * r));
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) xb[size_t(t * C + c)] = P.b[size_t(c)] * x[size_t(t * ldx + c)];
      std::vector<int8_t> xq(size_t(T * ld), 0);
      std::vector<int32_t> xsum(static_cast<size_t>(T));
      cpu::quantize_rows_i8_ref({xb.data(), C, xq.data(), ld, xs.data(), xsum.data(), T, C});
      cpu::lowrank_down_ref({P.V.data(), P.vs.data(), x.data(), ldx, zr.data(), T, C, r});
      const auto toks = sample_tokens(T, rng);
      std::vector<float> yr(toks.size() * size_t(R));
      for (size_t i = 0; i < toks.size(); ++i) {
        const int64_t t = toks[i];
        float* yrow = &yr[i * size_t(R)];
        cpu::sign_gemm_i8_ref({P.codes.data(), P.rb, P.a.data(), &xq[size_t(t * ld)], ld, &xs[size_t(t)],
                               &xsum[size_t(t)], yrow, R, 1, C, 0, R});
        cpu::lowrank_up_ref({P.U.data(), P.us.data(), &zr[size_t(t * r)], yrow, R, 1, r, 0, R});
      }
      const double ez = rel_err(z.get(), zr);
      const double ey = rel_err(take_rows(y.get(), ldy, R, toks), yr);
      const bool same_scale = std::memcmp(sx.get().data(), xs.data(), xs.size() * 4) == 0;
      std::printf("proj R=%lld C=%lld T=%lld: rel err zlow %.2e  y %.2e (%zu tokens)\n", (long long)R, (long long)C,
                  (long long)T, ez, ey, toks.size());
      CHECK(same_scale);
      // The int8 sums are exact and the main term is computed in the reference's order, so only
      // the low-rank term's fp32 (GPU) vs fp64 (reference) accumulation differs.
      CHECK(ez < 1e-5);
      CHECK(ey < 1e-5);
    }
  }
}

namespace {
// conv_prefill on xbc_raw inside [T, dip] rows (ld_in = dip) vs T calls of conv_step_silu_ref.
void check_conv(Rng& rng, int64_t D, int64_t ld_in, int64_t col, int K, int64_t T, bool with_bias) {
  INFO("conv D " << D << " K " << K << " T " << T << " bias " << with_bias);
  const auto zx = rng.normal(size_t(T * ld_in), 1.f);
  const auto w = rng.normal(size_t(K * D), 0.3f), bias = rng.normal(size_t(D), 0.1f);
  const auto st = rng.normal(size_t(K * D), 1.f);
  DevBuf<float> dzx(zx), dw(w), db(bias), dst(st), out(size_t(T * D));
  out.poison();
  CUDA_OK(kc::conv_prefill(dzx.p + col, ld_in, dst.p, dw.p, with_bias ? db.p : nullptr, out.p, T, D, K, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> st_ref = st, out_ref(size_t(T * D));
  for (int64_t t = 0; t < T; ++t)
    cpu::conv_step_silu_ref({st_ref.data(), w.data(), with_bias ? bias.data() : nullptr, &zx[size_t(t * ld_in + col)],
                             &out_ref[size_t(t * D)], D, K, 0, D});
  const double e = rel_err(out.get(), out_ref);
  const auto hst = dst.get();
  std::printf("conv D=%lld K=%d T=%lld bias=%d: rel err out %.2e, state %s\n", (long long)D, K, (long long)T,
              int(with_bias), e, hst == st_ref ? "exact" : "DIFFERS");
  CHECK(e < 1e-5);  // fp32 FMA chain vs fp64 sum, expf vs std::exp in SiLU
  CHECK(hst == st_ref);  // the state holds copies of inputs: exact
}
}  // namespace

TEST_CASE("conv_prefill matches T steps of conv_step_silu_ref", "[gpu][cuda_prefill]") {
  Rng rng(test_seed() + 4);
  for (int64_t T : {1, 2, 3, 7, 256})
    for (bool bias : {true, false}) check_conv(rng, k13b.D(), k13b.dip(), k13b.di, 4, T, bias);
  for (int64_t G : {1, 2}) {
    const Geo g = tiny(G);
    for (int K : {2, 4})
      for (int64_t T : {1, 3, 7, 33, 70}) check_conv(rng, g.D(), g.dip(), g.di, K, T, T % 2 == 1);
  }
}

namespace {
struct ScanCase {
  Geo g;
  int64_t T;
  bool f16;
  float dt_min = 0.f, dt_max = INFINITY;
};
struct ScanInputs {
  std::vector<float> zx, xbc, dt_bias, A, Dk, st;
  std::vector<uint16_t> st16;
};
ScanInputs scan_inputs(Rng& rng, const Geo& g, int64_t T) {
  const int64_t H = g.H, di = g.di, D = g.D(), dip = g.dip();
  ScanInputs in;
  in.zx = rng.normal(size_t(T * dip), 1.f);  // dt_raw at column di + D of these rows
  in.xbc = rng.normal(size_t(T * D), 1.f);
  in.dt_bias.resize(size_t(H)), in.A.resize(size_t(H)), in.Dk.resize(size_t(H));
  for (int64_t h = 0; h < H; ++h)
    in.dt_bias[size_t(h)] = rng.uniform(-4.f, 0.f), in.A[size_t(h)] = -rng.uniform(1.f, 16.f),
                   in.Dk[size_t(h)] = rng.uniform(0.5f, 1.5f);
  in.st = rng.normal(size_t(H * g.P * g.N), 1.f);
  in.st16.resize(in.st.size());
  for (size_t i = 0; i < in.st.size(); ++i) in.st16[i] = float_to_half(in.st[i]);
  (void)di;
  return in;
}
// Runs ssm_scan over tokens [t0, t1) of the inputs, state in place on the device.
void run_scan(const ScanCase& c, DevBuf<float>& zx, DevBuf<float>& xbc, DevBuf<float>& bias, DevBuf<float>& A,
              DevBuf<float>& Dk, void* state, DevBuf<float>& y, int64_t t0, int64_t t1,
              const kc::ScanTuning& tune = kc::ScanTuning()) {
  const Geo& g = c.g;
  const int64_t D = g.D(), dip = g.dip();
  CUDA_OK(kc::ssm_scan(state, c.f16, xbc.p + t0 * D, zx.p + t0 * dip + g.di + D, dip, bias.p, A.p, Dk.p,
                       y.p + t0 * g.di, t1 - t0, int(g.H), int(g.P), int(g.N), int(g.G), c.dt_min, c.dt_max, nullptr,
                       tune));
}
}  // namespace

TEST_CASE("ssm_scan matches T steps of ssm_step_ref (fp32 and fp16 state)", "[gpu][cuda_prefill]") {
  Rng rng(test_seed() + 5);
  std::vector<ScanCase> cases;
  for (bool f16 : {false, true}) {
    for (int64_t T : {1, 7, 256, 2048}) cases.push_back({k13b, T, f16});
    for (int64_t G : {1, 2})
      for (int64_t T : {1, 7, 100}) cases.push_back({tiny(G), T, f16});
    cases.push_back({tiny(2), 77, f16, 1e-3f, 0.1f});  // dt clamped
    for (int64_t N : {16, 64, 256, 512}) {  // every lanes-per-row variant (N / 16 = 1 .. 32)
      Geo g = tiny(1);
      g.N = N;
      cases.push_back({g, 45, f16});
    }
    // headdim 16, d_state 16: 16 threads per block at 16 state elements per thread; the scan
    // falls back to 8 (2 lanes per row, one warp).
    cases.push_back({Geo{128, 256, 16, 16, 16, 1, 4, 19}, 45, f16});
  }
  for (const ScanCase& c : cases) {
    const Geo& g = c.g;
    const int64_t T = c.T, H = g.H, P = g.P, N = g.N, G = g.G, di = g.di, D = g.D(), dip = g.dip();
    INFO("scan H " << H << " P " << P << " N " << N << " G " << G << " T " << T << " f16 " << c.f16);
    const ScanInputs in = scan_inputs(rng, g, T);
    // Reference: T calls of ssm_step_ref.
    std::vector<float> st_ref = in.st, y_ref(size_t(T * di));
    std::vector<uint16_t> st16_ref = in.st16;
    for (int64_t t = 0; t < T; ++t) {
      const float* xb = &in.xbc[size_t(t * D)];
      cpu::ssm_step_ref({c.f16 ? nullptr : st_ref.data(), c.f16 ? st16_ref.data() : nullptr, xb, xb + di,
                         xb + di + G * N, &in.zx[size_t(t * dip + di + D)], in.dt_bias.data(), in.A.data(),
                         in.Dk.data(), &y_ref[size_t(t * di)], c.dt_min, c.dt_max, H, P, N, G, 0, H});
    }
    DevBuf<float> zx(in.zx), xbc(in.xbc), bias(in.dt_bias), A(in.A), Dk(in.Dk), y(size_t(T * di));
    // The default configuration, then (1.3B, T = 256; tiny, T = 100) every rows-per-thread and
    // block size variant.
    std::vector<kc::ScanTuning> tunes = {kc::ScanTuning()};
    if ((g.N == 128 && T == 256) || T == 100)
      for (int nt : {8, 16})
        for (int mt : {32, 64, 128, 256}) tunes.push_back(kc::ScanTuning{nt, mt, 1});
    if (g.N == 128 && (T == 256 || T == 7))  // 2 rows per thread with fewer threads per block
      for (int mt : {64, 128}) tunes.push_back(kc::ScanTuning{8, mt, 2});
    for (const kc::ScanTuning& tu : tunes) {
      DevBuf<float> st(in.st);
      DevBuf<uint16_t> st16(in.st16);
      y.poison();
      run_scan(c, zx, xbc, bias, A, Dk, c.f16 ? static_cast<void*>(st16.p) : static_cast<void*>(st.p), y, 0, T, tu);
      CUDA_OK(cudaDeviceSynchronize());
      const double ey = rel_err(y.get(), y_ref);
      const double es = c.f16 ? rel_err(half_vec_to_float(st16.get()), half_vec_to_float(st16_ref))
                              : rel_err(st.get(), st_ref);
      std::printf("scan H=%lld N=%lld G=%lld T=%lld %s (elems/thread %d, threads<=%d, rows/thread %d)%s: rel err y %.2e  state %.2e\n",
                  (long long)H, (long long)N, (long long)G, (long long)T, c.f16 ? "f16" : "f32", tu.elems_per_thread,
                  tu.max_threads, tu.rows_per_thread, c.dt_max < INFINITY ? " dt clamped" : "", ey, es);
      // fp32: FMA vs separate multiply-add and the order of the N-sum; the per-token differences
      // decay with dA < 1, so they do not grow with T. fp16: such a difference can round a state
      // element to the neighbouring half (2^-11 relative), as in the decode kernel's test.
      CHECK(ey < (c.f16 ? 2e-3 : 1e-5));
      CHECK(es < (c.f16 ? 2e-3 : 1e-5));
    }
  }
}

TEST_CASE("Chunked conv_prefill and ssm_scan (256 + 44 tokens) equal one call of 300", "[gpu][cuda_prefill]") {
  Rng rng(test_seed() + 6);
  const Geo g = k13b;
  const int64_t T = 300, T1 = 256, D = g.D(), dip = g.dip(), K = g.K;
  {
    const auto zx = rng.normal(size_t(T * dip), 1.f);
    const auto w = rng.normal(size_t(K * D), 0.3f), bias = rng.normal(size_t(D), 0.1f);
    const auto st = rng.normal(size_t(K * D), 1.f);
    DevBuf<float> dzx(zx), dw(w), db(bias), st_a(st), st_b(st), out_a(size_t(T * D)), out_b(size_t(T * D));
    out_a.poison(), out_b.poison();
    CUDA_OK(kc::conv_prefill(dzx.p + g.di, dip, st_a.p, dw.p, db.p, out_a.p, T, D, int(K), nullptr));
    CUDA_OK(kc::conv_prefill(dzx.p + g.di, dip, st_b.p, dw.p, db.p, out_b.p, T1, D, int(K), nullptr));
    CUDA_OK(kc::conv_prefill(dzx.p + T1 * dip + g.di, dip, st_b.p, dw.p, db.p, out_b.p + T1 * D, T - T1, D, int(K),
                             nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const auto oa = out_a.get(), ob = out_b.get();
    CHECK(rel_err(oa, ob) == 0.0);
    CHECK(std::memcmp(oa.data(), ob.data(), oa.size() * 4) == 0);
    CHECK(st_a.get() == st_b.get());
  }
  for (bool f16 : {false, true}) {
    INFO("f16 " << f16);
    const ScanCase c{g, T, f16};
    const ScanInputs in = scan_inputs(rng, g, T);
    DevBuf<float> zx(in.zx), xbc(in.xbc), bias(in.dt_bias), A(in.A), Dk(in.Dk);
    DevBuf<float> ya(size_t(T * g.di)), yb(size_t(T * g.di)), sa(in.st), sb(in.st);
    DevBuf<uint16_t> sa16(in.st16), sb16(in.st16);
    ya.poison(), yb.poison();
    void* stA = f16 ? static_cast<void*>(sa16.p) : static_cast<void*>(sa.p);
    void* stB = f16 ? static_cast<void*>(sb16.p) : static_cast<void*>(sb.p);
    run_scan(c, zx, xbc, bias, A, Dk, stA, ya, 0, T);
    run_scan(c, zx, xbc, bias, A, Dk, stB, yb, 0, T1);
    run_scan(c, zx, xbc, bias, A, Dk, stB, yb, T1, T);
    CUDA_OK(cudaDeviceSynchronize());
    const auto a = ya.get(), b = yb.get();
    CHECK(rel_err(a, b) == 0.0);  // also: no NaN (every y written)
    CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
    if (f16) CHECK(sa16.get() == sb16.get());
    else CHECK(sa.get() == sb.get());
    std::printf("chunked scan %s: %s\n", f16 ? "f16" : "f32",
                std::memcmp(a.data(), b.data(), a.size() * 4) == 0 ? "bit-identical" : "DIFFERS");
  }
}

TEST_CASE("rmsnorm_rows and gated_rmsnorm_rows match the per-row references", "[gpu][cuda_prefill]") {
  Rng rng(test_seed() + 7);
  for (int64_t n : {2048, 128, 13000})  // (13000: past the shared-memory row path)
    for (int64_t T : {1, 7, 256})
      for (bool with_hidden : {true, false}) {
        INFO("rmsnorm n " << n << " T " << T << " hidden " << with_hidden);
        const auto res = rng.normal(size_t(T * n), 1.f), hid = rng.normal(size_t(T * n), 0.5f);
        const auto w = rng.normal(size_t(n), 0.1f, 1.f);
        DevBuf<float> dres(res), dhid(hid), dw(w), out(size_t(T * n));
        out.poison();
        CUDA_OK(kc::rmsnorm_rows(with_hidden ? dhid.p : nullptr, dres.p, dw.p, out.p, T, n, 1e-5f, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        std::vector<float> rr = res, orf(size_t(T * n));
        for (int64_t t = 0; t < T; ++t)
          cpu::add_rmsnorm_ref({with_hidden ? &hid[size_t(t * n)] : nullptr, &rr[size_t(t * n)], w.data(),
                                &orf[size_t(t * n)], n, 1e-5f});
        const double e = rel_err(out.get(), orf);
        const bool res_exact = dres.get() == rr;
        std::printf("rmsnorm n=%lld T=%lld hidden=%d: rel err %.2e, residual %s\n", (long long)n, (long long)T,
                    int(with_hidden), e, res_exact ? "exact" : "DIFFERS");
        CHECK(res_exact);
        CHECK(e < 1e-6);  // fp32 vs fp64 sum of squares
      }
  Geo big = tiny(1);
  big.di = 13000;  // past the shared-memory row path
  for (const Geo& g : {k13b, tiny(1), tiny(2), big})
    for (int64_t G : {int64_t(1), int64_t(2)})
      for (int64_t T : {1, 7, 256}) {
        const int64_t n = g.di, ldz = g.dip();
        INFO("gated n " << n << " G " << G << " T " << T);
        const auto y = rng.normal(size_t(T * n), 1.f), zx = rng.normal(size_t(T * ldz), 1.5f);
        const auto w = rng.normal(size_t(n), 0.1f, 1.f);
        DevBuf<float> dy(y), dz(zx), dw(w), out(size_t(T * n));
        out.poison();
        CUDA_OK(kc::gated_rmsnorm_rows(dy.p, dz.p, ldz, dw.p, out.p, T, n, int(G), 1e-5f, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        std::vector<float> orf(size_t(T * n));
        for (int64_t t = 0; t < T; ++t)
          cpu::gated_rmsnorm_ref({&y[size_t(t * n)], &zx[size_t(t * ldz)], w.data(), &orf[size_t(t * n)], n, G, 1e-5f});
        const double e = rel_err(out.get(), orf);
        std::printf("gated rmsnorm n=%lld G=%lld T=%lld: rel err %.2e\n", (long long)n, (long long)G, (long long)T, e);
        CHECK(e < 1e-5);  // + expf vs std::exp in SiLU
      }
}

TEST_CASE("Fused norm + quantize equals the norm kernel then quantize_act_i8, bit for bit", "[gpu][cuda_prefill]") {
  // The runtime's prefill uses the fused kernels; the two-kernel path is checked against the CPU
  // references above, so bit identity carries that check over. 13000: the fallback path.
  Rng rng(test_seed() + 8);
  auto same = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  for (int64_t n : {int64_t(2048), int64_t(4096), int64_t(13000)})
    for (int64_t T : {int64_t(1), int64_t(300)})
      for (int mode = 0; mode < 4; ++mode) {  // bit 0: with hidden / gated G = 4; bit 1: with b
        const bool gated = n == 4096, alt = mode & 1, with_b = mode & 2;
        const int64_t ldq = kc::i8_cols(n), ldz = 2 * n + 64, G = gated && alt ? 4 : 1;
        INFO("n " << n << " T " << T << " gated " << gated << " mode " << mode);
        const auto x0 = rng.normal(size_t(T * n), 1.f), hid = rng.normal(size_t(T * n), 0.5f);
        const auto zx = rng.normal(size_t(T * ldz), 1.5f);
        const auto w = rng.normal(size_t(n), 0.1f, 1.f), b = rng.normal(size_t(n), 0.2f, 1.f);
        DevBuf<float> dres1(x0), dres2(x0), dhid(hid), dz(zx), dw(w), db(b);
        DevBuf<float> out1(size_t(T * n)), out2(size_t(T * n)), sc1(static_cast<size_t>(T)), sc2(static_cast<size_t>(T));
        DevBuf<int8_t> q1(size_t(T * ldq)), q2(size_t(T * ldq));
        out1.poison(), out2.poison(), sc1.poison(), sc2.poison(), q1.poison(), q2.poison();
        const float* bp = with_b ? db.p : nullptr;
        if (gated) {
          CUDA_OK(kc::gated_rmsnorm_rows(dres1.p, dz.p, ldz, dw.p, out1.p, T, n, int(G), 1e-5f, nullptr));
          CUDA_OK(kc::gated_rmsnorm_quant_rows(dres2.p, dz.p, ldz, dw.p, out2.p, T, n, int(G), 1e-5f, bp, q2.p, ldq,
                                               sc2.p, nullptr));
        } else {
          const float* h = alt ? dhid.p : nullptr;
          CUDA_OK(kc::rmsnorm_rows(h, dres1.p, dw.p, out1.p, T, n, 1e-5f, nullptr));
          CUDA_OK(kc::rmsnorm_quant_rows(h, dres2.p, dw.p, out2.p, T, n, 1e-5f, bp, q2.p, ldq, sc2.p, nullptr));
        }
        CUDA_OK(kc::quantize_act_i8(out1.p, n, bp, T, n, q1.p, ldq, sc1.p, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        const bool ok = same(out1.get(), out2.get()) && same(q1.get(), q2.get()) && same(sc1.get(), sc2.get()) &&
                        same(dres1.get(), dres2.get());
        if (!ok || mode == 0)
          std::printf("fused norm+quantize n=%lld T=%lld gated=%d mode=%d: %s\n", (long long)n, (long long)T,
                      int(gated), mode, ok ? "bit-identical" : "DIFFERS");
        CHECK(ok);
      }
}

TEST_CASE("Prefill kernels refuse unsupported shapes", "[gpu][cuda_prefill]") {
  DevBuf<float> f(1 << 16);
  DevBuf<int8_t> q(1 << 16);
  DevBuf<uint8_t> codes(1 << 12);
  DevBuf<int32_t> acc(1 << 12);
  const auto inval = cudaErrorInvalidValue;
  CHECK(kc::expand_signs_i8(codes.p, 16, 4, 100, q.p, 100, nullptr) == inval);  // ld % 16
  CHECK(kc::quantize_act_i8(f.p, 100, nullptr, 2, 100, q.p, 104, f.p, nullptr) == inval);
  kc::I8Gemm gemm;
  CHECK(gemm.run(q.p, q.p, acc.p, 2, 6, 64, 6, nullptr) == inval);  // R % 4
  CHECK(gemm.run(q.p, q.p, acc.p, 2, 8, 60, 8, nullptr) == inval);  // K % 16
  CHECK(kc::proj_epilogue(acc.p, 8, 2, 8, f.p, f.p, q.p, f.p, f.p, 33, f.p, 8, nullptr) == inval);
  CHECK(kc::lowrank_down(f.p, 64, q.p, f.p, 2, 64, 0, f.p, nullptr) == inval);
  CHECK(kc::conv_prefill(f.p, 64, f.p, f.p, nullptr, f.p, 2, 64, 9, nullptr) == inval);
  CHECK(kc::ssm_scan(f.p, false, f.p, f.p, 8, f.p, f.p, f.p, f.p, 2, 8, 32, 96, 1, 0.f, 1.f, nullptr) == inval);  // N
  CHECK(kc::ssm_scan(f.p, false, f.p, f.p, 8, f.p, f.p, f.p, f.p, 2, 8, 30, 32, 1, 0.f, 1.f, nullptr) == inval);  // P
  CHECK(kc::ssm_scan(f.p, false, f.p, f.p, 8, f.p, f.p, f.p, f.p, 2, 6, 32, 32, 4, 0.f, 1.f, nullptr) == inval);  // H%G
  CHECK(kc::gated_rmsnorm_rows(f.p, f.p, 64, f.p, f.p, 2, 63, 2, 1e-5f, nullptr) == inval);
  // T = 0 is a no-op.
  CHECK(kc::conv_prefill(f.p, 64, f.p, f.p, nullptr, f.p, 0, 64, 4, nullptr) == cudaSuccess);
  CHECK(kc::ssm_scan(f.p, false, f.p, f.p, 8, f.p, f.p, f.p, f.p, 0, 8, 32, 32, 1, 0.f, 1.f, nullptr) == cudaSuccess);
  CUDA_OK(cudaDeviceSynchronize());
}

// Timing of one 1.3B layer's prefill kernels at T = 2048 (one chunk), hidden: run with
// `test_cuda_prefill "[bench]"`. Prints each kernel's time and the 48-layer projection.
TEST_CASE("Prefill kernel timings (1.3B layer, T = 2048)", "[.][bench]") {
  Rng rng(test_seed() + 8);
  const Geo g = k13b;
  const int64_t T = 2048, d = g.d, di = g.di, D = g.D(), dip = g.dip(), r = g.r;
  Proj pin(rng, dip, d, r), pout(rng, d, di, r);
  kc::I8Gemm gemm;
  DevBuf<float> res(rng.normal(size_t(T * d))), hid(rng.normal(size_t(T * d))), nw(rng.normal(size_t(d), 0.1f, 1.f));
  DevBuf<float> xn(size_t(T * d)), sx(static_cast<size_t>(T)), zl(size_t(T * r)), zx(size_t(T * dip)), xbc(size_t(T * D));
  DevBuf<float> cw(rng.normal(size_t(g.K * D), 0.3f)), cb(rng.normal(size_t(D), 0.1f)), cst(size_t(g.K * D));
  DevBuf<float> y(size_t(T * di)), gw(rng.normal(size_t(di), 0.1f, 1.f)), gn(size_t(T * di)), out(size_t(T * d));
  std::vector<float> bias(size_t(g.H)), A(size_t(g.H)), Dk(size_t(g.H));
  for (int64_t h = 0; h < g.H; ++h)
    bias[size_t(h)] = rng.uniform(-4.f, 0.f), A[size_t(h)] = -rng.uniform(1.f, 16.f), Dk[size_t(h)] = 1.f;
  DevBuf<float> dbias(bias), dA(A), dD(Dk), st(size_t(g.H * g.P * g.N));
  DevBuf<uint16_t> st16(size_t(g.H * g.P * g.N));
  DevBuf<int8_t> q(size_t(T * kc::i8_cols(di)));
  DevBuf<int32_t> acc(size_t(T * dip));
  CUDA_OK(cudaMemset(st.p, 0, st.n * 4));
  CUDA_OK(cudaMemset(st16.p, 0, st16.n * 2));
  CUDA_OK(cudaMemset(cst.p, 0, cst.n * 4));
  cudaEvent_t e0, e1;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  auto timeit = [&](const char* name, auto&& fn) {
    for (int i = 0; i < 2; ++i) CUDA_OK(fn());
    const int reps = 10;
    CUDA_OK(cudaEventRecord(e0));
    for (int i = 0; i < reps; ++i) CUDA_OK(fn());
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    const double us = 1e3 * ms / reps;
    std::printf("  %-34s %9.1f us\n", name, us);
    return us;
  };
  auto scan = [&](bool f16, kc::ScanTuning tu) {
    return kc::ssm_scan(f16 ? static_cast<void*>(st16.p) : static_cast<void*>(st.p), f16, xbc.p, zx.p + di + D, dip,
                        dbias.p, dA.p, dD.p, y.p, T, int(g.H), int(g.P), int(g.N), int(g.G), 0.f, INFINITY, nullptr, tu);
  };
  CUDA_OK(cudaMemset(zx.p, 0, zx.n * 4));
  CUDA_OK(cudaMemset(xbc.p, 0, xbc.n * 4));
  std::printf("prefill kernels, 1.3B layer, T = %lld:\n", (long long)T);
  double total = 0;
  total += timeit("rmsnorm_rows", [&] { return kc::rmsnorm_rows(hid.p, res.p, nw.p, xn.p, T, d, 1e-5f, nullptr); });
  total += timeit("quantize_act_i8 (d)",
                  [&] { return kc::quantize_act_i8(xn.p, d, pin.db.p, T, d, q.p, pin.ld, sx.p, nullptr); });
  total += timeit("lowrank_down (d)",
                  [&] { return kc::lowrank_down(xn.p, d, pin.dV.p, pin.dvs.p, T, d, r, zl.p, nullptr); });
  total += timeit("I8Gemm in_proj", [&] { return gemm.run(q.p, pin.S.p, acc.p, T, dip, pin.ld, dip, nullptr); });
  total += timeit("proj_epilogue in_proj", [&] {
    return kc::proj_epilogue(acc.p, dip, T, dip, pin.da.p, sx.p, pin.dU.p, pin.dus.p, zl.p, r, zx.p, dip, nullptr);
  });
  CUDA_OK(cudaMemset(zx.p, 0, zx.n * 4));  // keep the scan's inputs tame
  total += timeit("conv_prefill",
                  [&] { return kc::conv_prefill(zx.p + di, dip, cst.p, cw.p, cb.p, xbc.p, T, D, int(g.K), nullptr); });
  total += timeit("ssm_scan f32 (default: nt=8 rp=2)", [&] { return scan(false, kc::ScanTuning()); });
  const int variants[][3] = {{16, 256, 1}, {8, 256, 1}, {16, 128, 1}, {8, 128, 2}};
  for (const auto& v : variants) {
    const kc::ScanTuning tu{v[0], v[1], v[2]};
    char name[64];
    std::snprintf(name, sizeof(name), "  ssm_scan f32 nt=%d threads<=%d rp=%d", v[0], v[1], v[2]);
    timeit(name, [&] { return scan(false, tu); });
    std::snprintf(name, sizeof(name), "  ssm_scan f16 nt=%d threads<=%d rp=%d", v[0], v[1], v[2]);
    timeit(name, [&] { return scan(true, tu); });
  }
  total += timeit("gated_rmsnorm_rows",
                  [&] { return kc::gated_rmsnorm_rows(y.p, zx.p, dip, gw.p, gn.p, T, di, 1, 1e-5f, nullptr); });
  total += timeit("quantize_act_i8 (di)",
                  [&] { return kc::quantize_act_i8(gn.p, di, pout.db.p, T, di, q.p, pout.ld, sx.p, nullptr); });
  total += timeit("lowrank_down (di)",
                  [&] { return kc::lowrank_down(gn.p, di, pout.dV.p, pout.dvs.p, T, di, r, zl.p, nullptr); });
  total += timeit("I8Gemm out_proj", [&] { return gemm.run(q.p, pout.S.p, acc.p, T, d, pout.ld, d, nullptr); });
  total += timeit("proj_epilogue out_proj", [&] {
    return kc::proj_epilogue(acc.p, d, T, d, pout.da.p, sx.p, pout.dU.p, pout.dus.p, zl.p, r, out.p, d, nullptr);
  });
  std::printf("  layer total %.1f us -> 48 layers %.2f ms, %.0f tokens/s (kernels only)\n", total, 48 * total / 1e3,
              double(T) / (48 * total * 1e-6));
  for (int64_t Tc : {256, 512}) {
    char name[64];
    std::snprintf(name, sizeof(name), "I8Gemm in_proj T=%lld", (long long)Tc);
    timeit(name, [&] { return gemm.run(q.p, pin.S.p, acc.p, Tc, dip, pin.ld, dip, nullptr); });
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}
