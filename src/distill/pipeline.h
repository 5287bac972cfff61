// `dfssm run <job.yaml>`: the whole pipeline, stage by stage, each skipped when its complete
// output already exists (so re-running after a crash continues where it stopped):
//   data prepare (when data.dir has no manifest and data.prepare is set)
//   -> pretrain (when no teacher exists) -> distill -> export -> evaluation (src/eval) + a sample.
#pragma once

#include <string>
#include <vector>

#include "distill/job_config.h"
#include "model/mamba2.h"

namespace dfssm::distill {

// Samples `n` tokens after `prompt` (top-k, temperature; seeded) and returns the decoded text.
std::string sample_text(const Mamba2Model& model, const std::string& dataset_dir, const std::string& prompt, int64_t n,
                        uint64_t seed);

// nproc > 1: the pretrain and distill stages run as nproc data-parallel processes
// (launch_local: `dfssm pretrain|distill <train_args...>`, where train_args are the job file and
// the command line's overrides); the other stages run in this process.
struct PipelineOptions {
  int nproc = 1;
  std::vector<std::string> train_args;
};

int run_pipeline(const JobConfig& job, const PipelineOptions& opt = {});

}  // namespace dfssm::distill
