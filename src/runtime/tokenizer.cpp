#include "runtime/tokenizer.h"

#include <sentencepiece_processor.h>

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/io_util.h"

namespace dfssm::runtime {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_bytes(const std::string& bytes, const std::string& origin) {
  Tokenizer t;
  const auto st = t.impl_->sp.LoadFromSerializedProto(bytes);
  DFSSM_CHECK(st.ok(), origin, ": not a valid SentencePiece model (", st.ToString(), ")");
  return t;
}

Tokenizer Tokenizer::from_metadata(const std::map<std::string, std::string>& meta, const std::string& source) {
  auto it = meta.find("tokenizer_model");
  DFSSM_CHECK(it != meta.end() && !it->second.empty(), source,
              ": the file carries no tokenizer (export it with `dfssm export --tokenizer tok.model`, or pass "
              "--tokenizer FILE, or use --ids)");
  const auto raw = base64_decode(it->second);
  return from_bytes(std::string(raw.begin(), raw.end()), source + " (metadata 'tokenizer_model')");
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DFSSM_CHECK(f, "cannot open tokenizer model '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return from_bytes(ss.str(), path);
}

int64_t Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }
int32_t Tokenizer::eos_id() const { return impl_->sp.eos_id(); }
int32_t Tokenizer::bos_id() const { return impl_->sp.bos_id(); }

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto st = impl_->sp.Encode(text, &ids);
  DFSSM_CHECK(st.ok(), "tokenizer: cannot encode the prompt (", st.ToString(), ")");
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<int> v(ids.begin(), ids.end());
  std::string s;
  const auto st = impl_->sp.Decode(v, &s);
  DFSSM_CHECK(st.ok(), "tokenizer: cannot decode (", st.ToString(), ")");
  return s;
}

std::string TextStream::push(int32_t id) {
  // Decoding the whole sequence each time is O(n) per token, negligible next to the model, and
  // gets SentencePiece's whitespace rules right. A trailing U+FFFD is an incomplete UTF-8
  // character (a byte-fallback piece): hold it back until the next ids complete it.
  ids_.push_back(id);
  const std::string full = tok_.decode(ids_);
  static const std::string kReplacement = "\xEF\xBF\xBD";
  if (full.size() >= 3 && full.compare(full.size() - 3, 3, kReplacement) == 0) return "";
  size_t common = 0;
  while (common < text_.size() && common < full.size() && text_[common] == full[common]) ++common;
  std::string out = full.substr(common);
  text_ = full;
  return out;
}

}  // namespace dfssm::runtime
