// Factorizations used to initialise the student from the teacher (LibTorch, any device).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace dfssm::quant {

// Rank-1 approximation a·bᵀ of a non-negative matrix (|W| in OneBit's SVID) by power iteration:
// a = sqrt(σ)·u, b = sqrt(σ)·v for the top singular triple, both non-negative.
std::pair<at::Tensor, at::Tensor> rank1_nonneg(const at::Tensor& absW, int64_t iters);

// Truncated SVD by randomized range finding (Halko et al.): returns (U·sqrt(Σ), V·sqrt(Σ)) with
// r columns, so that A ≈ L·Rᵀ. Deterministic for a given seed (the sketch is drawn on the CPU).
std::pair<at::Tensor, at::Tensor> lowrank_factors(const at::Tensor& A, int64_t r, int64_t oversample,
                                                  int64_t power_iters, uint64_t seed);

}  // namespace dfssm::quant
