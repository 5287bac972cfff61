// The Mamba-2 language model in LibTorch (ATen ops, autograd-capable), exactly as mamba_ssm
// computes it (../docs/architecture.md; facts in shared/reference/mamba2-facts.md).
//
// Parameters are plain tensors named with mamba_ssm's state-dict keys. The two large
// projections of each mixer go through the LinearLayer interface, so the quantized student
// (src/quant) swaps them without touching the rest of the model.
//
// Precision: weights and activations in the model dtype (fp32/fp16/bf16); A_log, D and dt_bias
// are kept in fp32; dt, the SSD scan, the norms and the decode states run in fp32; the residual
// stream is fp32 when residual_in_fp32.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/split_grad.h"

namespace dfssm {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// y = x · Wᵀ (no bias), for in_proj and out_proj.
class LinearLayer {
 public:
  virtual ~LinearLayer() = default;
  virtual at::Tensor forward(const at::Tensor& x) const = 0;
  // Trainable/stored tensors, named relative to the layer (e.g. "weight").
  virtual NamedTensors named_parameters() const = 0;
  // W (out, in), with its autograd graph, where forward(x) is exactly at::matmul(x, Wᵀ) for this
  // x; undefined where forward is not one product. Lets a recomputation record the product's
  // backward without running it (linear_graph_only in recompute.h).
  virtual at::Tensor matmul_weight(const at::Tensor& x) const {
    (void)x;
    return {};
  }
};

class DenseLinear : public LinearLayer {
 public:
  explicit DenseLinear(at::Tensor weight) : weight(std::move(weight)) {}
  at::Tensor forward(const at::Tensor& x) const override;
  NamedTensors named_parameters() const override { return {{"weight", weight}}; }
  at::Tensor matmul_weight(const at::Tensor&) const override { return weight; }
  at::Tensor weight;  // (out, in)
};

struct Mamba2Mixer {
  std::shared_ptr<LinearLayer> in_proj;   // d_model -> [z, x, B, C, dt]
  at::Tensor conv_w;                      // (conv_dim, 1, d_conv)
  at::Tensor conv_b;                      // (conv_dim) or undefined
  at::Tensor dt_bias, A_log, D;           // (nheads), fp32
  at::Tensor norm_w;                      // (d_inner), gated RMSNorm
  std::shared_ptr<LinearLayer> out_proj;  // d_inner -> d_model
};

struct Mamba2Block {
  at::Tensor norm_w;  // (d_model)
  Mamba2Mixer mixer;
};

// Decode caches for one layer: the last d_conv raw (pre-conv) xBC columns and the SSM state.
struct LayerState {
  at::Tensor conv;  // (batch, conv_dim, d_conv), model dtype
  at::Tensor ssm;   // (batch, nheads, headdim, d_state), fp32
};

struct InferenceState {
  std::vector<LayerState> layers;
  int64_t seqlen = 0;  // tokens consumed so far
};

// What an activation-checkpointed block keeps of its first (no-grad) forward pass for its
// recomputation in backward (src/model/recompute.h), beyond its input: the SSD's output y + D·x.
// The recomputation then skips the SSD forward's chunk_scan. Only where the fused CUDA SSD runs
// both ways (src/model/ssd_scan.h); elsewhere nothing is kept.
struct SsdOutputKeep {
  bool capture = false;              // true: the forward stores y here, in `dtype`
  at::ScalarType dtype = at::kFloat;
  at::Tensor y;                      // (b, l, h, p): what capture stored, or what to reuse
  // in_proj's output (b, l, d_in_proj), stored by the first pass where capture_in_proj; given to
  // the recomputation (capture_in_proj false), which records in_proj's backward on these values
  // instead of running its product (linear_graph_only).
  bool capture_in_proj = false;
  at::Tensor zxbcdt;
  // Set by a recomputation, which only differentiates the block's output and never reads it: the
  // block's last product (out_proj) then records its backward without running (linear_graph_only).
  bool output_graph_only = false;
};

// While one is alive on this thread, Mamba2Model::embed trusts device token ids (the trainer
// checks its batches on the host before the copy, so the range check costs no synchronisation).
struct TokenIdsChecked {
  TokenIdsChecked();
  ~TokenIdsChecked();
  TokenIdsChecked(const TokenIdsChecked&) = delete;
  TokenIdsChecked& operator=(const TokenIdsChecked&) = delete;
  static bool active();
};

class Mamba2Model {
 public:
  // Allocates (uninitialised) parameters of `cfg` with `opts` (dtype + device).
  Mamba2Model(const Mamba2Config& cfg, at::TensorOptions opts);

  const Mamba2Config& config() const { return cfg_; }
  // The chunked SSD's chunk length: a compute choice (speed, memory), not a hyperparameter; any
  // value gives the same outputs up to rounding.
  void set_chunk_size(int64_t c);
  at::ScalarType dtype() const { return opts_.dtype().toScalarType(); }
  at::Device device() const { return opts_.device(); }

  // mamba_ssm's initialisation, drawn on the CPU from `seed` (same values on any device).
  void init_random(uint64_t seed);

  // Full-sequence forward with the chunked SSD. ids: (b, l) int64. Returns logits (b, l, vocab)
  // in the model dtype. With `state`, continues from it and leaves the final caches in it
  // (a prefill); pass new_state() for a fresh sequence.
  at::Tensor forward(const at::Tensor& ids, InferenceState* state = nullptr) const;

