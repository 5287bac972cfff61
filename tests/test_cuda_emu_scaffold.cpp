// The scaffold effective-weight kernels (src/kernels/cuda/scaffold_train.cu) on the CPU emulator
// (tests/cuda_emu/cuda_emu.h) against their scalar references: partial row tiles and column
// blocks, ranks 0 / 5 / 19 / 32 (each RK bucket), fp32 and bf16 W / dW, latents exactly at the
// clip bounds and at ±0. The gpu tests run the same kernels inside the student
// (test_gpu_train_kernels "[scaffold]": fused against the ATen path, values and gradients).
#include "cuda_emu/cuda_emu.h"
// The kernel source itself, compiled as C++ (DFSSM_CUDA_EMULATE is set for this target).
#include "kernels/cuda/scaffold_train.cu"

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "catch_compat.h"
#include "cuda_emu/emu_test_util.h"
#include "kernels/cpu/scaffold_train_ref.h"

using namespace dfssm::kernels;
using dfssm::emu_test::Buf;
using dfssm::emu_test::bf;
using dfssm::emu_test::rel_err;

TEST_CASE("scaffold weight kernels (emulated) == scalar reference: ranks, fp32 and bf16, clip bounds",
          "[cuda_emu][scaffold]") {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud(-1.5f, 1.5f);
  // 37 rows: forward tiles of 16, 16, 5 and backward tiles of 32, 5; 1100 columns: blocks of
  // 512, 512, 76 (the last with dead threads).
  const int64_t R = 37, C = 1100;
  const size_t nR = size_t(R), nC = size_t(C);
  const float clip = 1.f;
  const size_t RC = size_t(R * C);
  std::vector<float> w(RC), A(nR), Bc(nC), dW(RC);
  for (auto& v : w) v = ud(rng);
  w[0] = clip, w[1] = -clip, w[2] = 0.f, w[3] = -0.f, w[4] = std::nextafter(clip, 2.f);  // the edges
  for (auto& v : A) v = std::fabs(nd(rng)) * 0.02f;
  for (auto& v : Bc) v = std::fabs(nd(rng)) + 0.1f;
  for (auto& v : dW) v = bf(nd(rng));  // exact in bf16 too: both storages hold the same values
  for (const int r : {0, 5, 19, 32}) {
    std::vector<float> U(nR * size_t(r)), V(nC * size_t(r));
    for (auto& v : U) v = nd(rng) * 0.01f;
    for (auto& v : V) v = nd(rng) * 0.01f;
    std::vector<float> W_r(RC);
    scaffold_weight_fwd_ref(w.data(), A.data(), Bc.data(), U.data(), V.data(), R, C, r, W_r.data());
    for (const bool lowp : {false, true}) {
      INFO("rank " << r << (lowp ? " bf16" : " fp32"));
      Buf wb(RC * 4), Ab(size_t(R) * 4), Bb(size_t(C) * 4), Ub(U.size() * 4 + 4), Vb(V.size() * 4 + 4), Wb(RC * 4),
          dWb(RC * 4), dwb(RC * 4), pa(size_t(scaffold_part_a_rows(C) * R) * 4), pb(size_t(scaffold_part_b_rows(R) * C) * 4);
      std::copy(w.begin(), w.end(), wb.f());
      std::copy(A.begin(), A.end(), Ab.f());
      std::copy(Bc.begin(), Bc.end(), Bb.f());
      std::copy(U.begin(), U.end(), Ub.f());
      std::copy(V.begin(), V.end(), Vb.f());
      for (size_t i = 0; i < RC; ++i) {
        if (lowp) {
          dWb.h()[i] = __float2bfloat16(dW[i]);
        } else {
          dWb.f()[i] = dW[i];
        }
      }
      ScaffoldWeightArgs a;
      a.w = wb.f(), a.A = Ab.f(), a.Bc = Bb.f(), a.U = Ub.f(), a.V = Vb.f(), a.R = R, a.C = C, a.r = r, a.clip = clip;
      a.wdt = lowp ? ScaffoldDtype::bf16 : ScaffoldDtype::f32;
      a.W = Wb.p, a.dW = dWb.p, a.dw = dwb.f(), a.part_a = pa.f(), a.part_b = pb.f();
      REQUIRE(scaffold_weight_fwd_cuda(a, nullptr) == cudaSuccess);
      std::vector<float> Wk(RC);
      for (size_t i = 0; i < RC; ++i) Wk[i] = lowp ? __bfloat162float(Wb.h()[i]) : Wb.f()[i];
      if (r == 0) {  // no rank-r sum: the same fp32 operations, so the same bits (and the same rounding to bf16)
        size_t diff = 0;
        for (size_t i = 0; i < RC; ++i) diff += Wk[i] != (lowp ? bf(W_r[i]) : W_r[i]);
        CHECK(diff == 0);
      } else {
        CHECK(rel_err(Wk, W_r) < (lowp ? 4e-3 : 1e-6));
      }

      // Backward.
      std::vector<float> dw_r(RC), dA_r(nR), dB_r(nC);
      scaffold_weight_bwd_ref(w.data(), A.data(), Bc.data(), dW.data(), R, C, clip, dw_r.data(), dA_r.data(), dB_r.data());
      REQUIRE(scaffold_weight_bwd_cuda(a, nullptr) == cudaSuccess);
      size_t diff = 0;
      for (size_t i = 0; i < RC; ++i) diff += dwb.f()[i] != dw_r[i];
      CHECK(diff == 0);  // elementwise, the same fp32 operations
      CHECK(dwb.f()[4] == 0.f);  // just outside the clip: no gradient
      CHECK(dwb.f()[0] != 0.f);  // on the bound: gradient
      std::vector<float> dA(nR, 0.f), dB(nC, 0.f);
      for (int64_t b = 0; b < scaffold_part_a_rows(C); ++b)
        for (int64_t i = 0; i < R; ++i) dA[size_t(i)] += pa.f()[b * R + i];
      for (int64_t b = 0; b < scaffold_part_b_rows(R); ++b)
        for (int64_t j = 0; j < C; ++j) dB[size_t(j)] += pb.f()[b * C + j];
      CHECK(rel_err(dA, dA_r) < 1e-5);
      CHECK(rel_err(dB, dB_r) < 1e-5);
    }
  }
  // Unsupported shapes are refused, not run.
  Buf x(4096 * 4);
  ScaffoldWeightArgs a;
  a.w = x.f(), a.A = x.f(), a.Bc = x.f(), a.W = x.p, a.R = 4, a.C = 7;
  CHECK(scaffold_weight_fwd_cuda(a, nullptr) == cudaErrorInvalidValue);  // odd C
  a.C = 8, a.r = 33, a.U = x.f(), a.V = x.f();
  CHECK(scaffold_weight_fwd_cuda(a, nullptr) == cudaErrorInvalidValue);  // rank above kScaffoldMaxRank
}
