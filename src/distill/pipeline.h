// `dfssm run <job.yaml>`: the whole pipeline, stage by stage, each skipped when its complete
// output already exists (so re-running after a crash continues where it stopped):
//   data prepare (when data.dir has no manifest and data.prepare is set)
//   -> pretrain (when no teacher exists) -> distill -> export -> evaluation (src/eval) + a sample.
#pragma once

#include <string>

#include "distill/job_config.h"
#include "model/mamba2.h"

namespace dfssm::distill {

// Samples `n` tokens after `prompt` (top-k, temperature; seeded) and returns the decoded text.
std::string sample_text(const Mamba2Model& model, const std::string& dataset_dir, const std::string& prompt, int64_t n,
                        uint64_t seed);

int run_pipeline(const JobConfig& job);

}  // namespace dfssm::distill
