#include "kernels/cpu/conv_train_ref.h"

#include <cmath>
#include <vector>

namespace dfssm::kernels {
namespace {
double pre_at(const float* x, const float* w, const float* bias, int64_t b, int64_t t, int c, int64_t L, int C, int K) {
  double p = bias ? bias[c] : 0.0;
  for (int k = 0; k < K; ++k) {
    const int64_t s = t - K + 1 + k;
    if (s >= 0) p += double(w[c * K + k]) * double(x[(b * L + s) * C + c]);
  }
  return p;
}
double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
}  // namespace

void conv_silu_fwd_ref(const float* x, const float* w, const float* bias, float* out, int64_t B, int64_t L, int C, int K) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int c = 0; c < C; ++c) {
        const double p = pre_at(x, w, bias, b, t, c, L, C, K);
        out[(b * L + t) * C + c] = float(p * sigmoid(p));
      }
}

void conv_silu_bwd_ref(const float* x, const float* w, const float* bias, const float* dout, float* dx, float* dw,
                       float* dbias, int64_t B, int64_t L, int C, int K) {
  std::vector<double> dpre(static_cast<size_t>(B * L * C)), gw(static_cast<size_t>(C * K), 0.0), gb(size_t(C), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int c = 0; c < C; ++c) {
        const double p = pre_at(x, w, bias, b, t, c, L, C, K), s = sigmoid(p);
        dpre[size_t((b * L + t) * C + c)] = double(dout[(b * L + t) * C + c]) * s * (1.0 + p * (1.0 - s));
      }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int c = 0; c < C; ++c) {
        const double d = dpre[size_t((b * L + t) * C + c)];
        gb[size_t(c)] += d;
        double g = 0;
        for (int k = 0; k < K; ++k) {
          const int64_t s = t - K + 1 + k;  // input feeding output t through tap k
          if (s >= 0) gw[size_t(c * K + k)] += d * double(x[(b * L + s) * C + c]);
          const int64_t u = t + K - 1 - k;  // output fed by input t through tap k
          if (u < L) g += double(w[c * K + k]) * dpre[size_t((b * L + u) * C + c)];
        }
        dx[(b * L + t) * C + c] = float(g);
      }
  for (int i = 0; i < C * K; ++i) dw[i] = float(gw[size_t(i)]);
  for (int c = 0; c < C; ++c) dbias[c] = float(gb[size_t(c)]);
}

}  // namespace dfssm::kernels
