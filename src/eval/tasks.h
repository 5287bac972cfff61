// Evaluation tasks and their documents (docs/eval.md, "Tasks"). LibTorch-free.
//
//   lm              rolling log-likelihood of whole documents (lm-eval loglikelihood_rolling):
//                   a prepared dataset's split (default val), a .txt file (one document), a JSONL
//                   file (one document per line, field `text`), or a token file (.bin/.npy,
//                   documents split at EOS)
//   multiple_choice zero-shot multiple choice from JSONL: the generic layout
//                   {"context", "choices", "gold"} or hellaswag / piqa / arc / winogrande
//   loglikelihood   one (context, continuation) per document: the lambada layout
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/text.h"

namespace dfssm::eval {

struct TaskSpec {
  std::string name;              // default: from the path (file stem, or <dataset>_<split>)
  std::string path;              // dataset directory or file
  std::string layout = "auto";   // auto | lm | generic | hellaswag | piqa | arc | winogrande | lambada
  std::string split = "val";     // for a dataset directory
  std::string field = "text";    // JSONL text field of an lm task (wikitext: page)
  std::string target_delimiter = " ";  // lm-eval's default; a generic line may set its own
  std::string token_dtype = "uint16";  // raw .bin token files: uint16 | uint32
  int64_t limit = -1;            // first N documents; -1: the run's limit, 0: all
};

// "[name=]path[:layout]" (the CLI's --tasks entries, comma-separated).
TaskSpec parse_task_spec(const std::string& s);
std::vector<TaskSpec> parse_task_list(const std::string& csv);

struct LmDoc {
  std::string text;             // the original page (for word / byte counts); may be empty
  bool has_text = false;
  std::vector<int32_t> tokens;  // the document's tokens (no EOS / BOS)
};

struct McDoc {
  // One request per entry: (contexts[i], continuations[i]); `choices[i]` is the raw choice text
  // whose length normalises acc_norm (for winogrande, the partial sentence).
  std::vector<std::string> contexts, continuations, choices;
  std::vector<int64_t> gold;
  std::string id;  // "file:line"
};

struct Task {
  std::string name;
  std::string kind;    // lm | multiple_choice | loglikelihood
  std::string layout;  // resolved
  TaskSpec spec;
  std::vector<LmDoc> lm;
  std::vector<McDoc> mc;
  int64_t original_docs = 0;   // before the limit
  int64_t skipped_docs = 0;    // empty documents (no tokens)
  std::string source_detail;   // e.g. "split val of runs/quickstart/data (33 documents)"
  bool retokenized = false;    // lm documents encoded here (whole string) vs. taken as stored
};

// What loading needs to know about the models' tokenization.
struct TokenContext {
  const Tokenizer* tok = nullptr;  // may be null: token-only sources then work, text ones fail
  int64_t vocab_size = 0;          // the models' vocabulary: every id must be below it
  int32_t eos_id = -1;             // splits token files into documents
};

// Reads a task's documents; errors name the file (and line). `limit` applies when spec.limit < 0.
Task load_task(const TaskSpec& spec, const TokenContext& tc, int64_t limit);

}  // namespace dfssm::eval
