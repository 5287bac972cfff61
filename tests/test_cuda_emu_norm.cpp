// The training RMSNorm kernels (src/kernels/cuda/norm_train.cu, gated and plain) on the CPU
// emulator (tests/cuda_emu/cuda_emu.h) against their scalar references: row blocks with a partial
// last one, groups, 1 and 2 quads per thread, a strided z, fp32 and bf16 storage. The gpu tests
// run the same kernels on the device (test_gpu_train_kernels "[norm]").
#include "cuda_emu/cuda_emu.h"
// The kernel source itself, compiled as C++ (DFSSM_CUDA_EMULATE is set for this target).
#include "kernels/cuda/norm_train.cu"

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <random>
#include <vector>

#include "catch_compat.h"
#include "cuda_emu/emu_test_util.h"
#include "kernels/cpu/norm_train_ref.h"

using namespace dfssm::kernels;
using dfssm::emu_test::Buf;
using dfssm::emu_test::bf;
using dfssm::emu_test::rel_err;
using dfssm::emu_test::strided_diff;

namespace {

// n values of a buffer holding fp32 or bf16 storage, as floats.
std::vector<float> read(const Buf& b, bool bf16, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16 ? __bfloat162float(b.h()[i]) : b.f()[i];
  return v;
}
void write(const Buf& b, bool bf16, const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (bf16) {
      b.h()[i] = __float2bfloat16(v[i]);
    } else {
      b.f()[i] = v[i];
    }
  }
}
}  // namespace

