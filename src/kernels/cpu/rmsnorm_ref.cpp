#include "kernels/cpu/rmsnorm_ref.h"

#include <cmath>

#include "core/dtype.h"

namespace dfssm::kernels {

void add_rmsnorm_ref(const uint16_t* x, float* residual, const uint16_t* w, uint16_t* out, int64_t rows, int64_t d,
                     float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float* res = residual + r * d;
    double ss = 0.0;  // fp64 accumulation: this is the reference
    for (int64_t i = 0; i < d; ++i) {
      res[i] += half_to_float(x[r * d + i]);
      ss += double(res[i]) * res[i];
    }
    const float rstd = float(1.0 / std::sqrt(ss / double(d) + eps));
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = float_to_half(res[i] * rstd * half_to_float(w[i]));
  }
}

}  // namespace dfssm::kernels
