// The chunked SSD's diagonal blocks for training (forward and backward), on CUDA. The LibTorch
// autograd wrapper is src/model/ssd_fused.cpp; the scalar reference twins are
// src/kernels/cpu/ssd_train_ref.h. Plain C++ header: the CUDA runtime only, no LibTorch.
//
// Inside one chunk of T tokens, head h (of group gi = h / (H/G)) mixes its inputs with
//   M[l,s] = exp(acs[l] - acs[s]) * CB[gi,l,s]   for s <= l,   0 above the diagonal,
// where acs is the in-chunk cumulative sum of A·dt and CB = C·Bᵀ of the head's group. The trainer
// then computes y_diag = M·X as a batched GEMM. Materialised with ATen, M and its gradient took
// five fp32 passes each way over (b, chunks, H, T, T); these kernels write M once in the GEMM's
// dtype and fold the whole backward (dCB over the group's heads, d acs) into one pass over dM.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dfssm::kernels {

enum class SsdDtype { f32, bf16 };  // of CB, M and dM (acs and the gradients are fp32)

// Shapes (row-major): acs (Z, H, T); cb (Z, G, T, T); M (Z, H, T, T). Z = batch x chunks.
// Needs T % 32 == 0, T <= 256 and H % G == 0. Returns the launch status.
cudaError_t ssd_mask_fwd_cuda(const float* acs, const void* cb, void* M, SsdDtype dt, int64_t Z, int H, int G, int T,
                              cudaStream_t stream);

// Given dM (Z, H, T, T): dcb (Z, G, T, T) = sum over the group's heads of dM * exp(acs_l - acs_s)
// (0 above the diagonal; every element is written), and dacs (Z, H, T) += rowsum(dM∘M) -
// colsum(dM∘M). dacs must hold zeros (or a gradient to add to) on entry; it is accumulated
// with atomics, so its last bits depend on the order the blocks run in.
cudaError_t ssd_mask_bwd_cuda(const float* acs, const void* cb, const void* dM, SsdDtype dt, float* dacs, float* dcb,
                              int64_t Z, int H, int G, int T, cudaStream_t stream);

}  // namespace dfssm::kernels