TEST_CASE("norm kernels (emulated) == scalar reference: gated and plain, fp32 and bf16",
          "[cuda_emu][norm]") {
  struct Shape {
    int64_t R;
    int D, gs;
  };
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  auto randv = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = nd(rng);
    return v;
  };
  // (37 rows: blocks of 16, 16, 5.) gs 1536 in 2 groups: 384 quads, 1 per thread; gs 4096: 2 per
  // thread, 512 threads; plain 2048 and 768.
  for (const auto sh : {Shape{37, 3072, 1536}, Shape{18, 4096, 4096}, Shape{37, 2048, 2048}, Shape{21, 768, 768}}) {
    const bool gated = sh.gs != sh.D || sh.D == 4096;
    for (const bool lowp : {false, true}) {  // bf16 z, out and dout; with and without the row prefetch
      const bool pf = lowp == (sh.D != 2048);
      set_norm_prefetch(pf ? 1 : 0);
      INFO("R=" << sh.R << " D=" << sh.D << " gs=" << sh.gs << (gated ? " gated" : " plain") << (lowp ? " bf16" : " fp32")
                << (pf ? " prefetch" : ""));
      const size_t RD = size_t(sh.R) * size_t(sh.D);
      const int64_t ldz = sh.D + 20;
      auto y = randv(RD), w = randv(size_t(sh.D)), zfull = randv(size_t(sh.R) * size_t(ldz)), dout = randv(RD);
      if (lowp) {
        for (auto& v : zfull) v = bf(v);
        for (auto& v : dout) v = bf(v);
      }
      std::vector<float> z(RD);  // the contiguous z the references take
      for (int64_t r = 0; r < sh.R; ++r)
        for (int i = 0; i < sh.D; ++i) z[size_t(r * sh.D + i)] = zfull[size_t(r * ldz + i)];
      std::vector<float> out_r(RD), dy_r(RD), dz_r(RD), dw_r(size_t(sh.D));
      if (gated) {
        gated_norm_fwd_ref(y.data(), z.data(), w.data(), out_r.data(), sh.R, sh.D, sh.gs, 1e-5f);
        gated_norm_bwd_ref(y.data(), z.data(), w.data(), dout.data(), dy_r.data(), dz_r.data(), dw_r.data(), sh.R, sh.D,
                           sh.gs, 1e-5f);
      } else {
        rms_norm_fwd_ref(y.data(), w.data(), out_r.data(), sh.R, sh.D, 1e-5f);
        rms_norm_bwd_ref(y.data(), w.data(), dout.data(), dy_r.data(), dw_r.data(), sh.R, sh.D, 1e-5f);
      }
      const size_t es = lowp ? 2 : 4;
      const auto dt = lowp ? NormDtype::bf16 : NormDtype::f32;
      Buf yb(RD * 4), wb(size_t(sh.D) * 4), zb(zfull.size() * es), db(RD * es), ob(RD * es), dyb(RD * 4), dzb(RD * es),
          rb(size_t(sh.R) * size_t(sh.D / sh.gs) * 4), pb(size_t(norm_bwd_partial_size(sh.R, sh.D)) * 4);
      write(yb, false, y), write(wb, false, w), write(zb, lowp, zfull), write(db, lowp, dout);
      if (gated) {
        REQUIRE(gated_norm_fwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), ob.p, dt, rb.f(), sh.R, sh.D, sh.gs, 1e-5f, nullptr) ==
                cudaSuccess);
        REQUIRE(gated_norm_bwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), rb.f(), db.p, dt, dyb.f(), dzb.p, pb.f(), sh.R, sh.D,
                                    sh.gs, nullptr) == cudaSuccess);
      } else {
        REQUIRE(rms_norm_fwd_cuda(yb.f(), wb.f(), ob.p, dt, rb.f(), sh.R, sh.D, 1e-5f, nullptr) == cudaSuccess);
        REQUIRE(rms_norm_bwd_cuda(yb.f(), wb.f(), rb.f(), db.p, dt, dyb.f(), pb.f(), sh.R, sh.D, nullptr) == cudaSuccess);
      }
      if (!pf) {  // rows in pairs (the default without the prefetch) == one row at a time, bit for bit
        const size_t nr = size_t(sh.R) * size_t(sh.D / sh.gs);
        Buf o1(RD * es), r1(nr * 4);
        set_norm_fwd_pairs(0);
        if (gated)
          REQUIRE(gated_norm_fwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), o1.p, dt, r1.f(), sh.R, sh.D, sh.gs, 1e-5f,
                                      nullptr) == cudaSuccess);
        else
          REQUIRE(rms_norm_fwd_cuda(yb.f(), wb.f(), o1.p, dt, r1.f(), sh.R, sh.D, 1e-5f, nullptr) == cudaSuccess);
        set_norm_fwd_pairs(1);
        CHECK(read(o1, lowp, RD) == read(ob, lowp, RD));
        CHECK(read(r1, false, nr) == read(rb, false, nr));
      }
      if (gated && lowp) {  // the row pipeline (DFSSM_NORM_FWD_PIPE=1) == the kernel above, bit for bit
        const size_t nr = size_t(sh.R) * size_t(sh.D / sh.gs);
        Buf o1(RD * es), r1(nr * 4);
        set_norm_fwd_pipe(1);
        REQUIRE(gated_norm_fwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), o1.p, dt, r1.f(), sh.R, sh.D, sh.gs, 1e-5f,
                                    nullptr) == cudaSuccess);
        set_norm_fwd_pipe(0);
        CHECK(read(o1, lowp, RD) == read(ob, lowp, RD));
        CHECK(read(r1, false, nr) == read(rb, false, nr));
        // The backward's pipeline (DFSSM_NORM_BWD_PIPE=1): dy and dz bit for bit; dw from other row
        // sets (the partial rows no block owns must come back zeroed: they start as garbage here).
        const size_t np = size_t(norm_bwd_partial_size(sh.R, sh.D));
        Buf dy2(RD * 4), dz2(RD * es), p2(np * 4);
        std::fill(p2.f(), p2.f() + np, 1e30f);
        set_norm_bwd_pipe(1);
        REQUIRE(gated_norm_bwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), rb.f(), db.p, dt, dy2.f(), dz2.p, p2.f(), sh.R, sh.D,
                                    sh.gs, nullptr) == cudaSuccess);
        set_norm_bwd_pipe(0);
        CHECK(read(dy2, false, RD) == read(dyb, false, RD));
        CHECK(read(dz2, lowp, RD) == read(dzb, lowp, RD));
        std::vector<float> dw2(size_t(sh.D), 0.f);
        for (size_t b = 0; b < np / size_t(sh.D); ++b)
          for (int i = 0; i < sh.D; ++i) dw2[size_t(i)] += p2.f()[b * size_t(sh.D) + size_t(i)];
        CHECK(rel_err(dw2, dw_r) < 1e-4);
      }
      std::vector<float> dw(size_t(sh.D), 0.f);
      const int64_t nblk = norm_bwd_partial_size(sh.R, sh.D) / sh.D;
      for (int64_t b = 0; b < nblk; ++b)
        for (int i = 0; i < sh.D; ++i) dw[size_t(i)] += pb.f()[b * sh.D + i];
      const double eo = rel_err(read(ob, lowp, RD), out_r), ey = rel_err(read(dyb, false, RD), dy_r),
                   ew = rel_err(dw, dw_r);
      CHECK(eo < (lowp ? 5e-3 : 1e-5));  // out is stored in its dtype
      CHECK(ey < 1e-4);
      CHECK(ew < 1e-4);
      if (gated) CHECK(rel_err(read(dzb, lowp, RD), dz_r) < (lowp ? 5e-3 : 1e-4));
      if (gated) {  // dz at z's row stride (the split's shared gradient buffer): the same bits, the rest untouched
        const size_t nz = size_t(sh.R) * size_t(ldz), np = size_t(norm_bwd_partial_size(sh.R, sh.D));
        Buf dzs(nz * es), dys(RD * 4), ps(np * 4);
        std::fill(dzs.u8(), dzs.u8() + nz * es, uint8_t(0x7f));
        REQUIRE(gated_norm_bwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), rb.f(), db.p, dt, dys.f(), dzs.p, ps.f(), sh.R, sh.D,
                                    sh.gs, nullptr, ldz) == cudaSuccess);
        const auto sd = strided_diff(dzs.u8(), ldz, dzb.u8(), sh.R, sh.D, es);
        CHECK(sd.diff == 0);
        CHECK(sd.touched == 0);
        CHECK(std::memcmp(dys.u8(), dyb.u8(), RD * 4) == 0);
        CHECK(gated_norm_bwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), rb.f(), db.p, dt, dys.f(), dzs.p, ps.f(), sh.R, sh.D,
                                  sh.gs, nullptr, sh.D - 4) == cudaErrorInvalidValue);
      }
      if (gated && lowp) {  // y in bf16 (the kept SSD output): the fp32 kernel's result on y rounded to bf16
        std::vector<float> yr(RD);
        for (size_t i = 0; i < RD; ++i) yr[i] = bf(y[i]);
        const size_t nr = size_t(sh.R) * size_t(sh.D / sh.gs);
        Buf yh(RD * 2), o1(RD * 2), o2(RD * 2), r1(nr * 4), r2(nr * 4);
        write(yh, true, yr), write(yb, false, yr);
        for (const int mode : {0, 1}) {  // both ways of hiding the row loads
          set_norm_prefetch(mode);
          REQUIRE(gated_norm_fwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), o1.p, dt, r1.f(), sh.R, sh.D, sh.gs, 1e-5f,
                                      nullptr) == cudaSuccess);
          REQUIRE(gated_norm_fwd_bf16y_cuda(yh.p, zb.p, dt, ldz, wb.f(), o2.p, dt, r2.f(), sh.R, sh.D, sh.gs, 1e-5f,
                                            nullptr) == cudaSuccess);
          CHECK(read(o2, true, RD) == read(o1, true, RD));
          CHECK(read(r2, false, nr) == read(r1, false, nr));
          if (mode == 0) {  // and the row pipeline on the bf16 y
            Buf o3(RD * 2), r3(nr * 4);
            set_norm_fwd_pipe(1);
            REQUIRE(gated_norm_fwd_bf16y_cuda(yh.p, zb.p, dt, ldz, wb.f(), o3.p, dt, r3.f(), sh.R, sh.D, sh.gs, 1e-5f,
                                              nullptr) == cudaSuccess);
            set_norm_fwd_pipe(0);
            CHECK(read(o3, true, RD) == read(o2, true, RD));
            CHECK(read(r3, false, nr) == read(r2, false, nr));
          }
          if (mode == 0) {  // and the backward's pipeline on the bf16 y: dy and dz bit for bit
            const size_t np3 = size_t(norm_bwd_partial_size(sh.R, sh.D));
            Buf dy3(RD * 4), dz3(RD * 2), p3(np3 * 4);
            set_norm_bwd_pipe(1);
            REQUIRE(gated_norm_bwd_bf16y_cuda(yh.p, zb.p, dt, ldz, wb.f(), r1.f(), db.p, dt, dy3.f(), dz3.p, p3.f(),
                                              sh.R, sh.D, sh.gs, nullptr) == cudaSuccess);
            set_norm_bwd_pipe(0);
            Buf dy4(RD * 4), dz4(RD * 2), p4(np3 * 4);
            REQUIRE(gated_norm_bwd_bf16y_cuda(yh.p, zb.p, dt, ldz, wb.f(), r1.f(), db.p, dt, dy4.f(), dz4.p, p4.f(),
                                              sh.R, sh.D, sh.gs, nullptr) == cudaSuccess);
            CHECK(read(dy3, false, RD) == read(dy4, false, RD));
            CHECK(read(dz3, true, RD) == read(dz4, true, RD));
          }
          // The backward on the bf16 y (a recomputation's kept output): dy, dz and dw bit for bit.
          const size_t np = size_t(norm_bwd_partial_size(sh.R, sh.D));
          Buf dy1(RD * 4), dy2(RD * 4), dz1(RD * 2), dz2(RD * 2), p1(np * 4), p2(np * 4);
          REQUIRE(gated_norm_bwd_cuda(yb.f(), zb.p, dt, ldz, wb.f(), r1.f(), db.p, dt, dy1.f(), dz1.p, p1.f(), sh.R,
                                      sh.D, sh.gs, nullptr) == cudaSuccess);
          REQUIRE(gated_norm_bwd_bf16y_cuda(yh.p, zb.p, dt, ldz, wb.f(), r1.f(), db.p, dt, dy2.f(), dz2.p, p2.f(), sh.R,
                                            sh.D, sh.gs, nullptr) == cudaSuccess);
          CHECK(read(dy2, false, RD) == read(dy1, false, RD));
          CHECK(read(dz2, true, RD) == read(dz1, true, RD));
          CHECK(read(p2, false, np) == read(p1, false, np));
          CHECK(rel_err(read(dy2, false, RD), dy_r) < 1e-2);  // y's bf16 rounding against the fp32 reference
        }
        set_norm_prefetch(pf ? 1 : 0);
        CHECK(gated_norm_fwd_bf16y_cuda(yh.p, zb.p, NormDtype::f32, ldz, wb.f(), o2.p, dt, r2.f(), sh.R, sh.D, sh.gs,
                                        1e-5f, nullptr) == cudaErrorInvalidValue);  // z must be bf16
        CHECK(gated_norm_bwd_bf16y_cuda(yh.p, zb.p, NormDtype::f32, ldz, wb.f(), r2.f(), db.p, dt, dyb.f(), dzb.p,
                                        pb.f(), sh.R, sh.D, sh.gs, nullptr) == cudaErrorInvalidValue);
      }
    }
  }
  set_norm_prefetch(0);  // back to the default
  // Misaligned or unsupported shapes are refused, not run.
  Buf a(4096 * 4), b(4096 * 4);
  CHECK(rms_norm_fwd_cuda(a.f() + 1, b.f(), b.p, NormDtype::f32, a.f(), 4, 512, 1e-5f, nullptr) == cudaErrorInvalidValue);
  CHECK(rms_norm_fwd_cuda(a.f(), b.f(), b.p, NormDtype::f32, a.f(), 4, 514, 1e-5f, nullptr) == cudaErrorInvalidValue);
  CHECK(gated_norm_fwd_cuda(a.f(), b.p, NormDtype::bf16, 510, a.f(), b.p, NormDtype::f32, a.f(), 2, 508, 508, 1e-5f,
                            nullptr) == cudaErrorInvalidValue);
}

