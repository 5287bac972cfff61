// Residual add + RMSNorm on CUDA (see kernels/cpu/rmsnorm_ref.h for the definition).
// Plain C++ header: callers need only the CUDA runtime, not LibTorch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dfssm::kernels {

// x, w, out: fp16 (as raw 16-bit words), residual: fp32, all device pointers, row-major (rows, d).
// d must be a multiple of 8 (16-byte vector loads). Returns the launch status.
cudaError_t add_rmsnorm_cuda(const uint16_t* x, float* residual, const uint16_t* w, uint16_t* out, int64_t rows,
                             int64_t d, float eps, cudaStream_t stream);

}  // namespace dfssm::kernels
