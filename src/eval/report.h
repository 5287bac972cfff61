// Evaluation outputs (docs/eval.md, "Outputs"): one lm-eval-shaped results.json per model, a
// summary.json with every model side by side (and the per-position curves for the plot), and the
// Markdown comparison table printed to the terminal. LibTorch-free.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/evaluator.h"

namespace dfssm::eval {

struct RunInfo {
  nlohmann::ordered_json config;  // the resolved eval config (lm-eval's "config" block)
  double seconds = 0;
  std::string date;               // unix time as a string
};

// lm-eval's results.json for models[m]: results.<task>."<metric>,none" and
// "<metric>_stderr,none" (the string "N/A" without one), configs, versions, n-shot,
// higher_is_better, n-samples, config, plus a "dfssm" block (throughput, engine, size).
nlohmann::ordered_json lm_eval_results(const std::vector<TaskResult>& tasks, const std::vector<ModelUnderTest>& models,
                                       size_t m, const RunInfo& run);

// Every model side by side, differences, throughput and the per-position curves.
nlohmann::ordered_json summary_json(const std::vector<TaskResult>& tasks, const std::vector<ModelUnderTest>& models,
                                    int teacher, const RunInfo& run);

// | task | metric | <model> ... | Δ <student> − teacher |, Δ present when models hold roles
// "teacher" and "student". Then throughput and size rows.
std::string markdown_table(const std::vector<TaskResult>& tasks, const std::vector<ModelUnderTest>& models);

// Writes <dir>/<role>/results.json for every model and <dir>/summary.json (atomically).
void write_outputs(const std::string& dir, const std::vector<TaskResult>& tasks,
                   const std::vector<ModelUnderTest>& models, int teacher, const RunInfo& run);

}  // namespace dfssm::eval
