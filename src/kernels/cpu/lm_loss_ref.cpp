#include "kernels/cpu/lm_loss_ref.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace dfssm::kernels {

namespace {
// log Σ exp(x_v / T)
double lse(const float* x, int64_t V, double T) {
  double m = -INFINITY;
  for (int64_t v = 0; v < V; ++v) m = std::fmax(m, x[v] / T);
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(x[v] / T - m);
  return m + std::log(s);
}
int64_t argmax(const float* x, int64_t V) {
  int64_t b = 0;
  for (int64_t v = 1; v < V; ++v)
    if (x[v] > x[b]) b = v;
  return b;
}
}  // namespace

void lm_loss_rows_ref(const float* zs, const float* zt, int64_t n, int64_t V, const int64_t* y, double alpha, double T,
                      int64_t N, float* dz, float* ce_s, float* ce_t, float* kl, float* top1) {
  for (int64_t i = 0; i < n; ++i) {
    const float* s = zs + i * V;
    const float* t = zt ? zt + i * V : nullptr;
    const double ls1 = lse(s, V, 1.0), lsT = lse(s, V, T);
    const double lt1 = t ? lse(t, V, 1.0) : 0.0, ltT = t ? lse(t, V, T) : 0.0;
    double k = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double ps1 = std::exp(s[v] - ls1), lpsT = s[v] / T - lsT;
      double d = (1.0 - alpha) * (ps1 - (v == y[i] ? 1.0 : 0.0));
      if (t) {
        const double lptT = t[v] / T - ltT, pt = std::exp(lptT);
        k += pt * (lptT - lpsT);
        d += alpha * T * (std::exp(lpsT) - pt);
      }
      dz[i * V + v] = float(d / double(N));
    }
    ce_s[i] = float(ls1 - s[y[i]]);
    if (t) {
      ce_t[i] = float(lt1 - t[y[i]]);
      kl[i] = float(k);
      top1[i] = argmax(s, V) == argmax(t, V) ? 1.f : 0.f;
    }
  }
}

}  // namespace dfssm::kernels
