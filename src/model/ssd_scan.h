#pragma once
// The chunked SSD plus the D skip as CUDA kernels (kernels/cuda/ssd_scan.h): four forward
// kernels and three backward ones. They read x, B and C in place from the conv output and never
// build the (chunk x chunk) matrices or the permuted copies of the ATen path (ssd.cpp) in HBM.
// Their GEMMs run on TF32 tensor cores (fp32 accumulation): results differ from the fp32 ATen
// path at the ~1e-3 relative level.
//
// Two entry points:
// - ssd_scan_fused: passes that need no gradient (the teacher's forward, the student's
//   activation-checkpointed first forward, evaluation): by default chunk_cb and one sequential
//   kernel per (head, batch) with the state on chip (kernels/cuda/ssd_scan_seq.cu;
//   DFSSM_SSD_FWD_SEQ=0 runs the four forward kernels). On by default; DFSSM_SSD_SCAN=0 turns
//   it off.
// - ssd_scan_train: an autograd function over the forward and backward kernels, for chunks of
//   64 or 128. Its dB, dC, dA and dD are sums of atomics (not bit-reproducible run to run).
//   On by default; DFSSM_SSD_SCAN_TRAIN=0 turns it off (the model then keeps the ATen path).
#include <ATen/ATen.h>

#include <utility>

namespace dfssm {

// Whether ssd_scan_fused can run: the switch is on, a CUDA build, fp32 CUDA tensors (x, B and C
// may also all be bf16 where the sequential kernel runs: its version 4), headdim 64, d_state 128,
// chunk 64, 128 or 256, and no input needs a gradient.
bool ssd_scan_fused_available(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& C, const at::Tensor& D, int64_t chunk);

// Whether ssd_scan_train can run: its switch is on, a CUDA build, fp32 CUDA tensors, headdim 64,
// d_state 128, chunk 64 or 128. as_fp32: whether it could on fp32 tensors of these shapes (x, B,
// C here bf16: a no-grad first pass deciding what its recomputation will take).
bool ssd_scan_train_available(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& C, const at::Tensor& D, int64_t chunk, bool as_fp32 = false);

// DFSSM_SSD_SEQ_VERSION=4 (kernels/cuda/ssd_scan.h): passes without a gradient should have the
// conv write bf16 x, B and C (conv_silu_fused_bf16) for ssd_scan_fused's bf16-input kernel.
bool ssd_scan_bf16_inputs_wanted();

// Tests flip the switches (DFSSM_SSD_SCAN, DFSSM_SSD_SCAN_TRAIN and DFSSM_SSD_XBC_GRAD, all on
// when unset).
void set_ssd_scan_enabled(bool on);
void set_ssd_scan_train_enabled(bool on);
void set_ssd_scan_xbc_grad_enabled(bool on);
// Whether the model runs the train path through ssd_scan_train_xbc (one gradient for the conv
// output) rather than ssd_scan_train over its split (DFSSM_SSD_XBC_GRAD=0).
bool ssd_scan_xbc_grad_enabled();
// Whether the no-grad SSD forwards whose output feeds bf16 consumers store y in bf16 and have the
// gated norm read it, instead of y in fp32 (then a cast): a checkpointed block's first pass that
// keeps y in bf16 (y is the kept copy itself) and a bf16 model's forward (the teacher's; as
// mamba_ssm, whose chunk scan returns y in x's dtype). On by default since the kernel stores y
// as packed bf16 pairs (H200 micro: 1.86 vs 1.92 ms per call, and the cast is gone);
// DFSSM_SSD_Y_BF16=0 keeps y in fp32.
void set_ssd_scan_y_bf16_enabled(bool on);
bool ssd_scan_y_bf16_enabled();

// x (b,l,h,p), dt (b,l,h), A (h), B and C (b,l,g,n), D (h) or undefined, initial_state (b,h,p,n)
// or undefined. Returns y + D·x (b,l,h,p) in y_dtype (fp32, or bf16: the sequential kernel
// stores it rounded, otherwise it is cast) and the final state (b,h,p,n) in fp32.
std::pair<at::Tensor, at::Tensor> ssd_scan_fused(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                                 int64_t chunk, const at::Tensor& initial_state,
                                                 at::ScalarType y_dtype = at::kFloat);

// The same outputs, differentiable in every input (D and initial_state may be undefined).
// y_given: y + D·x of these same inputs, kept from an earlier pass (an activation-checkpointed
// block's first forward, src/model/recompute.h), any float dtype, (b,l,h,p) elements. The forward
// then skips chunk_scan (its costliest kernel), and the y it returns only carries the graph: an
// fp32 zero tensor of y's shape with zero strides (no memory). Its values are y_given's: the
// caller reads y_given and routes y's gradient (fp32) through y, as the gated norm does
// (gated_norm_fused's y_values); a cast of y_given to fp32 cost two passes over y per layer. The
// gradients are the same (the backward does not read y).
std::pair<at::Tensor, at::Tensor> ssd_scan_train(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                                 int64_t chunk, const at::Tensor& initial_state,
                                                 const at::Tensor& y_given = at::Tensor());

// ssd_scan_train over the conv output xBC (b, l, h·headdim + 2·ngroups·d_state) fp32, whose
// slices are x, B and C (h is dt's last size): the same outputs, and xBC's gradient is one
// tensor the backward kernels write in place (no concatenation of dx, dB and dC).
std::pair<at::Tensor, at::Tensor> ssd_scan_train_xbc(const at::Tensor& xBC, int64_t headdim, int64_t ngroups,
                                                     const at::Tensor& dt, const at::Tensor& A, const at::Tensor& D,
                                                     int64_t chunk, const at::Tensor& initial_state,
                                                     const at::Tensor& y_given = at::Tensor());

}  // namespace dfssm
