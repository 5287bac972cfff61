#include "kernels/cpu/scaffold_train_ref.h"

#include <cstddef>
#include <vector>

namespace dfssm::kernels {

void scaffold_weight_fwd_ref(const float* w, const float* A, const float* Bc, const float* U, const float* V,
                             int64_t R, int64_t C, int r, float* W) {
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < C; ++j) {
      const float s = w[i * C + j] >= 0.f ? 1.f : -1.f;
      double l = 0;
      for (int k = 0; k < r; ++k) l += double(U[i * r + k]) * V[j * r + k];
      W[i * C + j] = float(double((A[i] * s) * Bc[j]) + l);
    }
}

void scaffold_weight_bwd_ref(const float* w, const float* A, const float* Bc, const float* dW, int64_t R, int64_t C,
                             float clip, float* dw, float* dA, float* dBc) {
  std::vector<double> cb(std::size_t(C), 0.0);
  for (int64_t i = 0; i < R; ++i) {
    double ra = 0;
    for (int64_t j = 0; j < C; ++j) {
      const float wv = w[i * C + j], s = wv >= 0.f ? 1.f : -1.f, g = dW[i * C + j] * Bc[j];
      ra += double(g) * s;
      cb[std::size_t(j)] += double(dW[i * C + j]) * (A[i] * s);
      dw[i * C + j] = wv >= -clip && wv <= clip ? g * A[i] : 0.f;
    }
    dA[i] = float(ra);
  }
  for (int64_t j = 0; j < C; ++j) dBc[j] = float(cb[std::size_t(j)]);
}

}  // namespace dfssm::kernels
