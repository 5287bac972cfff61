// Text in and out for the runtime: the SentencePiece model embedded in a packed file's metadata
// (`tokenizer_model`, base64; its SHA-256 is `tokenizer_sha256`), or a .model file given by the
// user. Streaming detokenization: TextStream turns ids into text pieces as they are generated.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dfssm::runtime {

class Tokenizer {
 public:
  // From the packed file's metadata; `source` names the file in errors. Throws dfssm::Error when
  // the file carries no tokenizer (telling the user to pass --tokenizer or --ids).
  static Tokenizer from_metadata(const std::map<std::string, std::string>& meta, const std::string& source);
  static Tokenizer from_file(const std::string& path);
  // A serialized SentencePiece model; `origin` names it in errors.
  static Tokenizer from_bytes(const std::string& bytes, const std::string& origin);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  int64_t vocab_size() const;
  int32_t eos_id() const;
  int32_t bos_id() const;
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Incremental detokenizer: push(id) returns the text that id adds to the output. It decodes the
// last few ids together so multi-piece characters and SentencePiece's leading-space rule come
// out right.
class TextStream {
 public:
  explicit TextStream(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);

 private:
  const Tokenizer& tok_;
  std::vector<int32_t> ids_;
  std::string text_;
};

}  // namespace dfssm::runtime
