#include "kernels/cpu/adamw_ref.h"

#include <cmath>

namespace dfssm::kernels {

void adamw_step_ref(float* p, const float* g, float* m, float* v, float scale, int64_t n, const AdamWCoef& c) {
  const float step_lr = scale * c.lr;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    m[i] = m[i] * c.b1 + c.omb1 * gi;
    v[i] = v[i] * c.b2 + c.omb2 * gi * gi;
    const float denom = std::sqrt(v[i] / c.bc2) + c.eps;
    p[i] = p[i] * c.decay - (m[i] / c.bc1) / denom * step_lr;
  }
}

}  // namespace dfssm::kernels
