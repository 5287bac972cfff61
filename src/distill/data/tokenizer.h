// The tokenizer: a SentencePiece model (trained here or brought as a .model), or an
// "external" tokenizer that only describes pre-tokenized data (vocab size, EOS/BOS ids, hash).
// encode() and decode() are const and safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "distill/data/config.h"

namespace dfssm::data {

struct TokenizerInfo {
  std::string type;      // "sentencepiece" or "external"
  int64_t vocab_size = 0;
  int64_t eos_id = -1;
  int64_t bos_id = -1;
  int64_t unk_id = -1;
  int64_t pad_id = -1;
  std::string sha256;    // of the .model bytes (external: of `file`, or of a description)
};

// Text is encoded in line-aligned pieces of at most this many bytes (SentencePiece's BPE is
// superlinear in the input length); part of the tokenization's definition, so it is fixed.
constexpr size_t kEncodeChunkBytes = 4096;

class Tokenizer {
 public:
  // A SentencePiece model from its bytes; `origin` names it in errors.
  static Tokenizer from_model_bytes(std::string bytes, const std::string& origin);
  static Tokenizer load(const std::string& model_path);
  // Describes pre-tokenized data only (cannot encode or decode text).
  static Tokenizer external(int64_t vocab_size, int64_t eos_id, int64_t bos_id, const std::string& identity_file);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  const TokenizerInfo& info() const { return info_; }
  bool can_encode() const { return sp_ != nullptr; }
  const std::string& model_bytes() const { return model_bytes_; }  // "" for external

  void encode_append(std::string_view text, std::vector<int32_t>* out) const;
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const int32_t* ids, size_t n) const;
  std::string decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }
  std::string piece(int32_t id) const;

 private:
  Tokenizer() = default;
  struct Sp;
  std::unique_ptr<Sp> sp_;
  std::string model_bytes_;
  TokenizerInfo info_;
};

// Encodes many texts on `threads` threads (work is split into kEncodeChunkBytes pieces, so one
// large document does not serialise the pool). Output i holds the ids of texts[i].
std::vector<std::vector<int32_t>> encode_parallel(const Tokenizer& tok, const std::vector<std::string_view>& texts,
                                                  int threads);

// Trains a SentencePiece model on `sentences` with the settings of `spec`; returns the model
// bytes. Deterministic for the same sentences and settings.
std::string train_sentencepiece(const std::vector<std::string>& sentences, const TokenizerSpec& spec, int threads,
                                uint64_t seed);

}  // namespace dfssm::data
