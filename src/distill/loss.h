// The distillation loss with the LM head fused in, computed over the vocabulary in chunks of
// tokens, so that the B·L·V fp32 logits of student and teacher never all exist at once.
//
//   loss = (1/N) Σ_n [ alpha · T² · KL(p_t^T || p_s^T)_n + (1 - alpha) · CE(p_s, y_n) ]
//   p_s^T = softmax(h_s W_sᵀ / T), p_t^T = softmax(h_t W_tᵀ / T), p_s = p_s^1 (CE at T = 1)
//
// KL is summed over the vocabulary (padded rows included, as the logits are) and averaged over
// the N tokens. alpha = 0 is plain cross-entropy (pretraining; no teacher needed).
//
// The gradients with respect to h_s and W_s are computed chunk by chunk during the forward
// pass (dz = alpha·T·(p_s^T − p_t^T) + (1 − alpha)·(p_s − onehot(y)), over N) and stored; the
// backward pass only scales them. Peak extra memory is a few (chunk × V) fp32 buffers plus the
// gradients themselves.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace dfssm::distill {

struct LmLossOptions {
  double alpha = 1.0;
  double temperature = 1.0;
  int64_t chunk = 1024;                       // tokens per chunk
  at::ScalarType matmul_dtype = at::kFloat;   // logits matmuls (bf16 on CUDA), accumulated to fp32
  // The statistics stay on the device (LmLossStats::sums) and the loss is computed there: no host
  // synchronisation (the trainer reads them once per step). false: the doubles are filled.
  bool defer_stats = false;
};

struct LmLossStats {
  double kl = 0;     // mean KL(p_t^T || p_s^T) per token (0 without a teacher)
  double ce = 0;     // mean student CE
  double top1 = 0;   // fraction of tokens where argmax student == argmax teacher
  double teacher_ce = 0;  // mean teacher CE (with a teacher)
  double hidden = 0;      // the hidden-state MSE term (trainer; 0 when off)
  int64_t tokens = 0;
  // With LmLossOptions::defer_stats: fp64 (4) on the device, kl, ce, top1, teacher_ce as above
  // (the doubles stay 0).
  at::Tensor sums;
};

// The teacher's top-k tokens per position (distill.teacher_cache, teacher_cache.h): with it the
// KL term uses the teacher distribution restricted to its top k and renormalised,
//   q = softmax(logp) over the k ids,  KL_k = Σ_i q_i (log q_i − log p_s^T(i)),  ∂/∂z_s = T·(p_s^T − q);
// with k = V it is the full KL.
struct TeacherTopK {
  at::Tensor idx;   // (N, k) int64, most likely first
  at::Tensor logp;  // (N, k) float32, log p_t^T (normalised over the whole vocabulary)
  at::Tensor ce;    // (N) float32, the teacher's CE at T = 1 (a logged statistic)
  bool defined() const { return idx.defined(); }
};

// The teacher's top-k at temperature T from its final hidden states h_t (N, d) and LM head w_t
// (V, d), computed chunk by chunk (chunk tokens at a time; matmuls in md, softmax in fp32).
TeacherTopK teacher_topk(const at::Tensor& h_t, const at::Tensor& w_t, const at::Tensor& targets, double T, int64_t k,
                         int64_t chunk, at::ScalarType md);

// On CUDA (dense teacher or none, V % 4 == 0) each chunk's softmax statistics, KL, CE, top-1 and
// dz come from one kernel (kernels/cuda/lm_loss.h) instead of ATen ops; DFSSM_LOSS_FUSED=0 (or
// this switch, for tests) keeps the ATen ops.
void set_lm_loss_fused_enabled(bool on);

// h_s (N, d) and w_s (V, d) may require grad; h_t (N, d_t) and w_t (V, d_t) are the teacher's
// (undefined when alpha == 0); targets (N) int64. Returns the scalar loss (differentiable
// w.r.t. h_s and w_s) and fills `stats`.
at::Tensor lm_loss(const at::Tensor& h_s, const at::Tensor& w_s, const at::Tensor& h_t, const at::Tensor& w_t,
                   const at::Tensor& targets, const LmLossOptions& opt, LmLossStats* stats);
// The same with the teacher given by its top-k (alpha > 0 needs `topk`).
at::Tensor lm_loss(const at::Tensor& h_s, const at::Tensor& w_s, const TeacherTopK& topk, const at::Tensor& targets,
                   const LmLossOptions& opt, LmLossStats* stats);

// The same loss by plain autograd over the full logits (the reference the chunked version is
// tested against).
at::Tensor lm_loss_reference(const at::Tensor& h_s, const at::Tensor& w_s, const at::Tensor& h_t,
                             const at::Tensor& w_t, const at::Tensor& targets, double alpha, double temperature);

// The hidden-state term: mean over the selected layers of
//   mean_{tokens, features} ( n(r_s) - n(r_t) )²,   n(r) = r / sqrt(mean(r²) + 1e-6) per token,
// where r_s, r_t are the student's and teacher's residual streams after each block (the
// normalisation makes the term scale-free; the teacher side carries no gradient).
at::Tensor hidden_mse(const std::vector<at::Tensor>& student, const std::vector<at::Tensor>& teacher,
                      const std::vector<bool>& layers);

}  // namespace dfssm::distill
