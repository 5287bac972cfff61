#include "quant/init.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "core/error.h"

namespace dfssm::quant {

std::pair<at::Tensor, at::Tensor> rank1_nonneg(const at::Tensor& absW, int64_t iters) {
  const auto A = absW.to(at::kFloat);
  // A positive start vector converges to the Perron vector of a non-negative matrix.
  auto v = at::ones({A.size(1)}, A.options()) / std::sqrt(double(A.size(1)));
  at::Tensor u;
  at::Tensor sigma = at::ones({}, A.options());
  for (int64_t i = 0; i < iters; ++i) {
    u = at::mv(A, v);
    u = u / u.norm().clamp_min(1e-30);
    v = at::mv(A.t(), u);
    sigma = v.norm().clamp_min(1e-30);
    v = v / sigma;
  }
  const auto s = sigma.sqrt();
  return {u * s, v * s};
}

std::pair<at::Tensor, at::Tensor> lowrank_factors(const at::Tensor& A_in, int64_t r, int64_t oversample,
                                                  int64_t power_iters, uint64_t seed) {
  const auto A = A_in.to(at::kFloat);
  const int64_t m = A.size(0), n = A.size(1);
  DFSSM_ASSERT(r >= 1, "rank must be >= 1");
  const int64_t k = std::min({r + oversample, m, n});
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto omega = at::randn({n, k}, gen, at::kFloat).to(A.device());
  auto Q = std::get<0>(at::linalg_qr(at::matmul(A, omega)));
  for (int64_t i = 0; i < power_iters; ++i) {  // sharpen the spectrum, re-orthonormalising each pass
    const auto Z = std::get<0>(at::linalg_qr(at::matmul(A.t(), Q)));
    Q = std::get<0>(at::linalg_qr(at::matmul(A, Z)));
  }
  const auto B = at::matmul(Q.t(), A);  // (k, n)
  auto [Ub, S, Vh] = at::linalg_svd(B, /*full_matrices=*/false);
  const int64_t rr = std::min(r, k);
  const auto s = S.narrow(0, 0, rr).sqrt();
  auto L = at::matmul(Q, Ub.narrow(1, 0, rr)) * s;
  auto R = Vh.narrow(0, 0, rr).t() * s;
  if (rr < r) {  // rank above min(m, n): pad with zero columns (they quantize to 0)
    L = at::cat({L, at::zeros({m, r - rr}, L.options())}, 1);
    R = at::cat({R, at::zeros({n, r - rr}, R.options())}, 1);
  }
  return {L.contiguous(), R.contiguous()};
}

}  // namespace dfssm::quant
