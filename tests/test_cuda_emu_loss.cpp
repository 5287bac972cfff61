// The distillation loss's per-token kernel (src/kernels/cuda/lm_loss.cu) on the CPU emulator
// (tests/cuda_emu/cuda_emu.h) against its fp64 scalar reference: with and without a teacher,
// T = 1 and T = 2, fp32 and bf16 logits at a row stride wider than V, and ties for the maximum
// (the first index wins, as ATen's argmax). The gpu test runs the loss with it against the ATen
// chunked loss (test_gpu_train_kernels "[loss]").
#include "cuda_emu/cuda_emu.h"
// The kernel source itself, compiled as C++ (DFSSM_CUDA_EMULATE is set for this target).
#include "kernels/cuda/lm_loss.cu"

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "catch_compat.h"
#include "cuda_emu/emu_test_util.h"
#include "kernels/cpu/lm_loss_ref.h"

using namespace dfssm::kernels;
using dfssm::emu_test::Buf;
using dfssm::emu_test::bf;
using dfssm::emu_test::rel_err;

TEST_CASE("LM loss rows kernel (emulated) == fp64 reference: teacher or not, T, fp32 and bf16, ties",
          "[cuda_emu][loss]") {
  const int64_t n = 5, V = 1100, ld = 1108, N = 37;
  const size_t nV = size_t(n * V);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> zs(nV), zt(nV);
  for (auto& v : zs) v = bf(nd(rng) * 3.f);  // exact in bf16: both storages hold the same logits
  for (auto& v : zt) v = bf(nd(rng) * 3.f);
  // Row 0: the student's maximum twice (10 and 20), the teacher's at 10: top-1 agrees. Row 1: the
  // same student row, the teacher's maximum at 20: disagrees (the first index, 10, is the argmax).
  for (int64_t i : {0, 1}) zs[size_t(i * V + 10)] = zs[size_t(i * V + 20)] = 30.f;
  zt[10] = 30.f, zt[size_t(V + 20)] = 30.f;
  std::vector<int64_t> y = {10, 3, 1099, 0, 555};
  for (const bool teacher : {true, false})
    for (const double T : {1.0, 2.0})
      for (const bool lowp : {false, true}) {
        if (!teacher && T != 1.0) continue;
        const double alpha = teacher ? 0.75 : 0.0;
        INFO((teacher ? "teacher" : "no teacher") << " T=" << T << (lowp ? " bf16" : " fp32"));
        std::vector<float> dz_r(nV), ces_r(n), cet_r(n), kl_r(n), top_r(n);
        lm_loss_rows_ref(zs.data(), teacher ? zt.data() : nullptr, n, V, y.data(), alpha, T, N, dz_r.data(),
                         ces_r.data(), cet_r.data(), kl_r.data(), top_r.data());
        const size_t es = lowp ? 2 : 4;
        Buf bs(size_t(n * ld) * es), bt(size_t(n * ld) * es), bd(nV * es), st(size_t(n) * 4 * 4);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t v = 0; v < V; ++v) {
            const size_t o = size_t(i * ld + v), s = size_t(i * V + v);
            if (lowp) {
              static_cast<__nv_bfloat16*>(bs.p)[o] = __float2bfloat16(zs[s]);
              static_cast<__nv_bfloat16*>(bt.p)[o] = __float2bfloat16(zt[s]);
            } else {
              static_cast<float*>(bs.p)[o] = zs[s];
              static_cast<float*>(bt.p)[o] = zt[s];
            }
          }
        float* stats = static_cast<float*>(st.p);
        LmLossRowsArgs a;
        a.zs = bs.p, a.zt = teacher ? bt.p : nullptr, a.n = n, a.V = V, a.ld = ld;
        a.dt = lowp ? LossDtype::bf16 : LossDtype::f32;
        a.y = y.data(), a.alpha = float(alpha), a.T = float(T), a.N = N, a.dz = bd.p;
        a.ce_s = stats, a.ce_t = stats + n, a.kl = stats + 2 * n, a.top1 = stats + 3 * n;
        REQUIRE(lm_loss_rows_cuda(a, nullptr) == cudaSuccess);
        std::vector<float> dz(nV);
        for (size_t i = 0; i < nV; ++i)
          dz[i] = lowp ? __bfloat162float(static_cast<__nv_bfloat16*>(bd.p)[i]) : static_cast<float*>(bd.p)[i];
        CHECK(rel_err(dz, dz_r) < (lowp ? 4e-3 : 1e-5));
        CHECK(rel_err(std::vector<float>(stats, stats + n), ces_r) < 1e-6);
        if (teacher) {
          CHECK(rel_err(std::vector<float>(stats + n, stats + 2 * n), cet_r) < 1e-6);
          CHECK(rel_err(std::vector<float>(stats + 2 * n, stats + 3 * n), kl_r) < 1e-4);
          CHECK(std::vector<float>(stats + 3 * n, stats + 4 * n) == top_r);
          CHECK(stats[3 * n] == 1.f);
          CHECK(stats[3 * n + 1] == 0.f);
        }
      }
  // Unsupported layouts are refused, not run.
  Buf b(4096 * 4);
  float* f = static_cast<float*>(b.p);
  LmLossRowsArgs a;
  a.zs = f, a.n = 2, a.V = 6, a.ld = 8, a.y = y.data(), a.ce_s = f;
  CHECK(lm_loss_rows_cuda(a, nullptr) == cudaErrorInvalidValue);  // V % 4 != 0
  a.V = 8, a.zs = f + 1;
  CHECK(lm_loss_rows_cuda(a, nullptr) == cudaErrorInvalidValue);  // misaligned
}
