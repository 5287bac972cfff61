// `dfssm run <job.yaml>`: the whole pipeline, stage by stage, each skipped when its complete
// output already exists (so re-running after a crash continues where it stopped):
//   data prepare (when data.dir has no manifest and data.prepare is set)
//   -> pretrain (when no teacher exists) -> distill -> export -> evaluation table + a sample.
#pragma once

#include <string>

#include "distill/evaluate.h"
#include "distill/job_config.h"
#include "model/mamba2.h"

namespace dfssm::distill {

// Held-out evaluation of `student` against `teacher` on the dataset's val split (windows of
// seq_len, in order; max_batches 0 = all).
LmEval evaluate_pair(const Mamba2Model& teacher, const Mamba2Model& student, const std::string& dataset_dir,
                     int64_t seq_len, int64_t batch, int64_t max_batches);

// Samples `n` tokens after `prompt` (top-k, temperature; seeded) and returns the decoded text.
std::string sample_text(const Mamba2Model& model, const std::string& dataset_dir, const std::string& prompt, int64_t n,
                        uint64_t seed);

int run_pipeline(const JobConfig& job);

}  // namespace dfssm::distill
