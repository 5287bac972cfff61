#include "kernels/cpu/norm_train_ref.h"

#include <cmath>
#include <vector>

namespace dfssm::kernels {
namespace {
double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
}  // namespace

void gated_norm_fwd_ref(const float* y, const float* z, const float* w, float* out, int64_t R, int D, int gs, float eps) {
  for (int64_t r = 0; r < R; ++r)
    for (int g0 = 0; g0 < D; g0 += gs) {
      double ss = 0;
      for (int i = g0; i < g0 + gs; ++i) {
        const double zi = z[r * D + i], x = y[r * D + i] * zi * sigmoid(zi);
        ss += x * x;
      }
      const double rs = 1.0 / std::sqrt(ss / gs + eps);
      for (int i = g0; i < g0 + gs; ++i) {
        const double zi = z[r * D + i], x = y[r * D + i] * zi * sigmoid(zi);
        out[r * D + i] = float(x * rs * w[i]);
      }
    }
}

void gated_norm_bwd_ref(const float* y, const float* z, const float* w, const float* dout, float* dy, float* dz,
                        float* dw, int64_t R, int D, int gs, float eps) {
  std::vector<double> gw(static_cast<size_t>(D), 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int g0 = 0; g0 < D; g0 += gs) {
      double ss = 0, dot = 0;
      for (int i = g0; i < g0 + gs; ++i) {
        const double zi = z[r * D + i], x = y[r * D + i] * zi * sigmoid(zi);
        ss += x * x;
      }
      const double rs = 1.0 / std::sqrt(ss / gs + eps);
      for (int i = g0; i < g0 + gs; ++i) {
        const double zi = z[r * D + i], x = y[r * D + i] * zi * sigmoid(zi), n = x * rs;
        dot += double(dout[r * D + i]) * w[i] * n;
        gw[size_t(i)] += double(dout[r * D + i]) * n;
      }
      for (int i = g0; i < g0 + gs; ++i) {
        const double zi = z[r * D + i], s = sigmoid(zi), yi = y[r * D + i], x = yi * zi * s, n = x * rs;
        const double dx = rs * (double(dout[r * D + i]) * w[i] - n * dot / gs);
        dy[r * D + i] = float(dx * zi * s);
        dz[r * D + i] = float(dx * yi * s * (1.0 + zi * (1.0 - s)));
      }
    }
  for (int i = 0; i < D; ++i) dw[i] = float(gw[size_t(i)]);
}

void rms_norm_fwd_ref(const float* y, const float* w, float* out, int64_t R, int D, float eps) {
  for (int64_t r = 0; r < R; ++r) {
    const float* yr = y + r * D;
    double ss = 0;
    for (int i = 0; i < D; ++i) ss += double(yr[i]) * yr[i];
    const double rs = 1.0 / std::sqrt(ss / D + eps);
    for (int i = 0; i < D; ++i) out[r * D + i] = float(yr[i] * rs * w[i]);
  }
}

void rms_norm_bwd_ref(const float* y, const float* w, const float* dout, float* dy, float* dw, int64_t R, int D,
                      float eps) {
  std::vector<double> gw(static_cast<size_t>(D), 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const float *yr = y + r * D, *dr = dout + r * D;
    double ss = 0, dot = 0;
    for (int i = 0; i < D; ++i) ss += double(yr[i]) * yr[i];
    const double rs = 1.0 / std::sqrt(ss / D + eps);
    for (int i = 0; i < D; ++i) {
      dot += double(dr[i]) * w[i] * yr[i] * rs;
      gw[size_t(i)] += double(dr[i]) * yr[i] * rs;
    }
    for (int i = 0; i < D; ++i) dy[r * D + i] = float(rs * (double(dr[i]) * w[i] - yr[i] * rs * dot / D));
  }
  for (int i = 0; i < D; ++i) dw[i] = float(gw[size_t(i)]);
}

}  // namespace dfssm::kernels
