// CUDA kernels run on the CPU emulator (tests/cuda_emu/cuda_emu.h) against their scalar
// references, so their indexing, masking and barriers are tested in CI, where there is no GPU.
// The gpu tests run the same kernels on the device (test_gpu_train_kernels "[ssd_scan]").
#include "cuda_emu/cuda_emu.h"
// The kernel source itself, compiled as C++ (DFSSM_CUDA_EMULATE is set for this target).
#include "kernels/cuda/ssd_scan.cu"
#include "kernels/cuda/ssd_scan_bwd.cu"
#include "kernels/cuda/ssd_scan_seq.cu"

#include <algorithm>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>

#include "catch_compat.h"
#include "kernels/cpu/ssd_scan_ref.h"

using namespace dfssm::kernels;

namespace {
struct Aligned {  // 256-byte aligned floats, as cudaMalloc gives
  float* p = nullptr;
  explicit Aligned(size_t n) { p = static_cast<float*>(std::aligned_alloc(256, ((n * 4 + 255) / 256) * 256)); }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

// Random forward inputs with x, B and C as slices of one (b, L, row) buffer (as in the conv
// output), and the scalar reference's y and final state in yr, sr.
struct ScanCase {
  std::vector<float> buf, dt, A, D, init, yr, sr;
  SsdScanArgs a;
  ScanCase(int64_t b, int64_t L, int64_t H, int64_t G, int T, bool with_init, uint32_t seed) {
    const int64_t P = 64, N = 128, row = 4 + H * P + 2 * G * N;
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    buf.resize(size_t(b * L * row)), dt.resize(size_t(b * L * H)), A.resize(size_t(H)), D.resize(size_t(H));
    init.resize(size_t(b * H * P * N));
    for (auto& v : buf) v = nd(rng);
    for (auto& v : dt) v = std::log1p(std::exp(nd(rng) - 2.f));
    for (auto& v : A) v = -std::exp(0.5f * nd(rng));
    for (auto& v : D) v = nd(rng);
    for (auto& v : init) v = nd(rng);
    a.x = buf.data() + 4, a.x_row = row, a.dt = dt.data(), a.A = A.data();
    a.B = buf.data() + 4 + H * P, a.C = a.B + G * N, a.bc_row = row, a.D = D.data();
    a.init = with_init ? init.data() : nullptr;
    a.batch = b, a.L = L, a.H = int(H), a.G = int(G), a.P = int(P), a.N = int(N), a.T = T;
    yr.resize(size_t(b * L * H * P)), sr.resize(size_t(b * H * P * N));
    a.y = yr.data(), a.final_state = sr.data();
    ssd_scan_fwd_ref(a);
  }
};

double rel_err(const float* a, const float* b, size_t n) {
  double d = 0, r = 0;
  for (size_t i = 0; i < n; ++i) d += double(a[i] - b[i]) * (a[i] - b[i]), r += double(b[i]) * b[i];
  return std::sqrt(d / r);
}
}  // namespace

TEST_CASE("ssd_scan kernels (emulated) == scalar reference: chunks 64/128/256, partial chunk, groups",
          "[cuda_emu][ssd_scan]") {
  const int64_t b = 1, H = 4, G = 2;
  // Each emulated block is 256 OS threads, so the cases are few (~10 s each on 2 cores).
  for (const auto& [T, with_init] : {std::pair{64, true}, std::pair{128, false}, std::pair{128, true},
                                    std::pair{256, false}}) {
    // chunk_scan version 2 (the cp.async pipeline on raw mma.sync fragments) and version 1 (WMMA).
    for (const int version : {2, 1}) {
      if (T == 256 && version == 2) continue;  // T = 256 runs version 1 only
      ssd_scan_set_version(version);
      // two chunks, the second partial
      ScanCase sc(b, T + 37, H, G, T, with_init, uint32_t(T * 2 + with_init));
      SsdScanArgs a = sc.a;
      const std::vector<float>&yr = sc.yr, &sr = sc.sr;
      std::vector<float> y(yr.size(), 7.f), s(sr.size(), 7.f);
      Aligned ws(size_t(ssd_scan_workspace_floats(a)));
      std::fill(ws.p, ws.p + ssd_scan_workspace_floats(a), 0.f);  // compared below, padding included
      a.y = y.data(), a.final_state = s.data(), a.workspace = ws.p;
      REQUIRE(ssd_scan_supported(a));
      REQUIRE(ssd_scan_fwd_cuda(a, nullptr) == cudaSuccess);
      const double ey = rel_err(y.data(), yr.data(), y.size()), es = rel_err(s.data(), sr.data(), s.size());
      INFO("T " << T << " init " << with_init << " chunk_scan version " << version << ": y " << ey << ", state " << es);
      // TF32 rounding of the GEMM inputs (emulated as the hardware's cvt.rna.tf32).
      CHECK(ey < 3e-3);
      CHECK(es < 3e-3);
      CHECK(ey > 0);  // the emulated TF32 rounding is really applied
      // Without chunk_scan (a recomputation that kept y): the same workspace and final state,
      // bit for bit, and y is not touched. At T = 64 the default is the sequential states
      // kernel (ssd_scan_seq.cu): acs and CB bit for bit, the states up to TF32 rounding.
      const std::vector<float> ws_full(ws.p, ws.p + ssd_scan_workspace_floats(a));
      // seq 2: the sequential states kernel on bf16 operands (DFSSM_SSD_STATES_BF16=1).
      for (const int seq : {0, 1, 2}) {
        if (seq >= 1 && T != 64) continue;
        ssd_scan_set_seq(seq >= 1);
        ssd_scan_set_states_bf16(seq == 2);
        std::vector<float> s2(sr.size(), 7.f);
        Aligned ws2(ws_full.size());
        std::fill(ws2.p, ws2.p + ws_full.size(), 0.f);
        SsdScanArgs a2 = a;
        a2.y = nullptr, a2.final_state = s2.data(), a2.workspace = ws2.p;
        REQUIRE(ssd_scan_fwd_workspace_cuda(a2, nullptr) == cudaSuccess);
        if (seq == 0) {
          CHECK(std::equal(ws_full.begin(), ws_full.end(), ws2.p));
          CHECK(s2 == s);
        } else {
          const auto na = size_t(a.acs_floats()), ns = size_t(a.states_floats());
          CHECK(std::equal(ws_full.begin(), ws_full.begin() + long(na), ws2.p));  // acs
          CHECK(std::equal(ws_full.begin() + long(na + ns), ws_full.end(), ws2.p + na + ns));  // CB
          const double est = rel_err(ws2.p + na, ws_full.data() + na, ns), efin = rel_err(s2.data(), s.data(), s.size());
          INFO("sequential states kernel (bf16 operands: " << (seq == 2) << ") vs chunk_state + state_pass: states "
                                                            << est << ", final " << efin);
          const double tol = seq == 2 ? 1e-2 : 3e-3;  // bf16 rounds the operands to 8 bits, TF32 to 11
          CHECK(est < tol);
          CHECK(efin < tol);
          CHECK(rel_err(s2.data(), sr.data(), s2.size()) < tol);
          if (seq == 2) CHECK(est > 3e-4);  // the bf16 kernel ran (TF32's error is ~1e-4 here)
        }
      }
      ssd_scan_set_seq(-1);
      ssd_scan_set_states_bf16(-1);
    }
  }
  ssd_scan_set_version(0);
  SsdScanArgs bad;
  bad.P = 64, bad.N = 96, bad.T = 128, bad.H = 4, bad.G = 1, bad.batch = 1, bad.L = 10;
  CHECK_FALSE(ssd_scan_supported(bad));
}

TEST_CASE("ssd_scan one-kernel forward (emulated) == scalar reference: partial chunks, groups, init",
          "[cuda_emu][ssd_scan]") {
  const int64_t b = 2;
  // (L, H, G, init): three chunks with a partial last one; one partial chunk; whole chunks.
  for (const auto& [L, H, G, with_init] : {std::tuple<int64_t, int64_t, int64_t, bool>{165, 4, 2, true},
                                           std::tuple<int64_t, int64_t, int64_t, bool>{37, 2, 1, false},
                                           std::tuple<int64_t, int64_t, int64_t, bool>{128, 2, 2, false}}) {
    ScanCase sc(b, L, H, G, 128, with_init, uint32_t(L + H));
    SsdScanArgs a = sc.a;
    const std::vector<float>&yr = sc.yr, &sr = sc.sr;
    std::vector<float> y(yr.size(), 7.f), s(sr.size(), 7.f);
    Aligned ws(size_t(ssd_scan_seq_workspace_floats(a)));  // CB per 64-position chunk and group
    a.y = y.data(), a.final_state = s.data(), a.workspace = ws.p;
    REQUIRE(ssd_scan_seq_supported(a));
    REQUIRE(ssd_scan_fwd_seq_cuda(a, nullptr) == cudaSuccess);
    const double ey = rel_err(y.data(), yr.data(), y.size()), es = rel_err(s.data(), sr.data(), s.size());
    INFO("L " << L << " H " << H << " G " << G << " init " << with_init << ": y " << ey << ", state " << es);
    CHECK(ey < 3e-3);  // TF32 rounding of the GEMM inputs, as the four-kernel forward
    CHECK(es < 3e-3);
    CHECK(ey > 0);
    // y written in bf16 instead (the kept copy of a checkpointed block): fp32 y rounded to
    // nearest even, element for element, and the same final state.
    std::vector<uint16_t> yb(y.size(), 0x7fc1);
    std::vector<float> s2(sr.size(), 7.f);
    SsdScanArgs ab = a;
    ab.y = nullptr, ab.y_bf16 = yb.data(), ab.final_state = s2.data();
    REQUIRE(ssd_scan_seq_supported(ab));
    CHECK_FALSE(ssd_scan_supported(ab));  // the four-kernel forward does not write y_bf16
    REQUIRE(ssd_scan_fwd_seq_cuda(ab, nullptr) == cudaSuccess);
    size_t diff = 0;
    for (size_t i = 0; i < y.size(); ++i) diff += yb[i] != dfssm::float_to_bf16(y[i]);
    CHECK(diff == 0);
    CHECK(s2 == s);
    // Version 1 (scalar fragment loads, expf): the emulator's __expf is expf, so the two versions
    // compute on the same values and any misplaced ldmatrix word shows as a difference.
    std::vector<float> y1(yr.size(), 7.f), s1(sr.size(), 7.f);
    SsdScanArgs a1 = a;
    a1.y = y1.data(), a1.final_state = s1.data();
    ssd_scan_set_seq_version(1);
    REQUIRE(ssd_scan_fwd_seq_cuda(a1, nullptr) == cudaSuccess);
    ssd_scan_set_seq_version(-1);
    CHECK(y1 == y);
    CHECK(s1 == s);
    // Version 3 (bf16 operands): against the reference within bf16's rounding, its bf16 y equal
    // to its fp32 y rounded, and not version 2's result (the switch took effect).
    std::vector<float> y3(yr.size(), 7.f), s3(sr.size(), 7.f), s3b(sr.size(), 7.f);
    std::vector<uint16_t> y3b(y.size(), 0x7fc1);
    SsdScanArgs a3 = a, a3b = ab;
    a3.y = y3.data(), a3.final_state = s3.data(), a3b.final_state = s3b.data(), a3b.y_bf16 = y3b.data();
    ssd_scan_set_seq_version(3);
    REQUIRE(ssd_scan_fwd_seq_cuda(a3, nullptr) == cudaSuccess);
    REQUIRE(ssd_scan_fwd_seq_cuda(a3b, nullptr) == cudaSuccess);
    ssd_scan_set_seq_version(-1);
    const double ey3 = rel_err(y3.data(), yr.data(), y3.size()), es3 = rel_err(s3.data(), sr.data(), s3.size());
    INFO("version 3 (bf16 operands): y " << ey3 << ", state " << es3);
    CHECK(ey3 < 1e-2);
    CHECK(es3 < 1e-2);
    CHECK(y3 != y);
    size_t diff3 = 0;
    for (size_t i = 0; i < y3.size(); ++i) diff3 += y3b[i] != dfssm::float_to_bf16(y3[i]);
    CHECK(diff3 == 0);
    CHECK(s3b == s3);
    WARN("ssd_seq version 3 (bf16 operands) vs the scalar reference, L " << L << " H " << H << " G " << G
                                                                         << ": y " << ey3 << ", state " << es3);
  }
  SsdScanArgs bad;
  bad.P = 64, bad.N = 96, bad.H = 4, bad.G = 1, bad.batch = 1, bad.L = 10;
  CHECK_FALSE(ssd_scan_seq_supported(bad));
  CHECK(ssd_scan_fwd_seq_cuda(bad, nullptr) == cudaErrorInvalidValue);
}

// Version 4: version 3 on bf16 x, B and C (the conv's bf16 output in the no-grad passes). On
// inputs that are bf16 values already, version 3 converts them exactly, so the two differ only
// where CB's fp32 sums (TF32 mma in chunk_cb, bf16 mma in chunk_cb_bf16) round M differently.
TEST_CASE("ssd_scan one-kernel forward version 4 (emulated, bf16 inputs) == version 3 on the same values",
          "[cuda_emu][ssd_scan]") {
  const int64_t b = 2;
  for (const auto& [L, H, G, with_init] : {std::tuple<int64_t, int64_t, int64_t, bool>{165, 4, 2, true},
                                           std::tuple<int64_t, int64_t, int64_t, bool>{37, 2, 1, false}}) {
    ScanCase sc(b, L, H, G, 64, with_init, uint32_t(7 * L + H));
    // bf16 rows: 8 elements of padding (16 bytes, the kernel's alignment), then x, B, C.
    const int64_t P = 64, N = 128, row = 8 + H * P + 2 * G * N;
    std::vector<uint16_t> hbuf(size_t(b * L * row), 0);
    std::vector<float> fbuf(hbuf.size(), 0.f);  // the same values in fp32
    for (int64_t r = 0; r < b * L; ++r)
      for (int64_t k = 0; k < H * P + 2 * G * N; ++k) {
        const float v = sc.buf[size_t(r * (4 + H * P + 2 * G * N) + 4 + k)];
        hbuf[size_t(r * row + 8 + k)] = dfssm::float_to_bf16(v);
        fbuf[size_t(r * row + 8 + k)] = dfssm::bf16_to_float(dfssm::float_to_bf16(v));
      }
    SsdScanArgs a3 = sc.a;  // fp32 inputs holding bf16 values
    a3.x = fbuf.data() + 8, a3.B = a3.x + H * P, a3.C = a3.B + G * N, a3.x_row = a3.bc_row = row;
    SsdScanArgs a4 = a3;  // the same values in bf16
    a4.x = a4.B = a4.C = nullptr;
    a4.x_bf16 = hbuf.data() + 8, a4.B_bf16 = a4.x_bf16 + H * P, a4.C_bf16 = a4.B_bf16 + G * N;
    // The scalar reference on those values.
    std::vector<float> yr(sc.yr.size()), sr(sc.sr.size());
    SsdScanArgs ar = a3;
    ar.y = yr.data(), ar.final_state = sr.data();
    ssd_scan_fwd_ref(ar);
    std::vector<float> y3(yr.size(), 7.f), s3(sr.size(), 7.f), y4(yr.size(), 7.f), s4(sr.size(), 7.f);
    std::vector<uint16_t> y4b(yr.size(), 0x7fc1);
    std::vector<float> s4b(sr.size(), 7.f);
    Aligned ws3(size_t(ssd_scan_seq_workspace_floats(a3))), ws4(size_t(ssd_scan_seq_workspace_floats(a4)));
    a3.y = y3.data(), a3.final_state = s3.data(), a3.workspace = ws3.p;
    a4.y = y4.data(), a4.final_state = s4.data(), a4.workspace = ws4.p;
    REQUIRE(ssd_scan_seq_supported(a4));
    ssd_scan_set_seq_version(3);
    REQUIRE(ssd_scan_fwd_seq_cuda(a3, nullptr) == cudaSuccess);
    ssd_scan_set_seq_version(-1);
    REQUIRE(ssd_scan_fwd_seq_cuda(a4, nullptr) == cudaSuccess);  // bf16 inputs: version 4 at any setting
    // CB from bf16 B and C equals the fp32 chunk_cb's on the same values up to fp32 summation order.
    const size_t ncb = size_t(ssd_scan_seq_workspace_floats(a4));
    const double ecb = rel_err(ws4.p, ws3.p, ncb);
    const double e43 = rel_err(y4.data(), y3.data(), y4.size()), es43 = rel_err(s4.data(), s3.data(), s4.size());
    const double ey = rel_err(y4.data(), yr.data(), y4.size()), es = rel_err(s4.data(), sr.data(), s4.size());
    INFO("L " << L << " H " << H << " G " << G << ": CB vs chunk_cb " << ecb << "; vs version 3: y " << e43
              << ", state " << es43 << "; vs the reference: y " << ey << ", state " << es);
    CHECK(ecb < 1e-6);
    CHECK(e43 < 1e-4);
    CHECK(es43 < 1e-4);
    CHECK(ey < 1e-2);
    CHECK(es < 1e-2);
    // bf16 y: the fp32 y rounded, and the same state.
    SsdScanArgs a4b = a4;
    a4b.y = nullptr, a4b.y_bf16 = y4b.data(), a4b.final_state = s4b.data();
    REQUIRE(ssd_scan_fwd_seq_cuda(a4b, nullptr) == cudaSuccess);
    size_t diff = 0;
    for (size_t i = 0; i < y4.size(); ++i) diff += y4b[i] != dfssm::float_to_bf16(y4[i]);
    CHECK(diff == 0);
    CHECK(s4b == s4);
    WARN("ssd_seq version 4 (bf16 inputs), L " << L << " H " << H << " G " << G << ": CB vs chunk_cb " << ecb
                                               << "; vs version 3: y " << e43 << ", state " << es43
                                               << "; vs the reference: y " << ey << ", state " << es);
  }
  // bf16 rows must be 8-element multiples (16-byte pieces).
  ScanCase sc(1, 64, 2, 1, 64, false, 3);
  std::vector<uint16_t> hb(size_t(64 * 400), 0);
  SsdScanArgs a = sc.a;
  std::vector<float> y(sc.yr.size()), s(sc.sr.size());
  Aligned ws(size_t(ssd_scan_seq_workspace_floats(a)));
  a.y = y.data(), a.final_state = s.data(), a.workspace = ws.p;
  a.x_bf16 = hb.data(), a.B_bf16 = hb.data() + 128, a.C_bf16 = hb.data() + 256, a.x_row = a.bc_row = 396;
  CHECK_FALSE(ssd_scan_seq_supported(a));
  a.x_row = a.bc_row = 400;
  CHECK(ssd_scan_seq_supported(a));
}

TEST_CASE("ssd_scan backward kernels (emulated) == scalar reference: chunks 64/128, partial chunk, groups",
          "[cuda_emu][ssd_scan]") {
  const int64_t b = 1, H = 4, G = 2, P = 64, N = 128;
  for (const auto& [T, with_init] : {std::pair{64, true}, std::pair{128, false}, std::pair{64, false},
                                     std::pair{128, true}}) {
    const int64_t L = T + 37;  // two chunks, the second partial
    const int64_t row = 4 + H * P + 2 * G * N;
    std::mt19937 rng(uint32_t(T * 3 + with_init));
    std::normal_distribution<float> nd;
    auto vec = [](int64_t n) { return std::vector<float>(static_cast<size_t>(n)); };
    auto buf = vec(b * L * row), dt = vec(b * L * H), A = vec(H), D = vec(H), init = vec(b * H * P * N);
    auto dy = vec(b * L * H * P), dfin = vec(b * H * P * N);
    for (auto* v : {&buf, &D, &init, &dy, &dfin})
      for (auto& e : *v) e = nd(rng);
    for (auto& v : dt) v = std::log1p(std::exp(nd(rng) - 2.f));
    for (auto& v : A) v = -std::exp(0.5f * nd(rng));
    SsdScanArgs a;
    a.x = buf.data() + 4, a.x_row = row, a.dt = dt.data(), a.A = A.data();
    a.B = buf.data() + 4 + H * P, a.C = a.B + G * N, a.bc_row = row, a.D = D.data();
    a.init = with_init ? init.data() : nullptr;
    a.batch = b, a.L = L, a.H = int(H), a.G = int(G), a.P = int(P), a.N = int(N), a.T = T;
    // The reference gradients.
    auto dx_r = vec(b * L * H * P), ddt_r = vec(b * L * H), dA_r = vec(H), dD_r = vec(H);
    auto dB_r = vec(b * L * G * N), dC_r = vec(b * L * G * N), di_r = vec(b * H * P * N);
    SsdScanGrads gr;
    gr.dy = dy.data(), gr.dfinal = dfin.data(), gr.dx = dx_r.data(), gr.ddt = ddt_r.data(), gr.dA = dA_r.data();
    gr.dB = dB_r.data(), gr.dC = dC_r.data(), gr.dD = dD_r.data(), gr.dinit = with_init ? di_r.data() : nullptr;
    ssd_scan_bwd_ref(a, gr);
    // The kernels: the forward fills the workspace the backward reads.
    auto y = vec(b * L * H * P), s = vec(b * H * P * N);
    Aligned ws(size_t(ssd_scan_workspace_floats(a))), bws(size_t(ssd_scan_bwd_workspace_floats(a)));
    Aligned dx(dx_r.size());
    a.y = y.data(), a.final_state = s.data(), a.workspace = ws.p;
    REQUIRE(ssd_scan_fwd_cuda(a, nullptr) == cudaSuccess);
    auto ddt = vec(b * L * H), dA = vec(H), dD = vec(H);
    Aligned dBa(size_t(b * L * G * N)), dCa(size_t(b * L * G * N));  // WMMA stores: 32-byte aligned
    float *dB = dBa.p, *dC = dCa.p;
    auto di = vec(b * H * P * N);
    SsdScanGrads g = gr;
    g.dx = dx.p, g.ddt = ddt.data(), g.dA = dA.data(), g.dB = dB, g.dC = dC, g.dD = dD.data();
    g.dinit = with_init ? di.data() : nullptr, g.workspace = bws.p;
    REQUIRE(ssd_scan_bwd_supported(a, g));
    // At T = 64 the reverse state pass runs as the sequential kernel (seq 1) and as dstate_local +
    // dstate_pass (seq 0).
    // seq 2: the sequential reverse pass on bf16 operands (DFSSM_SSD_STATES_BF16=1); seq 3:
    // chunk_bwd and dB/dC with truncated TF32 operands (DFSSM_SSD_BWD_TF32_TRUNC=1).
    // (2 and 3 in one case each: an emulated backward takes ~20 s on 2 cores.)
    std::vector<float> dx1;  // seq 1's dx: seq 2 and 3 must differ from it (their switch took effect)
    for (const int seq : {1, 0, 2, 3}) {
      if (seq == 0 && T != 64) continue;
      if (seq >= 2 && !(T == 64 && with_init)) continue;
      ssd_scan_set_seq(seq >= 1);
      ssd_scan_set_states_bf16(seq == 2);
      ssd_scan_set_bwd_trunc(seq == 3);
      REQUIRE(ssd_scan_bwd_cuda(a, g, nullptr) == cudaSuccess);
      ssd_scan_set_seq(-1);
      ssd_scan_set_states_bf16(-1);
      ssd_scan_set_bwd_trunc(-1);
      if (seq == 1) dx1.assign(dx.p, dx.p + dx_r.size());
      if (seq >= 2) CHECK_FALSE(std::equal(dx1.begin(), dx1.end(), dx.p));
      const std::pair<const char*, std::pair<const float*, const std::vector<float>*>> cmp[] = {
          {"dx", {dx.p, &dx_r}}, {"ddt", {ddt.data(), &ddt_r}}, {"dA", {dA.data(), &dA_r}}, {"dD", {dD.data(), &dD_r}},
          {"dB", {dB, &dB_r}}, {"dC", {dC, &dC_r}}, {"dinit", {di.data(), &di_r}}};
      for (const auto& [name, pr] : cmp) {
        if (std::string(name) == "dinit" && !with_init) continue;
        const double e = rel_err(pr.first, pr.second->data(), pr.second->size());
        WARN("bwd T " << T << " init " << with_init << " seq " << seq << ": " << name << " " << e);
        CHECK(e < (seq == 2 ? 1e-2 : 3e-3));
      }
    }
    // dx, dB and dC as slices of one (b, L, srow) buffer (the conv output's gradient, as the
    // model passes them): the same values as the contiguous outputs, from the kernels (run again
    // contiguous first, with the same switches) and from the reference.
    if (with_init != (T == 64)) continue;
    const int64_t srow = H * P + 2 * G * N + 8;
    REQUIRE(ssd_scan_bwd_cuda(a, g, nullptr) == cudaSuccess);
    Aligned sb(size_t(b * L * srow));
    std::fill(sb.p, sb.p + b * L * srow, -7.f);  // the gaps must stay untouched
    SsdScanGrads gs = g;
    gs.dx = sb.p, gs.dB = sb.p + H * P, gs.dC = sb.p + H * P + G * N, gs.dx_row = gs.dbc_row = srow;
    REQUIRE(ssd_scan_bwd_supported(a, gs));
    REQUIRE(ssd_scan_bwd_cuda(a, gs, nullptr) == cudaSuccess);
    std::vector<float> sr(size_t(b * L * srow), -7.f);
    SsdScanGrads grs = gr;
    grs.dx = sr.data(), grs.dB = sr.data() + H * P, grs.dC = sr.data() + H * P + G * N, grs.dx_row = grs.dbc_row = srow;
    ssd_scan_bwd_ref(a, grs);
    int64_t diff_k = 0, diff_r = 0;
    for (int64_t r = 0; r < b * L; ++r) {
      for (int64_t i = 0; i < H * P; ++i) {
        diff_k += sb.p[r * srow + i] != dx.p[r * H * P + i];
        diff_r += sr[size_t(r * srow + i)] != dx_r[size_t(r * H * P + i)];
      }
      for (int64_t i = 0; i < G * N; ++i) {
        diff_k += (sb.p[r * srow + H * P + i] != dB[r * G * N + i]) +
                  (sb.p[r * srow + H * P + G * N + i] != dC[r * G * N + i]);
        diff_r += (sr[size_t(r * srow + H * P + i)] != dB_r[size_t(r * G * N + i)]) +
                  (sr[size_t(r * srow + H * P + G * N + i)] != dC_r[size_t(r * G * N + i)]);
      }
      for (int64_t i = H * P + 2 * G * N; i < srow; ++i)
        diff_k += sb.p[r * srow + i] != -7.f, diff_r += sr[size_t(r * srow + i)] != -7.f;
    }
    CHECK(diff_k == 0);
    CHECK(diff_r == 0);
  }
}