TEST_CASE("residual add fused into the plain norm (emulated) == add, then the scalar reference",
          "[cuda_emu][norm]") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  auto randv = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = nd(rng);
    return v;
  };
  for (const int D : {2048, 768, 4096}) {  // 1, 1 and 2 quads per thread
    for (const bool lowp : {false, true}) {  // the block output, out and dout in bf16 (autocast)
      for (const int pf : {0, 1}) {
        set_norm_prefetch(pf);
        const int64_t R = 37;
        INFO("D=" << D << (lowp ? " bf16" : " fp32") << (pf ? " prefetch" : ""));
        const size_t RD = size_t(R) * size_t(D), es = lowp ? 2 : 4;
        const auto dt = lowp ? NormDtype::bf16 : NormDtype::f32;
        auto res = randv(RD), h = randv(RD), w = randv(size_t(D)), dout = randv(RD), dres = randv(RD);
        if (lowp) {
          for (auto& v : h) v = bf(v);
          for (auto& v : dout) v = bf(v);
        }
        std::vector<float> x(RD), out_r(RD), dx_r(RD), dw_r(static_cast<size_t>(D));
        for (size_t i = 0; i < RD; ++i) x[i] = res[i] + h[i];
        rms_norm_fwd_ref(x.data(), w.data(), out_r.data(), R, D, 1e-5f);
        rms_norm_bwd_ref(x.data(), w.data(), dout.data(), dx_r.data(), dw_r.data(), R, D, 1e-5f);
        for (size_t i = 0; i < RD; ++i) dx_r[i] += dres[i];
        Buf rb(RD * 4), hb(RD * es), xb(RD * 4), wb(size_t(D) * 4), ob(RD * es), sb(size_t(R) * 4), db(RD * es),
            drb(RD * 4), dyb(RD * 4), dhb(RD * es), pb(size_t(norm_bwd_partial_size(R, D)) * 4);
        write(rb, false, res), write(hb, lowp, h), write(wb, false, w), write(db, lowp, dout), write(drb, false, dres);
        REQUIRE(add_rms_norm_fwd_cuda(rb.f(), hb.p, dt, xb.f(), wb.f(), ob.p, dt, sb.f(), R, D, 1e-5f, nullptr) ==
                cudaSuccess);
        CHECK(read(xb, false, RD) == x);  // the stream itself: one fp32 add, bit for bit
        CHECK(rel_err(read(ob, lowp, RD), out_r) < (lowp ? 5e-3 : 1e-5));
        if (pf == 0) {  // rows in pairs (the default) == one row at a time, bit for bit
          Buf x1(RD * 4), o1(RD * es), s1(size_t(R) * 4);
          set_norm_fwd_pairs(0);
          REQUIRE(add_rms_norm_fwd_cuda(rb.f(), hb.p, dt, x1.f(), wb.f(), o1.p, dt, s1.f(), R, D, 1e-5f, nullptr) ==
                  cudaSuccess);
          set_norm_fwd_pairs(1);
          CHECK(read(x1, false, RD) == x);
          CHECK(read(o1, lowp, RD) == read(ob, lowp, RD));
          CHECK(read(s1, false, size_t(R)) == read(sb, false, size_t(R)));
        }
        REQUIRE(rms_norm_bwd_add_cuda(xb.f(), wb.f(), sb.f(), db.p, dt, drb.f(), dyb.f(), dhb.p, dt, pb.f(), R, D,
                                      nullptr) == cudaSuccess);
        const auto dy = read(dyb, false, RD);
        CHECK(rel_err(dy, dx_r) < 1e-4);
        std::vector<float> dyr(RD);  // the block output's gradient: dy in its dtype
        for (size_t i = 0; i < RD; ++i) dyr[i] = lowp ? bf(dy[i]) : dy[i];
        CHECK(read(dhb, lowp, RD) == dyr);
        std::vector<float> dw(size_t(D), 0.f);
        for (int64_t b = 0; b < norm_bwd_partial_size(R, D) / D; ++b)
          for (int i = 0; i < D; ++i) dw[size_t(i)] += pb.f()[b * D + i];
        CHECK(rel_err(dw, dw_r) < 1e-4);
        // Without dh, only the fp32 gradient; without the stream's gradient, refused.
        REQUIRE(rms_norm_bwd_add_cuda(xb.f(), wb.f(), sb.f(), db.p, dt, drb.f(), dyb.f(), nullptr, dt, pb.f(), R, D,
                                      nullptr) == cudaSuccess);
        CHECK(read(dyb, false, RD) == dy);
        CHECK(rms_norm_bwd_add_cuda(xb.f(), wb.f(), sb.f(), db.p, dt, nullptr, dyb.f(), nullptr, dt, pb.f(), R, D,
                                    nullptr) == cudaErrorInvalidValue);
      }
    }
  }
  set_norm_prefetch(0);
}
