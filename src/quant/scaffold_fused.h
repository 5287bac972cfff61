// The binary scaffold's effective weight as one CUDA kernel with its own backward
// (src/kernels/cuda/scaffold_train.h), behind ScaffoldLinear::forward on CUDA.
//
//   W = (A ⊙ s) ⊙ Bᵀ + U Vᵀ,   s = sign(w_lat) with the clipped STE (gradient on |w_lat| <= clip)
//
// A, B are the fp16-rounded fields and U, V the effective low-rank factors (U = cu · su per
// column, V = cv · sv): ScaffoldLinear builds them in ATen, so the small (rows x r) tensors keep
// their own STE and scale gradients there. This Function returns dw_lat, dA, dB, dU, dV. dU = dW V
// and dV = dWᵀ U run on cuBLAS; on a bf16 dW they multiply by the int8 codes (exact in bf16) with
// fp32 output and apply the scales after, so they lose nothing to a bf16 copy of U or V.
//
// Debug switch: DFSSM_SCAFFOLD_FUSED=0 keeps the ATen composition (effective_weight()).
#pragma once

#include <ATen/ATen.h>

namespace dfssm::quant {

void set_scaffold_fused_enabled(bool on);

struct ScaffoldWeightInputs {
  at::Tensor w_lat, A, B;       // (R, C), (R), (C): fp32 on the GPU
  at::Tensor U, V;              // (R, r), (C, r) effective factors, or undefined (no low-rank term)
  at::Tensor u_codes, u_scale;  // U = u_codes · u_scale (r): detached
  at::Tensor v_codes, v_scale;
  double clip = 1.0;
};

// W in out_dtype (fp32 or bf16), or an undefined tensor where the fused path cannot run (not built
// with CUDA, switched off, a CPU tensor, odd column count, rank > 32): use the ATen path then.
at::Tensor scaffold_weight_fused(const ScaffoldWeightInputs& in, at::ScalarType out_dtype);

}  // namespace dfssm::quant
