// Text helpers for evaluation, LibTorch-free: the tokenizer as lm-evaluation-harness uses it
// (whole-string SentencePiece encoding, no chunking), and the string rules lm-eval's scoring
// relies on (Python's str.rstrip / str.isspace, re.split(r"\s+"), len() in code points).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tokenizer.h"

namespace dfssm::eval {

// What scoring needs from a tokenizer (tests use a fake one).
class TextEncoder {
 public:
  virtual ~TextEncoder() = default;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
};

// A SentencePiece model (the runtime's wrapper, plus the model's hash and origin for the
// reports). encode() is whole-string (lm-eval's tok_encode), unlike the data pipeline's
// line-chunked encoding (docs/eval.md, "Tokenization").
class Tokenizer : public TextEncoder {
 public:
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_bytes(std::string bytes, const std::string& origin);
  // The SentencePiece model a packed file embeds (metadata "tokenizer_model", base64); throws
  // dfssm::Error naming `source` when there is none.
  static Tokenizer from_packed_metadata(const std::map<std::string, std::string>& meta, const std::string& source);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer() override;

  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const;
  int64_t vocab_size() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;
  const std::string& sha256() const { return sha256_; }  // of the serialized model
  const std::string& origin() const { return origin_; }

 private:
  Tokenizer();
  std::unique_ptr<runtime::Tokenizer> tok_;
  std::string sha256_, origin_;
};

// Python's str.isspace() for one code point.
bool is_py_space(uint32_t cp);
// The byte length of `s` without its trailing whitespace (Python's str.rstrip()).
size_t rstrip_length(std::string_view s);
// len(s) in Python: Unicode code points of UTF-8 text (invalid bytes count one each).
int64_t code_points(std::string_view s);
// len(re.split(r"\s+", s)): 1 + the number of maximal whitespace runs (lm-eval's word count;
// leading or trailing whitespace counts as a run, as in Python).
int64_t py_word_count(std::string_view s);

}  // namespace dfssm::eval
