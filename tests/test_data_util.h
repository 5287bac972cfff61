// Helpers shared by the data-pipeline tests (test_data_*.cpp): temp directories, generated
// text, and a tiny SentencePiece model trained once per process.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/catch_compat.h"
#include "distill/data/config.h"
#include "distill/data/tokenizer.h"
#include "distill/data/util.h"
#include "tests/test_util.h"

namespace dfssm::test {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed with its contents at scope exit.
class TempDir {
 public:
  explicit TempDir(const std::string& name) {
    path_ = fs::temp_directory_path() / ("dfssm_test_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }

 private:
  fs::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

inline std::string read_bytes(const std::string& path) { return data::read_file(path); }

// Deterministic, varied text: prose, code-like lines, indentation, digits and non-ASCII.
inline std::string generated_text(uint64_t seed, size_t lines) {
  static const char* words[] = {"the",    "model",  "data",   "token", "shard",  "loader", "epoch",  "batch",
                                "window", "seed",   "return", "def",   "class",  "self",   "value",  "index",
                                "import", "for",    "in",     "range", "if",     "else",   "while",  "print",
                                "café",   "naïve",  "über",   "数据",  "模型",   "λ",      "→",      "≥"};
  const size_t nwords = sizeof(words) / sizeof(words[0]);
  data::Rng rng(seed);
  std::string s;
  for (size_t l = 0; l < lines; ++l) {
    const uint64_t kind = rng.below(4);
    if (kind == 0) s += "def f" + std::to_string(rng.below(100)) + "(x, y):\n    return x + y * " +
                        std::to_string(rng.below(1000)) + "\n";
    else if (kind == 1) s += std::string(size_t(4 * rng.below(3)), ' ');
    const uint64_t n = 3 + rng.below(9);
    for (uint64_t w = 0; w < n; ++w) {
      s += words[rng.below(nwords)];
      s += w + 1 < n ? " " : "";
    }
    s += rng.below(5) == 0 ? ".\n\n" : "\n";
  }
  return s;
}

// A tiny BPE model (vocab 400, byte fallback) trained once on generated text.
inline const data::Tokenizer& tiny_tokenizer() {
  static const data::Tokenizer tok = [] {
    std::vector<std::string> sentences;
    for (uint64_t i = 0; i < 300; ++i) sentences.push_back(generated_text(1000 + i, 12));
    data::TokenizerSpec spec;
    spec.vocab_size = 400;
    spec.type = "bpe";
    spec.character_coverage = 1.0;
    return data::Tokenizer::from_model_bytes(data::train_sentencepiece(sentences, spec, 2, 7), "tiny");
  }();
  return tok;
}

// Writes the tiny model to `path` and returns the path.
inline std::string write_tiny_model(const std::string& path) {
  write_bytes(path, tiny_tokenizer().model_bytes());
  return path;
}

}  // namespace dfssm::test
