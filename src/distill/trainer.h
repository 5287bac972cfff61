// The training loop shared by `dfssm pretrain` (cross-entropy on a full-precision Mamba-2) and
// `dfssm distill` (the DF-SSM student against a frozen teacher). docs/training.md describes it.
//
// Outputs, under the stage's directory (pretrain: the teacher dir; distill: <run_dir>/student):
//   checkpoints/step-NNNNNNNN/   a complete, resumable checkpoint: the model (model.safetensors or a
//                                student checkpoint), optim.safetensors, state.json (step, tokens,
//                                data cursor, schedule, running stats, RNG state, config, git
//                                revision) and DONE. Written to a .tmp name, fsynced, renamed.
//   metrics.jsonl                one JSON object per logged step / evaluation
//   final output                 pretrain: <dir>/config.json + model.safetensors + DONE;
//                                distill: <dir>/final/ (a student checkpoint) + DONE
//
// Resume is exact: a run killed at any point and restarted with resume: auto continues from the
// newest complete checkpoint and produces bit-identical losses on CPU (tests/test_trainer.cpp).
#pragma once

#include <string>
#include <vector>

#include "distill/job_config.h"
#include "model/config.h"

namespace dfssm::distill {

enum class Mode { Pretrain, Distill };

struct TrainSummary {
  int64_t steps = 0;
  int64_t tokens = 0;
  double seconds = 0;
  std::string output;  // the final model directory
};

TrainSummary train(const JobConfig& job, Mode mode);

// Where a stage writes, and whether it has finished (its DONE marker exists).
std::string stage_dir(const JobConfig& job, Mode mode);
bool stage_done(const JobConfig& job, Mode mode);

// Memory estimate for --dry-run (GiB, by part): teacher + student + optimizer + activations + LM
// head; with memory_budget_gib, a line when over it, and the layers `auto` picked.
std::string memory_estimate(const JobConfig& job, Mode mode);

// The recomputed layers that keep their in_proj output: the config's list, or for
// activation_checkpointing_keep_in_proj: auto the first recomputed layers, as many as keep the
// estimate above within memory_budget_gib (CUDA jobs; none on the CPU).
std::vector<bool> keep_in_proj_for(const JobConfig& job, Mode mode, const Mamba2Config& cfg);

}  // namespace dfssm::distill
