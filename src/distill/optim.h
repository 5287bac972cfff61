// AdamW with parameter groups and the learning-rate schedules. The whole optimizer state is a
// list of named tensors that a checkpoint stores bit-exactly (exact resume). On the CPU the step
// is plain ATen ops; on CUDA it is one fused kernel per tensor (src/kernels/cuda/adamw.h: one pass
// instead of eleven) and the gradient norm uses ATen's multi-tensor kernels (DFSSM_ADAMW_FUSED=0:
// the ATen ops there too).
//
// A group may be "relative": each parameter's step is scaled by its RMS at the optimizer's
// creation (stored in the state). The student needs it because its quantities live on very
// different scales: int8-unit low-rank codes (~30), fp16 scales (~1e-3), field entries (~0.1);
// an absolute Adam step of 1e-3 would never move the first and would wreck the second.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "distill/job_config.h"
#include "model/mamba2.h"

namespace dfssm::distill {

struct ParamGroup {
  std::string name;
  NamedTensors params;
  double lr_mult = 1.0;      // group lr = schedule lr x lr_mult
  double weight_decay = 0;   // decoupled (AdamW)
  bool relative = false;
};

class AdamW {
 public:
  AdamW(std::vector<ParamGroup> groups, double beta1, double beta2, double eps);

  // One update with the current .grad() of every parameter (undefined grads count as zero).
  void step(double lr);
  void zero_grad();
  // Global L2 norm of all gradients; scales them down to max_norm when it is above (max_norm > 0).
  double clip_grad_norm(double max_norm);

  // The same step without host synchronisation (CUDA, every parameter an fp32 contiguous CUDA
  // tensor: can_step_on_device()): grad_norm_device() is the global L2 norm as a 0-dim fp32
  // device tensor; step(lr, gscale, run) multiplies each gradient by gscale inside the update (the
  // clip) and leaves everything as it is where run == 0 (a skipped step), both 0-dim fp32 device
  // tensors. The step counter advances on the host; unstep() takes it back once the host has read
  // that the step was skipped.
  bool can_step_on_device() const;
  at::Tensor grad_norm_device() const;
  void step(double lr, const at::Tensor& gscale, const at::Tensor& run);
  void unstep() { --t_; }
  int64_t steps() const { return t_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // m/<name>, v/<name>, scale/<name> (relative groups) and "step".
  NamedTensors state() const;
  void load_state(const NamedTensors& state);

 private:
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<at::Tensor>> m_, v_, scale_;
  double b1_, b2_, eps_;
  int64_t t_ = 0;
};

// Tests compare the fused CUDA step against the ATen one.
void set_adamw_fused_enabled(bool on);

// Learning rate at `step` (0-based) for a train config: linear warmup, then cosine / wsd /
// constant down to min_lr_ratio.
double lr_at(const TrainConfig& c, int64_t step);

}  // namespace dfssm::distill
