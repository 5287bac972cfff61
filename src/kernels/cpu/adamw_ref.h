// Scalar reference for the CUDA AdamW step (src/kernels/cuda/adamw.h has the math), in the same
// fp32 operation order. Torch-free.
#pragma once

#include <cstdint>

#include "kernels/adamw_coef.h"

namespace dfssm::kernels {

void adamw_step_ref(float* p, const float* g, float* m, float* v, float scale, int64_t n, const AdamWCoef& c);

}  // namespace dfssm::kernels
