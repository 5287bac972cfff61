// Runs tasks over a set of models (teacher, student, init-only, ...) and computes every metric
// of docs/eval.md. LibTorch-free: models come in as Engines.
//
// Requests are processed in blocks: every model runs the block (timed per model), its logits for
// the scored positions are kept, and then each position is scored against the teacher's logits
// of the same position (KL, top-1/top-5 agreement). A block holds at most `block_floats` logits
// per model, so memory stays bounded whatever the task size.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/engine.h"
#include "eval/tasks.h"

namespace dfssm::eval {

struct ModelUnderTest {
  std::string role;   // "teacher", "student", "init_only", ... (results/<role>/results.json)
  std::string label;  // table header, e.g. "student (packed, runtime)"
  std::string path;   // what was loaded ("" for a derived model)
  Engine* engine = nullptr;
  double size_mb = 0;       // storage: the packed file, or the teacher's parameters as fp16
  std::string size_note;    // e.g. "fp16 params", "packed file"
};

struct EvalOptions {
  int64_t max_length = 2048;     // lm-eval's max_length: rolling window and truncation length
  int32_t prefix_token = -1;     // lm-eval's prefix token (BOS, else EOS; or a custom id)
  int64_t block_floats = int64_t(1) << 24;  // logits kept per model per block (64 MB)
  int threads = 0;                // threads that score the positions (0 = all cores)
  std::function<void(const std::string&)> progress;  // optional progress lines
};

inline constexpr double kNA = std::numeric_limits<double>::quiet_NaN();

struct Metric {
  std::string name;
  double value = 0;
  double stderr_ = kNA;  // NaN: "N/A" (lm-eval writes the string "N/A")
  bool higher_is_better = true;
  bool vs_teacher = false;  // a comparison with the teacher (absent from the teacher's own results)
};

struct ModelTaskResult {
  std::vector<Metric> metrics;
  double seconds = 0;         // time in the engine
  int64_t examples = 0;       // documents
  int64_t requests = 0;       // model inputs
  int64_t tokens_fed = 0;     // input tokens processed
  int64_t tokens_scored = 0;
  // Per position of the model input (the context length a scored token had), lm tasks only.
  std::vector<double> pos_nll, pos_kl;
  std::vector<int64_t> pos_n;
  std::vector<int64_t> preds;  // multiple choice: the predicted index per document
  const Metric* find(const std::string& name) const;
  double examples_per_s() const { return seconds > 0 ? double(examples) / seconds : 0; }
  double tokens_per_s() const { return seconds > 0 ? double(tokens_fed) / seconds : 0; }
};

struct TaskResult {
  std::string name, kind, layout, source;
  int64_t docs = 0, original_docs = 0;
  nlohmann::ordered_json config;  // lm-eval's "configs" entry
  std::vector<ModelTaskResult> models;  // parallel to the models given
};

// `teacher` indexes `models` (-1: no teacher, no comparison metrics). `tok` encodes the text of
// multiple-choice / loglikelihood tasks (lm tasks arrive tokenized).
TaskResult evaluate_task(const Task& task, const std::vector<ModelUnderTest>& models, int teacher,
                         const TextEncoder* tok, const EvalOptions& opt);

// The requests of a task, in document order, and the document each belongs to.
struct TaskRequests {
  std::vector<Request> reqs;
  std::vector<int64_t> doc;
};
TaskRequests build_requests(const Task& task, const TextEncoder* tok, const EvalOptions& opt);

}  // namespace dfssm::eval
