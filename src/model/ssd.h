// The SSD (state space duality) scan of Mamba-2, in LibTorch ops.
//
// Per head h, position t (A is a negative scalar per head, dt > 0):
//   state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t ⊗ B_t        state: (headdim, d_state)
//   y_t     = state_t · C_t                                          (D·x is added by the caller)
//
// Layouts (batch b, length l, heads h, headdim p, groups g, d_state n):
//   x (b,l,h,p)  dt (b,l,h)  A (h)  B, C (b,l,g,n)  state (b,h,p,n)  ->  y (b,l,h,p)
// Groups map to heads in contiguous blocks (head i uses group i / (h/g)).
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace dfssm {

// Chunked algorithm (mamba_ssm's ssd_minimal): quadratic attention-like form inside each
// chunk, a linear recurrence over chunk states between chunks. O(l * chunk) memory per head;
// any l (the tail is zero-padded, which leaves the final state unchanged because dt = 0 there).
// Computes in the dtype of x (callers pass fp32). Returns (y, final_state).
std::pair<at::Tensor, at::Tensor> ssd_chunked(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                              const at::Tensor& B, const at::Tensor& C, int64_t chunk_size,
                                              const at::Tensor& initial_state = {});

// Token-by-token recurrence: the reference the chunked form is tested against (in fp64).
std::pair<at::Tensor, at::Tensor> ssd_sequential(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B, const at::Tensor& C,
                                                 const at::Tensor& initial_state = {});

// Stable segment sum: out[..., i, j] = sum_{k=j+1..i} x[..., k] for j <= i, -inf above the diagonal.
at::Tensor segsum(const at::Tensor& x);

}  // namespace dfssm
