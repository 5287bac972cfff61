// Residual add + RMSNorm, the op between Mamba-2 blocks (scalar reference).
//
//   residual[r, :] += x[r, :]                      (fp32 residual stream)
//   out[r, :] = half(residual[r, :] * rstd_r * w)  rstd_r = 1/sqrt(mean(residual[r,:]^2) + eps)
//
// Layout: row-major (rows, d); x, w and out are IEEE fp16 bit patterns, residual is fp32.
#pragma once

#include <cstdint>

namespace dfssm::kernels {

void add_rmsnorm_ref(const uint16_t* x, float* residual, const uint16_t* w, uint16_t* out, int64_t rows, int64_t d,
                     float eps);

}  // namespace dfssm::kernels
