// The binary scaffold's effective weight for training on CUDA (ScaffoldLinear, formats binary and
// binary_lowrank; src/quant/scaffold_linear.h has the method):
//
//   forward:  W[i,j] = (A[i]·s[i,j])·Bc[j] + Σ_k U[i,k]·V[j,k],   s = +1 if w[i,j] >= 0 else -1
//   backward: g = dW[i,j]·Bc[j]
//             dw[i,j] = g·A[i]·s  where -clip <= w[i,j] <= clip, else 0   (the clipped STE)
//             dA[i]   = Σ_j g·s                                       (row sums)
//             dBc[j]  = Σ_i dW[i,j]·A[i]·s                            (column sums)
//   (dU = dW·V and dV = dWᵀ·U are small-N GEMMs the caller runs on cuBLAS.)
// A, Bc are the fp16-rounded fields (fake_fp16), U, V the effective low-rank factors: the caller
// builds them, and their own gradients (the STE of the int8 rounding, the scales), in ATen on
// (rows x r) tensors. The operation order per element is ATen's ((A·s)·Bc, then dW·Bc·A), so with
// no low-rank term the forward is bit-identical to the ATen composition; with one, only the
// summation order of the rank-r dot product differs.
//
// Why a kernel: in ATen the weight and its backward are ~10 passes over (rows x cols) fp32
// tensors per projection, twice per layer and step (forward and the checkpointed recompute):
// ~100 ms of a 1.3B distillation step (H200 profile). Here the forward is one read of w (fp32)
// and one write of W (bf16 under autocast: what the matmul would cast it to), the backward one
// read of dW and w and one write of dw.
//
// Layout: w, W, dW, dw (R, C) row-major contiguous; A (R), Bc (C), U (R, r), V (C, r) fp32
// contiguous. W and dW in fp32 or bf16. part_a (ceil(C / kScaffoldCols), R) and part_b
// (ceil(R / kScaffoldBwdRows), C) fp32: per-block partial sums, which the caller sums over their
// first dimension (deterministic: no atomics). C even, r <= kScaffoldMaxRank, pointers 8-byte
// aligned; anything else returns cudaErrorInvalidValue. Plain C++ header: the CUDA runtime only.
// Scalar twins: src/kernels/cpu/scaffold_train_ref.h.
#pragma once

#ifndef DFSSM_CUDA_EMULATE  // tests/cuda_emu/cuda_emu.h stands in for it
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace dfssm::kernels {

enum class ScaffoldDtype { f32, bf16 };

constexpr int kScaffoldMaxRank = 32;
constexpr int kScaffoldCols = 512;     // columns per block (256 threads x 2)
constexpr int kScaffoldBwdRows = 32;   // rows per backward block (one row of part_b each)

struct ScaffoldWeightArgs {
  const float* w = nullptr;
  const float* A = nullptr;
  const float* Bc = nullptr;
  const float* U = nullptr;  // null when r = 0
  const float* V = nullptr;
  int64_t R = 0, C = 0;
  int r = 0;
  float clip = 1.f;
  ScaffoldDtype wdt = ScaffoldDtype::f32;  // W (forward) and dW (backward)
  void* W = nullptr;                       // forward output
  const void* dW = nullptr;                // backward inputs ...
  float* dw = nullptr;                     // ... and outputs
  float* part_a = nullptr;
  float* part_b = nullptr;
};

int64_t scaffold_part_a_rows(int64_t C);
int64_t scaffold_part_b_rows(int64_t R);

cudaError_t scaffold_weight_fwd_cuda(const ScaffoldWeightArgs& a, cudaStream_t stream);
cudaError_t scaffold_weight_bwd_cuda(const ScaffoldWeightArgs& a, cudaStream_t stream);

}  // namespace dfssm::kernels
