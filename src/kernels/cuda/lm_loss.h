// The distillation loss's per-token part on CUDA (src/distill/loss.h has the loss): for one chunk
// of n tokens, from the student's and the teacher's logits zs, zt (n, V),
//
//   lse_s1 = logsumexp(zs), lse_sT = logsumexp(zs / T), lse_t1, lse_tT likewise for zt
//   ce_s[i]  = lse_s1 - zs[y]                 (student CE at T = 1)
//   ce_t[i]  = lse_t1 - zt[y]                 (teacher CE at T = 1)
//   kl[i]    = Σ_v p_t^T (log p_t^T - log p_s^T)
//   top1[i]  = argmax zs == argmax zt         (first index of the maximum, as ATen's argmax)
//   dz[i, v] = ((1 - alpha)·(p_s - [v = y]) + alpha·T·(p_s^T - p_t^T)) / N
//
// the gradient of the loss with respect to the student's logits (N: tokens of the whole batch).
// Without a teacher (zt null: pretraining, alpha = 0) only ce_s and dz. This replaces ~20 ATen
// passes over the chunk's (n, V) fp32 tensors (log_softmax, exp, gather, scatter_add, argmax,
// the KL product and sum, the dz arithmetic and its cast) with two reads of the logits and one
// write of dz.
//
// Layout: zs, zt (n, V) row-major at row stride ld, bf16 or fp32 (what the logits matmul wrote);
// y (n) int64; dz (n, V) contiguous in the same dtype (the dtype of the dz matmuls that follow);
// ce_s, ce_t, kl, top1 (n) fp32 (top1 as 0/1). One block per token row; a row is read twice
// (the second time from L2). V and ld multiples of 4, pointers 16-byte aligned; anything else
// returns cudaErrorInvalidValue. Scalar twin: src/kernels/cpu/lm_loss_ref.h.
#pragma once

#ifndef DFSSM_CUDA_EMULATE  // tests/cuda_emu/cuda_emu.h stands in for it
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace dfssm::kernels {

enum class LossDtype { f32, bf16 };

struct LmLossRowsArgs {
  const void* zs = nullptr;
  const void* zt = nullptr;  // null: no teacher
  int64_t n = 0, V = 0, ld = 0;
  LossDtype dt = LossDtype::f32;
  const int64_t* y = nullptr;
  float alpha = 1.f, T = 1.f;
  int64_t N = 1;  // tokens of the batch: dz is divided by it
  void* dz = nullptr;  // null: statistics only (evaluation)
  float *ce_s = nullptr, *ce_t = nullptr, *kl = nullptr, *top1 = nullptr;
};

cudaError_t lm_loss_rows_cuda(const LmLossRowsArgs& a, cudaStream_t stream);

}  // namespace dfssm::kernels
