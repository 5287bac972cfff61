// ScaffoldLinear: the student's replacement for a large linear (in_proj / out_proj), in LibTorch.
//
//   binary / binary_lowrank:  W_eff = diag(a) · S · diag(b) + U_eff · V_effᵀ,   S = sign(W_lat)
//   ternary:                  W_eff = γ ⊙ clamp(round(W_lat / γ), -1, 1)      + U_eff · V_effᵀ
//   int4:                     W_eff = s_g ⊙ clamp(round(W_lat / s_g), -7, 7)  + U_eff · V_effᵀ
//   U_eff = clamp(round(U_lat), -127, 127) · s_u   (per-column fp16 scales), V_eff likewise.
//
// Everything the packed file stores in reduced precision is fake-quantized in the forward pass
// with the exact rounding of src/quant/format.h (fp16 for a, b, s_u, s_v, γ, s_g; int8 for U, V),
// so training sees bit for bit what export stores: effective_weight() equals the weight rebuilt
// from the exported tensors (tests/test_quant_student.cpp).
//
// Gradients: straight-through estimators written as  q.detach() + (t - t.detach()),  whose value
// is exactly q (no rounding from q + (t - q)) and whose gradient is the identity into t:
//   * sign: gradient into W_lat where |W_lat| <= ste_clip, zero elsewhere (clipped STE);
//   * round/clamp of U, V: identity inside [-127, 127], zero outside;
//   * ternary / int4: identity (BitNet); the scales are recomputed from W_lat each step, detached.
// Latents, field and scales are fp32 master parameters (docs/method.md).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "model/mamba2.h"
#include "quant/quant_config.h"

namespace dfssm::quant {

// Tensors of the packed form of one projection, named relative to it ("codes", "field_a", ...),
// as CPU tensors with the file's dtypes (codes U8, scales F16, low-rank I8).
using PackedParts = std::vector<std::pair<std::string, at::Tensor>>;

class ScaffoldLinear : public LinearLayer {
 public:
  // Parameters allocated (uninitialised) as fp32 on `device`.
  ScaffoldLinear(int64_t rows, int64_t cols, QuantConfig q, at::Device device);

  // Initialisation from a teacher weight (rows x cols, any dtype/device): SVID field, row-
  // normalised latents, randomized SVD of the residual for U, V (docs/method.md).
  void init_from(const at::Tensor& teacher_weight, uint64_t seed);

  at::Tensor forward(const at::Tensor& x) const override;
  // W_eff (as forward's product takes it) for a CUDA x; undefined on the CPU, whose forward is
  // the activation-side form.
  at::Tensor matmul_weight(const at::Tensor& x) const override;
  // The trainable fp32 tensors: w_lat, field_a, field_b (binary), lr_u, lr_u_scale, lr_v, lr_v_scale.
  NamedTensors named_parameters() const override;

  // W_eff in fp32, exactly as forward uses it (differentiable).
  at::Tensor effective_weight() const;
  // The packed tensors the exporter writes (no grad, CPU).
  PackedParts pack() const;
  // Rebuilds W_eff (fp32, CPU) from packed tensors; equals effective_weight() bit for bit.
  static at::Tensor unpack(const PackedParts& parts, int64_t rows, int64_t cols, const QuantConfig& q);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  const QuantConfig& config() const { return q_; }

  at::Tensor w_lat;               // (rows, cols)
  at::Tensor field_a, field_b;    // (rows), (cols): binary formats only
  at::Tensor lr_u, lr_u_scale;    // (rows, r), (r): in integer units / fp32 scale
  at::Tensor lr_v, lr_v_scale;    // (cols, r), (r)

 private:
  // The scaffold part (without the low-rank term) as fake-quantized fp32, and its codes.
  at::Tensor scaffold_codes() const;     // STE-carrying codes (binary: ±1)
  at::Tensor scaffold_scales() const;    // ternary γ / int4 s_g, expanded to (rows, cols); detached
  at::Tensor lowrank_u() const;          // U_eff (rows, r)
  at::Tensor lowrank_v() const;          // V_eff (cols, r)
  // W_eff from the fused CUDA kernels (binary formats; in bf16 under bf16 autocast, the matmul's
  // dtype), or undefined where they do not run (scaffold_fused.h).
  at::Tensor fused_weight() const;

  int64_t rows_, cols_;
  QuantConfig q_;
};

// Shared fake-quant helpers (also used for the embedding).
at::Tensor ste(const at::Tensor& value, const at::Tensor& through);  // value, gradient into `through`
at::Tensor fake_fp16(const at::Tensor& t);                            // round to fp16, identity grad
// Symmetric per-row int8: returns (codes as float, fp16-exact scales (rows)), detached.
std::pair<at::Tensor, at::Tensor> int8_rows(const at::Tensor& x);
at::Tensor fake_int8_rows(const at::Tensor& x);                       // codes*scale, identity grad

}  // namespace dfssm::quant
