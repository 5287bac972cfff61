// One AdamW update of a parameter tensor on CUDA, in place (src/distill/optim.h has the
// optimizer; this is its CUDA step for one fp32 tensor, one kernel instead of eleven ATen passes):
//   m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²;  p = p·decay (decay = 1 − lr·wd, or 1);
//   p = p − (m/bc1) / (sqrt(v/bc2) + eps) · (scale·lr)
// with bc1 = 1 − b1^t, bc2 = 1 − b2^t, and scale a device fp32 scalar (the parameter's relative
// step, 1 for absolute groups). Optional device scalars: gscale multiplies g first (the clip
// coefficient), and run == 0 makes the call a no-op (a skipped step), so that the trainer decides
// both on the device without waiting for the gradient norm. Layout: p, g, m, v are n contiguous fp32 values; scale is one.
// The scalar reference twin is src/kernels/cpu/adamw_ref.h. Plain C++ header: CUDA runtime only.
#pragma once

#ifndef DFSSM_CUDA_EMULATE  // tests/cuda_emu/cuda_emu.h stands in for it
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "kernels/adamw_coef.h"

namespace dfssm::kernels {

cudaError_t adamw_step_cuda(float* p, const float* g, float* m, float* v, const float* scale, int64_t n,
                            const AdamWCoef& c, cudaStream_t stream, const float* gscale = nullptr,
                            const float* run = nullptr);

}  // namespace dfssm::kernels
