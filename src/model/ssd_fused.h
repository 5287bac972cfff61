#pragma once
// The chunked SSD's diagonal blocks, y_diag = M·X with M = exp(segsum(A·dt))∘(C·Bᵀ), as one
// autograd function over the CUDA kernels of src/kernels/cuda/ssd_train.h. It never stores M:
// the forward writes it once (in the GEMM dtype) for the GEMM, the backward rebuilds it and
// folds dM into d(acs) and d(CB) in one pass. ATen's version of the same math (ssd.cpp) made
// five fp32 passes over (b, chunks, heads, chunk, chunk) each way and took about a third of a
// 1.3B distillation step.
#include <ATen/ATen.h>

namespace dfssm {

// Whether ssd_diag_fused can run: a CUDA build, an fp32 CUDA tensor, chunk in {32, 64, 128,
// 256}, at most 65535 (batch x chunks), and the debug switch DFSSM_SSD_FUSED is not 0.
bool ssd_diag_fused_available(const at::Tensor& like, int64_t chunk, int64_t batch_chunks);

// Tests switch the fused path off to compare against the ATen path (default: on, unless
// DFSSM_SSD_FUSED=0).
void set_ssd_fused_enabled(bool on);

// acs: (b, c, h, l) fp32, the in-chunk cumulative sums of A·dt. CB: (b, c, g, l, s). X: (b, c, h,
// l, p). Returns y_diag (b, c, h, l, p), in bf16 under CUDA autocast (bf16), else fp32.
at::Tensor ssd_diag_fused(const at::Tensor& acs, const at::Tensor& CB, const at::Tensor& X);

}  // namespace dfssm
