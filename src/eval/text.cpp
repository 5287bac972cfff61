#include "eval/text.h"

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/io_util.h"
#include "distill/data/sha256.h"

namespace dfssm::eval {

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_bytes(std::string bytes, const std::string& origin) {
  Tokenizer t;
  t.tok_ = std::make_unique<runtime::Tokenizer>(runtime::Tokenizer::from_bytes(bytes, origin));
  t.sha256_ = data::sha256_hex(bytes);
  t.origin_ = origin;
  return t;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DFSSM_CHECK(f, "cannot open tokenizer model '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return from_bytes(ss.str(), path);
}

Tokenizer Tokenizer::from_packed_metadata(const std::map<std::string, std::string>& meta, const std::string& source) {
  auto it = meta.find("tokenizer_model");
  DFSSM_CHECK(it != meta.end() && !it->second.empty(), source,
              ": the file carries no tokenizer (pass --tokenizer FILE.model, or --data DIR whose tokenizer.model is used)");
  const auto raw = base64_decode(it->second);
  return from_bytes(std::string(raw.begin(), raw.end()), source + " (metadata 'tokenizer_model')");
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const { return tok_->encode(text); }

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids)
    DFSSM_CHECK(id >= 0 && id < vocab_size(), origin_, ": cannot decode token id ", id, " (vocabulary size ",
                vocab_size(), ")");
  return tok_->decode(ids);
}

int64_t Tokenizer::vocab_size() const { return tok_->vocab_size(); }
int32_t Tokenizer::bos_id() const { return tok_->bos_id(); }
int32_t Tokenizer::eos_id() const { return tok_->eos_id(); }

bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

namespace {
// Decodes the code point at s[i]; sets *len to its byte length (1 for an invalid byte).
uint32_t next_cp(std::string_view s, size_t i, size_t* len) {
  const auto b = uint8_t(s[i]);
  int n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + size_t(n) > s.size()) return *len = 1, 0xFFFD;
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n; ++k) {
    const auto c = uint8_t(s[i + size_t(k)]);
    if ((c >> 6) != 2) return *len = 1, 0xFFFD;
    cp = (cp << 6) | (c & 0x3F);
  }
  *len = size_t(n);
  return cp;
}
}  // namespace

size_t rstrip_length(std::string_view s) {
  size_t end = 0;  // byte offset just past the last non-space code point
  for (size_t i = 0, len; i < s.size(); i += len)
    if (!is_py_space(next_cp(s, i, &len))) end = i + len;
  return end;
}

int64_t code_points(std::string_view s) {
  int64_t n = 0;
  for (size_t i = 0, len; i < s.size(); i += len, ++n) next_cp(s, i, &len);
  return n;
}

int64_t py_word_count(std::string_view s) {
  int64_t runs = 0;
  bool in_space = false;
  for (size_t i = 0, len; i < s.size(); i += len) {
    const bool sp = is_py_space(next_cp(s, i, &len));
    if (sp && !in_space) ++runs;
    in_space = sp;
  }
  return 1 + runs;
}

}  // namespace dfssm::eval
