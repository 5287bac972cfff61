// Chunked SSD == token-by-token recurrence (fp64), across chunk sizes, ragged lengths, groups.
#include <ATen/CPUGeneratorImpl.h>

#include "catch_compat.h"
#include "kernels/cpu/ssd_scan_ref.h"
#include "model/split_grad.h"
#include "model/ssd.h"
#include "model_test_util.h"

using namespace dfssm;
using dfssm::test::rel_err;

namespace {
struct Inputs {
  at::Tensor x, dt, A, B, C, init;
};

Inputs random_inputs(int64_t b, int64_t l, int64_t h, int64_t p, int64_t g, int64_t n, uint64_t seed,
                     at::ScalarType dt_type = at::kDouble) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto o = at::TensorOptions().dtype(dt_type);
  Inputs in;
  in.x = at::randn({b, l, h, p}, gen, o);
  in.dt = at::softplus(at::randn({b, l, h}, gen, o) - 1.0);  // positive, mostly < 1
  in.A = -at::exp(at::randn({h}, gen, o) * 0.5);
  in.B = at::randn({b, l, g, n}, gen, o);
  in.C = at::randn({b, l, g, n}, gen, o);
  in.init = at::randn({b, h, p, n}, gen, o);
  return in;
}
}  // namespace

TEST_CASE("segsum is the masked exclusive segment sum", "[ssd]") {
  const auto x = at::tensor({1.0, 2.0, 3.0}, at::kDouble);
  const auto s = segsum(x);
  REQUIRE(s[0][0].item<double>() == 0.0);
  REQUIRE(s[2][0].item<double>() == 5.0);  // x1 + x2
  REQUIRE(s[2][1].item<double>() == 3.0);
  REQUIRE(std::isinf(s[0][1].item<double>()));
}

TEST_CASE("chunked SSD equals the sequential recurrence in fp64", "[ssd]") {
  uint64_t seed = 100;
  for (int64_t g : {1, 2}) {
    for (int64_t chunk : {4, 16, 64}) {
      for (int64_t l : {1, 5, 16, 37, 100}) {
        const auto in = random_inputs(2, l, 4, 8, g, 16, seed++);
        INFO("g=" << g << " chunk=" << chunk << " l=" << l);
        auto [y, s] = ssd_chunked(in.x, in.dt, in.A, in.B, in.C, chunk);
        auto [yr, sr] = ssd_sequential(in.x, in.dt, in.A, in.B, in.C);
        REQUIRE(rel_err(y, yr) < 1e-12);
        REQUIRE(rel_err(s, sr) < 1e-12);
        // Continuing from a non-zero state.
        auto [y2, s2] = ssd_chunked(in.x, in.dt, in.A, in.B, in.C, chunk, in.init);
        auto [yr2, sr2] = ssd_sequential(in.x, in.dt, in.A, in.B, in.C, in.init);
        REQUIRE(rel_err(y2, yr2) < 1e-12);
        REQUIRE(rel_err(s2, sr2) < 1e-12);
      }
    }
  }
}

TEST_CASE("chunked SSD in fp32 stays within fp32 rounding of the fp64 recurrence", "[ssd]") {
  const auto in = random_inputs(1, 300, 8, 16, 2, 32, 7);
  auto [y, s] = ssd_chunked(in.x.to(at::kFloat), in.dt.to(at::kFloat), in.A.to(at::kFloat), in.B.to(at::kFloat),
                            in.C.to(at::kFloat), 64);
  auto [yr, sr] = ssd_sequential(in.x, in.dt, in.A, in.B, in.C);
  REQUIRE(rel_err(y, yr) < 1e-5);
  REQUIRE(rel_err(s, sr) < 1e-5);
}

TEST_CASE("a wrong group mapping is detected", "[ssd]") {
  // Guards the test itself: heads must take groups in contiguous blocks (repeat_interleave).
  const auto in = random_inputs(1, 20, 4, 4, 2, 8, 3);
  auto [y, s] = ssd_chunked(in.x, in.dt, in.A, in.B, in.C, 8);
  const auto Bw = in.B.flip(2), Cw = in.C.flip(2);  // swaps the two groups
  auto [yw, sw] = ssd_sequential(in.x, in.dt, in.A, Bw, Cw);
  REQUIRE(rel_err(y, yw) > 1e-2);
}

