// `dfssm eval` (docs/eval.md): loads the teacher, the student (a trainer checkpoint through
// LibTorch or a packed file through the runtime) and the init-only baseline, runs the tasks,
// writes results and prints the comparison table; `--check-export` compares the LibTorch student
// with its packed file. Also the entry point of `dfssm run`'s evaluation stage.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "eval/evaluator.h"
#include "eval/tasks.h"

namespace dfssm::eval {

struct EvalConfig {
  std::string teacher;             // any checkpoint `dfssm info` loads; "" = no teacher
  std::string student;             // a packed .dfssm.safetensors file or a student checkpoint dir
  std::string student_checkpoint;  // the student's trainer checkpoint (for --check-export, when
                                   // `student` is the packed file)
  std::string packed;              // the packed file (for --check-export, when `student` is a dir)
  bool init_only = true;           // add the init-only student (teacher + the student's quant config)
  std::string tokenizer;           // SentencePiece .model; "" = the dataset's, else the packed file's
  std::string data;                // a prepared dataset: its tokenizer, and (without tasks) its val split
  std::vector<TaskSpec> tasks;
  std::string device = "cpu";      // cpu | cuda: LibTorch models, and packed files (CUDA runtime when built)
  std::string teacher_dtype = "fp32";
  int threads = 0;                 // runtime and LibTorch CPU threads; 0 = all cores
  int64_t batch_size = 8;          // LibTorch batch (sequences)
  int64_t max_length = 2048;       // lm-eval's max_length
  int64_t limit = 0;               // first N documents per task; 0 = all
  std::string prefix_token = "auto";  // auto (BOS, else EOS: lm-eval) | bos | eos | <id>
  uint64_t seed = 0;               // the init-only student's initialisation seed
  std::string output;              // results directory; "" = none
  bool plot = true;                // <output>/eval.png via scripts/plot_eval.py (skipped if it fails)
  bool check_export = false;
  double tolerance = 1e-3;         // --check-export: max |CE(LibTorch) - CE(runtime)|, nats/token
  int64_t check_limit = 8;         // --check-export: documents per task
  bool quiet = false;

  static std::vector<std::string> keys();
  void set(const std::string& key, const std::string& value);  // throws naming the key
};

// A YAML file (every key optional, see keys()) plus key=value overrides.
EvalConfig load_eval_config(const std::string& yaml_path, const std::vector<std::pair<std::string, std::string>>& overrides);

struct EvalOutcome {
  std::vector<TaskResult> tasks;
  std::vector<std::string> roles, labels;
  std::string table;  // Markdown
};

// Runs the evaluation (prints progress and the table unless quiet). Throws dfssm::Error on bad input.
EvalOutcome run_eval(const EvalConfig& cfg);

struct ExportCheck {
  struct Row {
    std::string task;
    double ce_torch = 0, ce_runtime = 0, max_abs_logit_diff = 0, max_rel_logit_diff = 0;
    int64_t tokens = 0;
  };
  std::vector<Row> rows;
  double worst = 0;  // max |ce_torch - ce_runtime|
  bool passed = false;
};
// Runs the LibTorch student (conv and norms rounded to the file's small_dtype, as the export
// stores them) and the packed file through the runtime on the same requests; fails (passed =
// false) when a task's CE differs by more than cfg.tolerance.
ExportCheck check_export(const EvalConfig& cfg);

}  // namespace dfssm::eval
