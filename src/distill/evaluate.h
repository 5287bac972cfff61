// Held-out evaluation shared by the trainer (periodic evals) and `dfssm run` (the final table):
// model CE, and against a teacher its CE, KL(teacher || model) and top-1 agreement, over the
// windows of a validation loader, with the chunked LM-head loss.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include "distill/data/loader.h"
#include "model/mamba2.h"

namespace dfssm::distill {

struct AutocastGuard {  // bf16 autocast on CUDA, for the student's forward passes
  bool on;
  explicit AutocastGuard(bool enable) : on(enable) {
    if (on) {
      at::autocast::set_autocast_enabled(at::kCUDA, true);
      at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    }
  }
  ~AutocastGuard() {
    if (on) {
      at::autocast::set_autocast_enabled(at::kCUDA, false);
      at::autocast::clear_cache();
    }
  }
};

struct LmEval {
  double teacher_ce = 0, student_ce = 0, kl = 0, top1 = 0;  // per-token means (teacher terms 0 without one)
  int64_t tokens = 0;                                        // 0 when the split yielded no window
};

// `val` is a validation loader's options (in order, one pass); max_batches 0 = all.
LmEval evaluate_lm(const Mamba2Model* teacher, const Mamba2Model& model, const data::LoaderOptions& val,
                   int64_t max_batches, int64_t chunk, bool bf16_autocast);

}  // namespace dfssm::distill