// The fused forward's scalar twin (kernels/cpu/ssd_scan_ref.h) is the CUDA kernels' reference;
// here it is checked against the ATen chunked SSD + D skip, reading x, B and C as strided slices
// of one wider row (as the model hands them over), with a partial last chunk, 2 groups and an
// initial state or none.
TEST_CASE("fused SSD forward's scalar reference == ATen chunked SSD + D", "[ssd][ssd_scan]") {
  const int64_t b = 2, l = 77, h = 4, p = 8, g = 2, n = 16;
  for (const int64_t T : {16, 32}) {
    for (const bool with_init : {false, true}) {
      auto in = random_inputs(b, l, h, p, g, n, 10 + uint64_t(T) + with_init, at::kFloat);
      auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
      const auto D = at::randn({h}, gen);
      // One (b, l, 4 + h·p + 2·g·n) buffer holding x, B and C side by side, like in_proj's output.
      const int64_t row = 4 + h * p + 2 * g * n;
      auto buf = at::randn({b, l, row}, gen);
      auto xv = buf.narrow(2, 4, h * p).view({b, l, h, p});
      auto Bv = buf.narrow(2, 4 + h * p, g * n).view({b, l, g, n});
      auto Cv = buf.narrow(2, 4 + h * p + g * n, g * n).view({b, l, g, n});
      xv.copy_(in.x), Bv.copy_(in.B), Cv.copy_(in.C);
      const auto init = with_init ? in.init.contiguous() : at::Tensor();
      auto [ye, se] = ssd_chunked(in.x, in.dt, in.A, in.B, in.C, T, init);
      ye = ye + in.x * D.view({1, 1, h, 1});
      if (!with_init) se = se.contiguous();
      auto y = at::empty({b, l, h, p}), s = at::empty({b, h, p, n});
      kernels::SsdScanArgs a;
      a.x = xv.data_ptr<float>(), a.x_row = row;
      const auto dtc = in.dt.contiguous(), Ac = in.A.contiguous();
      a.dt = dtc.data_ptr<float>(), a.A = Ac.data_ptr<float>();
      a.B = Bv.data_ptr<float>(), a.C = Cv.data_ptr<float>(), a.bc_row = row;
      a.D = D.data_ptr<float>(), a.init = with_init ? init.data_ptr<float>() : nullptr;
      a.y = y.data_ptr<float>(), a.final_state = s.data_ptr<float>();
      a.batch = b, a.L = l, a.H = int(h), a.G = int(g), a.P = int(p), a.N = int(n), a.T = int(T);
      kernels::ssd_scan_fwd_ref(a);
      INFO("T " << T << " init " << with_init);
      CHECK(rel_err(y, ye) < 1e-5);
      CHECK(rel_err(s, se) < 1e-5);
    }
  }
}

