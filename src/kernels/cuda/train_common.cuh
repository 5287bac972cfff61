// Device helpers shared by the training kernels (ssd_train.cu, conv_train.cu,
// norm_train.cu): fp32 math on fp32 or bf16 storage, and the fast sigmoid of SiLU.
#pragma once

#ifndef DFSSM_CUDA_EMULATE
#include <cuda_bf16.h>
#endif

namespace dfssm::kernels::train {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

}  // namespace dfssm::kernels::train
