// Device helpers shared by the training kernels (ssd_train.cu, conv_train.cu,
// norm_train.cu, lm_loss.cu): fp32 math on fp32 or bf16 storage, 4-element vector access, and
// the fast sigmoid of SiLU.
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

// ---- 4-element access (16 bytes of fp32, 8 of bf16) -------------------------------------------
__device__ __forceinline__ void ld4(const float* p, float (&o)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  o[0] = t.x, o[1] = t.y, o[2] = t.z, o[3] = t.w;
}
__device__ __forceinline__ void st4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void ld4(const __nv_bfloat16* p, float (&o)[4]) {
#ifndef DFSSM_CUDA_EMULATE
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  o[0] = a.x, o[1] = a.y, o[2] = b.x, o[3] = b.y;
#else
  for (int i = 0; i < 4; ++i) o[i] = __bfloat162float(p[i]);
#endif
}
__device__ __forceinline__ void st4(__nv_bfloat16* p, const float (&v)[4]) {
#ifndef DFSSM_CUDA_EMULATE
  const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
  uint2 u;
  u.x = *reinterpret_cast<const unsigned*>(&a), u.y = *reinterpret_cast<const unsigned*>(&b);
  *reinterpret_cast<uint2*>(p) = u;
#else
  for (int i = 0; i < 4; ++i) p[i] = __float2bfloat16(v[i]);
#endif
}

// ---- 2-element access (8 bytes of fp32, 4 of bf16) ---------------------------------------------
__device__ __forceinline__ void ld2(const float* p, float (&o)[2]) {
  const float2 t = *reinterpret_cast<const float2*>(p);
  o[0] = t.x, o[1] = t.y;
}
__device__ __forceinline__ void st2(float* p, const float (&v)[2]) {
  *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
}
__device__ __forceinline__ void ld2(const __nv_bfloat16* p, float (&o)[2]) {
#ifndef DFSSM_CUDA_EMULATE
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  o[0] = a.x, o[1] = a.y;
#else
  for (int i = 0; i < 2; ++i) o[i] = __bfloat162float(p[i]);
#endif
}
__device__ __forceinline__ void st2(__nv_bfloat16* p, const float (&v)[2]) {
#ifndef DFSSM_CUDA_EMULATE
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v[0], v[1]);
#else
  for (int i = 0; i < 2; ++i) p[i] = __float2bfloat16(v[i]);
#endif
}

// V consecutive elements (V = 1, 2 or 4), aligned to V elements.
template <int V, typename T>
__device__ __forceinline__ void ldv(const T* p, float (&o)[V]) {
  if constexpr (V == 4) {
    ld4(p, o);
  } else if constexpr (V == 2) {
    ld2(p, o);
  } else {
    o[0] = ld(p);
  }
}
template <int V, typename T>
__device__ __forceinline__ void stv(T* p, const float (&v)[V]) {
  if constexpr (V == 4) {
    st4(p, v);
  } else if constexpr (V == 2) {
    st2(p, v);
  } else {
    st(p, v[0]);
  }
}

}  // namespace dfssm::kernels::train
