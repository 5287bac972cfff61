#include "kernels/cpu/ssd_train_ref.h"

#include <cmath>
#include <vector>

namespace dfssm::kernels {

void ssd_mask_fwd_ref(const float* acs, const float* cb, float* M, int64_t Z, int H, int G, int T) {
  const int hg = H / G;
  for (int64_t z = 0; z < Z; ++z)
    for (int h = 0; h < H; ++h) {
      const float* a = acs + (z * H + h) * T;
      const float* c = cb + (z * G + h / hg) * int64_t(T) * T;
      float* m = M + (z * H + h) * int64_t(T) * T;
      for (int l = 0; l < T; ++l)
        for (int s = 0; s < T; ++s)
          m[l * T + s] = s <= l ? float(std::exp(double(a[l]) - double(a[s])) * double(c[l * T + s])) : 0.f;
    }
}

void ssd_mask_bwd_ref(const float* acs, const float* cb, const float* dM, float* dacs, float* dcb, int64_t Z, int H,
                      int G, int T) {
  const int hg = H / G;
  const int64_t TT = int64_t(T) * T;
  std::vector<double> acc(static_cast<size_t>(TT)), da(static_cast<size_t>(T));
  for (int64_t z = 0; z < Z; ++z)
    for (int gi = 0; gi < G; ++gi) {
      std::fill(acc.begin(), acc.end(), 0.0);
      const float* c = cb + (z * G + gi) * TT;
      for (int h = gi * hg; h < (gi + 1) * hg; ++h) {
        const float* a = acs + (z * H + h) * T;
        const float* d = dM + (z * H + h) * TT;
        std::fill(da.begin(), da.end(), 0.0);
        for (int l = 0; l < T; ++l)
          for (int s = 0; s <= l; ++s) {
            const double L = std::exp(double(a[l]) - double(a[s])), dm = d[l * T + s];
            acc[size_t(l * T + s)] += dm * L;
            const double g = dm * L * double(c[l * T + s]);
            da[size_t(l)] += g;
            da[size_t(s)] -= g;
          }
        for (int t = 0; t < T; ++t) dacs[(z * H + h) * T + t] = float(da[size_t(t)]);
      }
      for (int64_t i = 0; i < TT; ++i) dcb[(z * G + gi) * TT + i] = float(acc[size_t(i)]);
    }
}

}  // namespace dfssm::kernels
