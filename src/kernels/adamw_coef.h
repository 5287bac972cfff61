// The scalars of one AdamW step (src/kernels/cuda/adamw.h has the math), shared by the CUDA
// kernel and its CPU reference. Plain C++.
#pragma once

namespace dfssm::kernels {

struct AdamWCoef {
  float b1 = 0.9f, b2 = 0.999f, omb1 = 0.1f, omb2 = 0.001f;  // omb = 1 − b, rounded from double
  float bc1 = 1.f, bc2 = 1.f, eps = 1e-8f;                   // bias corrections 1 − b^t
  float decay = 1.f, lr = 0.f;                               // decay = 1 − lr·wd (or 1)
};

}  // namespace dfssm::kernels
