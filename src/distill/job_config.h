// Training jobs: `dfssm pretrain|distill|run|validate <job.yaml> [key.sub=value ...]`.
//
// A job is one YAML file (docs/config.md lists every key, its type, default and meaning; the
// list is job_schema() below, so the docs and the parser cannot disagree). A file may start from
// others with `include: base.yaml` (or `defaults: [a.yaml, b.yaml]`), paths relative to the
// including file; later files and then command-line overrides win, key by key.
//
// Loading never stops at the first problem: every unknown key (with a did-you-mean), wrong
// type, out-of-range value and missing file is collected, so one `dfssm validate` run shows them
// all. LibTorch-free.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "quant/quant_config.h"

namespace dfssm::distill {

struct KeySpec {
  std::string key;      // dotted, e.g. "distill.lr"
  char type;            // 'i' int, 'f' float, 's' string, 'b' bool
  std::string def;      // default, as YAML text
  std::string doc;
  double min = -1e300, max = 1e300;      // numbers: inclusive range
  std::vector<std::string> choices;      // strings: allowed values (empty = any)
};

const std::vector<KeySpec>& job_schema();

// Settings of one training loop (the `pretrain` or `distill` section).
struct TrainConfig {
  int64_t steps = 0, batch_size = 0, grad_accum = 1, seq_len = 0;
  double lr = 0, lr_scales = 0, lr_other = 0, min_lr_ratio = 0.1;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";  // cosine | wsd | constant
  double wsd_decay_frac = 0.2;
  double weight_decay = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip_grad_norm = 1.0, spike_factor = 0;  // skip the update when grad norm > factor x running mean
  double alpha = 0.0, temperature = 1.0;          // distill: alpha·T²·KL + (1-alpha)·CE
  int64_t kl_chunk = 1024;                        // tokens per LM-head chunk
  int64_t ssd_chunk = 0;                          // chunked-SSD length in training (0 = the model's)
  double dp_bucket_mb = 25;                       // gradient all-reduce buckets (grad_buckets.h); 0 = one shot
  std::string dp_backend = "auto";                // auto | nccl | gloo | store (dist.h)
  std::string activation_checkpointing = "none";  // none | all | "0,1,2"
  std::string activation_checkpointing_keep = "ssd_output";  // ssd_output | none (Mamba2Model::keep_ssd_output)
  std::string activation_checkpointing_keep_in_proj = "none";  // none | all | auto | "0,1,2" (keep_in_proj_layers)
  double memory_budget_gib = 0;  // what the --dry-run estimate may reach (0: no budget); `auto` above fills it
  double hidden_mse = 0;                          // distill: weight of the hidden-state term
  std::string hidden_mse_layers = "all";          // all | "0,1,2"
  std::string teacher_cache = "none";             // none | write | read | auto (teacher_cache.h)
  int64_t teacher_cache_k = 64;
  std::string teacher_cache_path;                 // "" = <run_dir>/teacher_topk.h5
  // Which of n_layer layers recompute their activations in backward. Throws on a bad index.
  std::vector<bool> recompute_layers(int64_t n_layer) const;
  // Recomputed layers that keep their in_proj output (activation_checkpointing_keep_in_proj); for
  // `auto` none here: the trainer's keep_in_proj_for resolves it against the memory estimate.
  std::vector<bool> keep_in_proj_layers(int64_t n_layer) const;
  std::vector<bool> hidden_layers(int64_t n_layer) const;  // the hidden_mse layers
  int64_t log_every = 10, eval_every = 0, eval_batches = 8;
  int64_t checkpoint_every = 0, keep_checkpoints = 2;
  std::string resume = "auto";  // auto | none | <checkpoint dir>
};

struct JobConfig {
  std::string source;  // the YAML file
  std::string run_dir;
  uint64_t seed = 0;
  std::string device = "cpu";
  int64_t threads = 0;
  std::string data_dir, data_prepare;
  std::string teacher_path, teacher_dtype;
  std::string geometry;
  std::map<std::string, int64_t> model_overrides;  // model.<field> != 0
  quant::QuantConfig quant;
  TrainConfig pretrain, distill;
  std::string eval_dtype;
  int64_t eval_limit = 0;  // eval.limit: documents per task in `dfssm run`'s eval stage (0 = all)

  // Resolved locations (from run_dir when not given).
  std::string teacher_dir() const;  // teacher.path or <run_dir>/teacher
  std::string dataset_dir() const;  // data.dir or <run_dir>/data
  std::string student_dir() const { return run_dir + "/student"; }
  std::string packed_path() const { return run_dir + "/model.dfssm.safetensors"; }

  std::map<std::string, std::string> flat;  // every key -> value as YAML text (for logs/checkpoints)
  std::string to_yaml() const;              // the fully resolved job
};

// Loads and type-checks `path` with overrides. Problems go to `errors` (all of them); the
// returned config is only meaningful when `errors` is empty.
JobConfig load_job(const std::string& path, const std::vector<std::pair<std::string, std::string>>& overrides,
                   std::vector<std::string>* errors);

// Cross-checks that need the files: the dataset exists and its vocab fits the teacher, the
// tokenizers of teacher, data and student agree. `stage` is pretrain, distill or run (run
// tolerates outputs that earlier stages will create).
void check_job_files(const JobConfig& job, const std::string& stage, std::vector<std::string>* errors);

// load_job + check_job_files; throws dfssm::Error listing every problem.
JobConfig load_job_or_throw(const std::string& path, const std::vector<std::pair<std::string, std::string>>& overrides,
                            const std::string& stage);

// The Markdown table of every key (docs/config.md is generated from it).
std::string schema_markdown();

}  // namespace dfssm::distill
