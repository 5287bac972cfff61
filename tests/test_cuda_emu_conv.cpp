// The training conv1d + SiLU kernels (src/kernels/cuda/conv_train.cu) on the CPU emulator
// (tests/cuda_emu/cuda_emu.h) against their scalar references: version 2 (V channels per thread,
// where C and the row stride are multiples of V) and version 1 (the fallback, odd C), a strided
// input, runs that end inside the sequence's last unrolled step, fp32 and bf16 input. The gpu
// tests run them at the 1.3B shape (test_gpu_train_kernels "[conv]").
#include "cuda_emu/cuda_emu.h"
// The kernel source itself, compiled as C++ (DFSSM_CUDA_EMULATE is set for this target).
#include "kernels/cuda/conv_train.cu"

#include <cstring>
#include <random>
#include <vector>

#include "catch_compat.h"
#include "cuda_emu/emu_test_util.h"
#include "kernels/cpu/conv_train_ref.h"

using namespace dfssm::kernels;
using dfssm::emu_test::Buf;
using dfssm::emu_test::bf;
using dfssm::emu_test::rel_err;
using dfssm::emu_test::strided_diff;

TEST_CASE("conv1d + SiLU kernels (emulated) == scalar reference: versions 1 and 2, strided, fp32 and bf16",
          "[cuda_emu][conv]") {
  std::mt19937 rng(21);
  std::normal_distribution<float> nd;
  struct Shape {
    int64_t B, L;
    int C, K;
  };
  // L = 77: forward runs of 32 end at 64 and 77 (inside an unrolled step); backward runs of 64 at
  // 64 and 77 (past the lookahead). C = 136: a partial block of version 2's threads.
  for (const auto sh : {Shape{2, 77, 136, 4}, Shape{1, 70, 136, 3}, Shape{2, 77, 131, 4}}) {
    for (const bool lowp : {false, true}) {
      INFO("B=" << sh.B << " L=" << sh.L << " C=" << sh.C << " K=" << sh.K << (lowp ? " bf16" : " fp32"));
      const int64_t ldx = sh.C + 12, BL = sh.B * sh.L;
      const size_t n = size_t(BL) * size_t(sh.C);
      std::vector<float> xfull(size_t(BL * ldx)), w(size_t(sh.C * sh.K)), bias(size_t(sh.C)), dout(n);
      for (auto* v : {&xfull, &w, &bias, &dout})
        for (auto& e : *v) e = nd(rng) * (v == &w || v == &bias ? 0.5f : 1.f);
      if (lowp)
        for (auto& e : xfull) e = bf(e);
      std::vector<float> xs(n);
      for (int64_t r = 0; r < BL; ++r)
        for (int c = 0; c < sh.C; ++c) xs[size_t(r * sh.C + c)] = xfull[size_t(r * ldx + c)];
      std::vector<float> out_r(n), dx_r(n), dw_r(w.size()), db_r(bias.size());
      conv_silu_fwd_ref(xs.data(), w.data(), bias.data(), out_r.data(), sh.B, sh.L, sh.C, sh.K);
      conv_silu_bwd_ref(xs.data(), w.data(), bias.data(), dout.data(), dx_r.data(), dw_r.data(), db_r.data(), sh.B, sh.L,
                        sh.C, sh.K);
      const size_t es = lowp ? 2 : 4;
      const auto dt = lowp ? ConvDtype::bf16 : ConvDtype::f32;
      const int64_t np = conv_silu_bwd_partial_size(sh.B, sh.L, sh.C, sh.K);
      Buf xb(xfull.size() * es), wb(w.size() * 4), bb(bias.size() * 4), ob(n * 4), db(n * 4), dxb(n * es),
          pb(size_t(np) * 4);
      for (size_t i = 0; i < xfull.size(); ++i) {
        if (lowp) {
          xb.h()[i] = __float2bfloat16(xfull[i]);
        } else {
          xb.f()[i] = xfull[i];
        }
      }
      std::copy(w.begin(), w.end(), wb.f()), std::copy(bias.begin(), bias.end(), bb.f());
      std::copy(dout.begin(), dout.end(), db.f());
      REQUIRE(conv_silu_fwd_cuda(xb.p, dt, ldx, wb.f(), bb.f(), ob.f(), sh.B, sh.L, sh.C, sh.K, nullptr) == cudaSuccess);
      REQUIRE(conv_silu_bwd_cuda(xb.p, dt, ldx, wb.f(), bb.f(), db.f(), dxb.p, pb.f(), sh.B, sh.L, sh.C, sh.K, nullptr) ==
              cudaSuccess);
      std::vector<float> out(ob.f(), ob.f() + n), dx(n), dw(w.size(), 0.f), dbias(bias.size(), 0.f);
      for (size_t i = 0; i < n; ++i) dx[i] = lowp ? __bfloat162float(dxb.h()[i]) : dxb.f()[i];
      for (int64_t r = 0; r < np / (sh.C * (sh.K + 1)); ++r)
        for (int c = 0; c < sh.C; ++c) {
          const float* p = pb.f() + (r * sh.C + c) * (sh.K + 1);
          for (int k = 0; k < sh.K; ++k) dw[size_t(c * sh.K + k)] += p[k];
          dbias[size_t(c)] += p[sh.K];
        }
      CHECK(rel_err(out, out_r) < 1e-5);
      {  // bf16 output (the no-grad passes of DFSSM_SSD_SEQ_VERSION=4): the fp32 output rounded, bit for bit
        Buf oh(n * 2);
        REQUIRE(conv_silu_fwd_cuda(xb.p, dt, ldx, wb.f(), bb.f(), oh.p, sh.B, sh.L, sh.C, sh.K, nullptr,
                                   ConvDtype::bf16) == cudaSuccess);
        size_t diff = 0;
        for (size_t i = 0; i < n; ++i) diff += __bfloat162float(oh.h()[i]) != bf(out[i]);
        CHECK(diff == 0);
      }
      CHECK(rel_err(dx, dx_r) < (lowp ? 5e-3 : 1e-5));  // dx is stored in x's dtype
      CHECK(rel_err(dw, dw_r) < 1e-5);
      CHECK(rel_err(dbias, db_r) < 1e-5);
      // dx written at x's row stride (into the split's shared gradient buffer, model/split_grad.h):
      // the same values bit for bit, the other columns untouched.
      Buf dxs(size_t(BL * ldx) * es), ps(size_t(np) * 4);
      std::fill(dxs.u8(), dxs.u8() + size_t(BL * ldx) * es, uint8_t(0x7f));
      REQUIRE(conv_silu_bwd_cuda(xb.p, dt, ldx, wb.f(), bb.f(), db.f(), dxs.p, ps.f(), sh.B, sh.L, sh.C, sh.K, nullptr,
                                 ldx) == cudaSuccess);
      const auto sd = strided_diff(dxs.u8(), ldx, dxb.u8(), BL, sh.C, es);
      CHECK(sd.diff == 0);
      CHECK(sd.touched == 0);
      CHECK(std::memcmp(ps.u8(), pb.u8(), size_t(np) * 4) == 0);
      CHECK(conv_silu_bwd_cuda(xb.p, dt, ldx, wb.f(), bb.f(), db.f(), dxs.p, ps.f(), sh.B, sh.L, sh.C, sh.K, nullptr,
                               sh.C - 1) == cudaErrorInvalidValue);
    }
  }
}