  // forward() without the LM head: the final normed hidden states (b, l, d_model). The trainer
  // applies lm_weight() itself, in chunks (src/distill/loss.h).
  // With `residuals`, also returns the residual stream after each block (n_layer tensors,
  // (b, l, d_model) in the residual dtype), for the hidden-state distillation term.
  at::Tensor forward_hidden(const at::Tensor& ids, InferenceState* state = nullptr,
                            std::vector<at::Tensor>* residuals = nullptr) const;
  // The LM head weight as the forward pass uses it (the tied embedding, fake-quantized for a student).
  at::Tensor lm_weight() const;

  // Block i (norm + mixer) on the residual stream, without caches; and its parameters. `keep`:
  // see SsdOutputKeep.
  at::Tensor block(size_t i, const at::Tensor& residual, SsdOutputKeep* keep = nullptr) const;
  // block(i, r) is block_on_normed(i, r's norm): the mixer on block i's normed input.
  at::Tensor block_on_normed(size_t i, const at::Tensor& normed, SsdOutputKeep* keep = nullptr) const;
  // The stream after block i-1 (residual + hidden, in the residual dtype) and block i's normed
  // input (i == n_layer: norm_f's output): one kernel each way where add_norm_fused() (CUDA, fp32
  // stream: mamba_ssm's fused add + RMSNorm), else the add, then the norm.
  std::pair<at::Tensor, at::Tensor> add_norm(size_t i, const at::Tensor& residual, const at::Tensor& hidden) const;
  bool add_norm_fused(const at::Tensor& residual, const at::Tensor& hidden) const;
  // Block i's norm, fused, whose backward also adds `dres` to x's gradient and writes the sum into
  // `dh` in dh's dtype (rms_norm_fused_add_grad): the recomputed norm of a checkpointed block.
  at::Tensor block_norm_add_grad(size_t i, const at::Tensor& x, const at::Tensor& dres, const at::Tensor& dh) const;
  std::vector<at::Tensor> layer_parameters(size_t i) const;
  // Activation checkpointing: layers whose activations are recomputed in the backward pass
  // instead of stored (src/model/recompute.h). Only in training forwards (grad mode, no state).
  std::vector<bool> recompute_layers;
  // Whether those layers keep their SSD output from the first forward (SsdOutputKeep), in the
  // autocast dtype (bf16 under the trainer's autocast; fp32 without autocast): B·L·d_inner·2
  // bytes per layer in bf16, for one chunk_scan less per layer and step.
  bool keep_ssd_output = false;
  // Recomputed layers that also keep their in_proj output (SsdOutputKeep::zxbcdt): memory for
  // the recomputation's in_proj product. Indexed like recompute_layers; empty = none.
  std::vector<bool> keep_in_proj_layers;
  // Checkpointed blocks with the add inside (recomputed_add_block) that follow one which saved its
  // stream save the add's operands instead of its sum: the previous stream (already saved by the
  // previous block: no new memory) and block i-1's output (bf16 under autocast: half the fp32
  // stream's bytes); the backward adds them again (the same fp32 add: the same stream bit for
  // bit). Every second such block then holds half a stream. From DFSSM_CKPT_STREAM_PAIRS=1 (opt-in
  // until measured on a GPU).
  static bool stream_pairs();
  static void set_stream_pairs(int on);  // tests: 1 / 0, -1 re-reads the environment

  // One token per sequence with the recurrent form. ids: (b) int64. Returns logits (b, vocab).
  at::Tensor step(const at::Tensor& ids, InferenceState& state) const;

  InferenceState new_state(int64_t batch) const;

  // All parameters with mamba_ssm state-dict keys (lm_head.weight only when untied).
  NamedTensors named_parameters() const;

  at::Tensor embedding;  // (padded_vocab, d_model)
  // The embedding as the forward pass uses it (tied lm_head too): `embedding`, or what
  // embedding_transform makes of it (the student's int8 fake quantization, src/quant).
  std::function<at::Tensor(const at::Tensor&)> embedding_transform;
  at::Tensor embedding_weight() const { return embedding_transform ? embedding_transform(embedding) : embedding; }
  at::Tensor lm_head;    // undefined when tied
  at::Tensor norm_f;     // (d_model)
  std::vector<Mamba2Block> layers;

 private:
  at::Tensor mixer_forward(const Mamba2Mixer& m, const at::Tensor& u, LayerState* st,
                           SsdOutputKeep* keep = nullptr) const;
  at::Tensor conv_silu_aten(const at::Tensor& xBC, const Mamba2Mixer& m, LayerState* st) const;
  at::Tensor mixer_step(const Mamba2Mixer& m, const at::Tensor& u, LayerState& st) const;
  // Checks that every id is inside the vocabulary (on a device tensor a host synchronisation;
  // skipped while a TokenIdsChecked guard says the caller checked them on the host).
  at::Tensor embed(const at::Tensor& ids) const;
  at::Tensor logits(const at::Tensor& hidden) const;
  // to_matmul: the output feeds a matmul (in_proj), so the fused kernel may write it in bf16 under
  // bf16 autocast (norm_out_dtype).
  at::Tensor rmsnorm(const at::Tensor& x, const at::Tensor& w, bool to_matmul = false) const;
  at::ScalarType norm_out_dtype(const at::Tensor& x, bool to_matmul) const;
  // dz_into: see gated_norm_fused.
  at::Tensor gated_rmsnorm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w,
                           const at::Tensor& y_values = {}, const GradInto& dz_into = {}) const;
  at::Tensor discretize_dt(const at::Tensor& dt_raw, const at::Tensor& dt_bias) const;

  Mamba2Config cfg_;
  at::TensorOptions opts_;
};

}  // namespace dfssm
