// `dfssm eval make-task`: multiple-choice tasks generated from a corpus's held-out documents
// (docs/eval.md, "Generated tasks"). LibTorch-free.
//
// nextline: "which line comes next in this Python file?" The context is the lines before a
// chosen line (up to context_lines lines / max_context_bytes), the gold choice is the real line,
// the distractors are lines of other held-out files (or, with distractors=same-file, other lines
// of the same file), re-indented to the real line's indentation so indentation gives nothing away.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dfssm::eval {

struct MakeTaskOptions {
  std::string kind = "nextline";
  std::string distractors = "other-files";  // other-files | same-file
  int64_t n = 200;                 // documents to generate
  int64_t choices = 4;
  uint64_t seed = 0;
  int64_t context_lines = 12;
  int64_t max_context_bytes = 1024;
  int64_t min_line_chars = 16;     // a candidate line's length without indentation
  int64_t max_line_chars = 100;
};

// texts[i] is a document named names[i]. Deterministic for the same inputs and options.
std::vector<nlohmann::ordered_json> make_nextline_task(const std::vector<std::string>& texts,
                                                       const std::vector<std::string>& names,
                                                       const MakeTaskOptions& opt);

// The decoded documents of a prepared dataset's split (which needs a SentencePiece tokenizer).
std::vector<std::string> dataset_texts(const std::string& dir, const std::string& split,
                                       std::vector<std::string>* names);

void write_jsonl(const std::string& path, const std::vector<nlohmann::ordered_json>& lines);

}  // namespace dfssm::eval