// The backward's scalar reference (the math the fused backward kernels are to implement) against
// autograd through the ATen chunked SSD + D skip: every input's gradient, with a partial last
// chunk, 2 groups of 2 heads, with and without an initial state and a final-state gradient.
TEST_CASE("fused SSD backward's scalar reference == autograd of the ATen chunked SSD", "[ssd][ssd_scan]") {
  const int64_t b = 2, l = 45, h = 4, p = 6, g = 2, n = 5, T = 16;
  for (const bool with_init : {false, true}) {
    auto in = random_inputs(b, l, h, p, g, n, 40 + with_init, at::kFloat);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    const auto D = at::randn({h}, gen), wy = at::randn({b, l, h, p}, gen), ws = at::randn({b, h, p, n}, gen);
    std::vector<at::Tensor> v = {in.x, in.dt, in.A, in.B, in.C, D, in.init};
    for (auto& t : v) t = t.detach().clone().requires_grad_(true);
    auto [y, s] = ssd_chunked(v[0], v[1], v[2], v[3], v[4], T, with_init ? v[6] : at::Tensor());
    y = y + v[0] * v[5].view({1, 1, h, 1});
    ((y * wy).sum() + (s * ws).sum()).backward();

    kernels::SsdScanArgs a;
    const auto x = in.x.contiguous(), dt = in.dt.contiguous(), A = in.A.contiguous(), Bc = in.B.contiguous(),
               Cc = in.C.contiguous(), init = in.init.contiguous();
    a.x = x.data_ptr<float>(), a.x_row = h * p, a.dt = dt.data_ptr<float>(), a.A = A.data_ptr<float>();
    a.B = Bc.data_ptr<float>(), a.C = Cc.data_ptr<float>(), a.bc_row = g * n, a.D = D.data_ptr<float>();
    a.init = with_init ? init.data_ptr<float>() : nullptr;
    a.batch = b, a.L = l, a.H = int(h), a.G = int(g), a.P = int(p), a.N = int(n), a.T = int(T);
    auto dx = at::empty_like(x), ddt = at::empty_like(dt), dA = at::empty_like(A), dB = at::empty_like(Bc),
         dC = at::empty_like(Cc), dD = at::empty_like(D), dinit = at::empty_like(init);
    kernels::SsdScanGrads gr;
    gr.dy = wy.data_ptr<float>(), gr.dfinal = ws.data_ptr<float>();
    gr.dx = dx.data_ptr<float>(), gr.ddt = ddt.data_ptr<float>(), gr.dA = dA.data_ptr<float>();
    gr.dB = dB.data_ptr<float>(), gr.dC = dC.data_ptr<float>(), gr.dD = dD.data_ptr<float>();
    gr.dinit = with_init ? dinit.data_ptr<float>() : nullptr;
    kernels::ssd_scan_bwd_ref(a, gr);
    INFO("init " << with_init);
    CHECK(rel_err(dx, v[0].grad()) < 1e-5);
    CHECK(rel_err(ddt, v[1].grad()) < 1e-5);
    CHECK(rel_err(dA, v[2].grad()) < 1e-5);
    CHECK(rel_err(dB, v[3].grad()) < 1e-5);
    CHECK(rel_err(dC, v[4].grad()) < 1e-5);
    CHECK(rel_err(dD, v[5].grad()) < 1e-5);
    if (with_init) CHECK(rel_err(dinit, v[6].grad()) < 1e-5);
  }
}

// in_proj's column split with the shared gradient buffer (model/split_grad.h), on the CPU where no
// consumer writes in place: the split's backward copies every part's gradient into the buffer
// (and zeros an unused part's columns), which must equal autograd's own split.
TEST_CASE("split_columns: its backward == split_with_sizes' (parts copied in, unused part zero)", "[model]") {
  at::manual_seed(3);
  const auto x0 = at::randn({2, 5, 11});
  const std::vector<int64_t> sizes{4, 5, 2};
  const auto w = at::randn({2, 5, 11});
  auto grad_of = [&](bool shared, bool use_last) {
    const auto x = x0.clone().requires_grad_(true);
    const auto s = dfssm::split_columns(x, sizes, /*any_device=*/shared);
    REQUIRE(s.parts.size() == 3);
    CHECK(s.into[0].defined() == shared);
    auto loss = (s.parts[0] * w.narrow(2, 0, 4)).sum() + (s.parts[1].pow(2) * w.narrow(2, 4, 5)).sum();
    if (use_last) loss = loss + s.parts[2].sin().sum();
    loss.backward();
    return x.grad();
  };
  dfssm::set_split_grad_slab_enabled(true);
  for (const bool use_last : {true, false}) {
    const auto ref = grad_of(false, use_last), got = grad_of(true, use_last);
    CHECK(at::equal(got, ref));
    if (!use_last) CHECK(got.narrow(2, 9, 2).abs().max().item<float>() == 0.f);
  }
  {  // a retained graph's second backward gets a buffer of its own: twice the first gradient
    const auto x = x0.clone().requires_grad_(true);
    const auto s = dfssm::split_columns(x, sizes, true);
    const auto loss = (s.parts[0] * w.narrow(2, 0, 4)).sum() + s.parts[2].sum();
    loss.backward({}, /*retain_graph=*/true);
    const auto first = x.grad().clone();
    loss.backward();
    CHECK(at::allclose(x.grad(), 2 * first));
    CHECK(first.narrow(2, 4, 5).abs().max().item<float>() == 0.f);
  }
  CHECK(dfssm::split_grad_parts_in_place() == 0);  // nothing on the CPU writes in place
  dfssm::set_split_grad_slab_enabled(false);  // the switch off: autograd's split, no buffer
  CHECK_FALSE(dfssm::split_columns(x0.clone().requires_grad_(true), sizes, true).into[0].defined());
  dfssm::set_split_grad_slab_enabled(true);
}
