// Scalar reference for the distillation loss's per-token kernel (src/kernels/cuda/lm_loss.h has
// the math): fp64 softmax statistics and sums, float outputs. zt may be null (no teacher; then
// ce_t, kl and top1 are not written). Torch-free.
#pragma once

#include <cstdint>

namespace dfssm::kernels {

void lm_loss_rows_ref(const float* zs, const float* zt, int64_t n, int64_t V, const int64_t* y, double alpha, double T,
                      int64_t N, float* dz, float* ce_s, float* ce_t, float* kl, float* top1);

}  // namespace dfssm::kernels
