#include "distill/data/tokenizer.h"

#include <atomic>
#include <thread>
#include <unordered_map>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "core/error.h"
#include "distill/data/sha256.h"
#include "distill/data/util.h"

namespace dfssm::data {

struct Tokenizer::Sp {
  sentencepiece::SentencePieceProcessor proc;
};

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_model_bytes(std::string bytes, const std::string& origin) {
  Tokenizer t;
  t.sp_ = std::make_unique<Sp>();
  const auto st = t.sp_->proc.LoadFromSerializedProto(bytes);
  DFSSM_CHECK(st.ok(), origin, ": not a valid SentencePiece model (", st.ToString(), ")");
  TokenizerInfo& i = t.info_;
  i.type = "sentencepiece";
  i.vocab_size = t.sp_->proc.GetPieceSize();
  i.eos_id = t.sp_->proc.eos_id();
  i.bos_id = t.sp_->proc.bos_id();
  i.unk_id = t.sp_->proc.unk_id();
  i.pad_id = t.sp_->proc.pad_id();
  i.sha256 = sha256_hex(bytes);
  DFSSM_CHECK(i.eos_id >= 0, origin, ": the SentencePiece model has no EOS piece, but documents are separated by EOS; ",
              "train it with eos_id >= 0");
  t.model_bytes_ = std::move(bytes);
  return t;
}

Tokenizer Tokenizer::load(const std::string& model_path) {
  return from_model_bytes(read_file(model_path), model_path);
}

Tokenizer Tokenizer::external(int64_t vocab_size, int64_t eos_id, int64_t bos_id, const std::string& identity_file) {
  Tokenizer t;
  TokenizerInfo& i = t.info_;
  i.type = "external";
  i.vocab_size = vocab_size;
  i.eos_id = eos_id;
  i.bos_id = bos_id;
  i.sha256 = identity_file.empty()
                 ? sha256_hex(str("external-tokenizer vocab_size=", vocab_size, " eos_id=", eos_id, " bos_id=", bos_id))
                 : sha256_file(identity_file);
  return t;
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>* out) const {
  DFSSM_CHECK(sp_, "this dataset's tokenizer is external (pre-tokenized data); it cannot encode text");
  std::vector<int> ids;
  for (std::string_view piece : split_chunks(text, kEncodeChunkBytes)) {
    const auto st = sp_->proc.Encode(piece, &ids);
    DFSSM_CHECK(st.ok(), "SentencePiece failed to encode text: ", st.ToString());
    out->insert(out->end(), ids.begin(), ids.end());
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  encode_append(text, &out);
  return out;
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) const {
  DFSSM_CHECK(sp_, "this dataset's tokenizer is external (pre-tokenized data); it cannot decode to text");
  std::vector<int> v(ids, ids + n);
  for (size_t k = 0; k < n; ++k)
    DFSSM_CHECK(v[k] >= 0 && v[k] < info_.vocab_size, "cannot decode token id ", v[k], " at position ", k,
                ": outside the vocabulary (size ", info_.vocab_size, ")");
  std::string s;
  const auto st = sp_->proc.Decode(v, &s);
  DFSSM_CHECK(st.ok(), "SentencePiece failed to decode: ", st.ToString());
  return s;
}

std::string Tokenizer::piece(int32_t id) const {
  if (!sp_) return str("<", id, ">");
  DFSSM_CHECK(id >= 0 && id < info_.vocab_size, "token id ", id, " is outside the vocabulary (size ",
              info_.vocab_size, ")");
  return sp_->proc.IdToPiece(id);
}

std::vector<std::vector<int32_t>> encode_parallel(const Tokenizer& tok, const std::vector<std::string_view>& texts,
                                                  int threads) {
  struct Job {
    size_t text;
    std::string_view piece;
  };
  std::vector<Job> jobs;
  for (size_t i = 0; i < texts.size(); ++i)
    for (std::string_view p : split_chunks(texts[i], kEncodeChunkBytes)) jobs.push_back({i, p});
  std::vector<std::vector<int32_t>> piece_ids(jobs.size());
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&] {
    try {
      for (size_t j; !failed && (j = next.fetch_add(1)) < jobs.size();) tok.encode_append(jobs[j].piece, &piece_ids[j]);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  const int n = std::max(1, std::min<int>(threads, int(jobs.size())));
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
  std::vector<std::vector<int32_t>> out(texts.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    auto& dst = out[jobs[j].text];
    dst.insert(dst.end(), piece_ids[j].begin(), piece_ids[j].end());
  }
  return out;
}

namespace {

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& v_;
  size_t i_ = 0;
};

bool read_varint(const std::string& s, size_t* pos, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && *pos < s.size(); shift += 7) {
    const uint8_t b = uint8_t(s[(*pos)++]);
    *v |= uint64_t(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

void write_varint(std::string* s, uint64_t v) {
  while (v >= 0x80) {
    s->push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  s->push_back(char(v));
}

// Copies a protobuf message, dropping the fields for which drop(field, wire_type) is true and
// rewriting length-delimited fields through nested(field, bytes). Returns false if `in` does
// not parse (then `out` is unusable).
template <class Drop, class Nested>
bool rewrite_proto(const std::string& in, std::string* out, Drop drop, Nested nested) {
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t start = pos;
    uint64_t key = 0, v = 0;
    if (!read_varint(in, &pos, &key)) return false;
    const uint32_t field = uint32_t(key >> 3), wt = uint32_t(key & 7);
    std::string payload;
    if (wt == 0) {
      if (!read_varint(in, &pos, &v)) return false;
    } else if (wt == 1 || wt == 5) {
      pos += wt == 1 ? 8 : 4;
      if (pos > in.size()) return false;
    } else if (wt == 2) {
      if (!read_varint(in, &pos, &v) || v > in.size() - pos) return false;
      payload = in.substr(pos, size_t(v));
      pos += size_t(v);
    } else {
      return false;
    }
    if (drop(field, wt)) continue;
    std::string replaced;
    if (wt == 2 && nested(field, payload, &replaced)) {
      write_varint(out, key);
      write_varint(out, replaced.size());
      *out += replaced;
    } else {
      out->append(in, start, pos - start);
    }
  }
  return true;
}

// SentencePiece stores its TrainerSpec (ModelProto field 2) in the model, including
// num_threads (TrainerSpec field 16). The thread count does not change the pieces, so it is
// removed: the same corpus and settings give the same model bytes (and SHA-256) on a 2-core
// box and a 16-core one.
std::string canonical_model(const std::string& model) {
  std::string out;
  const bool ok = rewrite_proto(
      model, &out, [](uint32_t, uint32_t) { return false; },
      [](uint32_t field, const std::string& payload, std::string* replaced) {
        if (field != 2) return false;
        replaced->clear();
        return rewrite_proto(
            payload, replaced, [](uint32_t f, uint32_t wt) { return f == 16 && wt == 0; },
            [](uint32_t, const std::string&, std::string*) { return false; });
      });
  return ok ? out : model;
}

}  // namespace

std::string train_sentencepiece(const std::vector<std::string>& sentences, const TokenizerSpec& spec, int threads,
                                uint64_t seed) {
  DFSSM_CHECK(!sentences.empty(), "no text to train the tokenizer on (the text sources are empty)");
  const auto b = [](bool v) { return std::string(v ? "true" : "false"); };
  // Settings for source code and prose alike: no normalisation (identity), whitespace kept
  // exactly, newlines allowed inside pieces (training sentences are multi-line chunks), so
  // decode(encode(text)) == text for any UTF-8 text when byte_fallback is on.
  const std::unordered_map<std::string, std::string> kw = {
      {"model_type", spec.type},
      {"vocab_size", std::to_string(spec.vocab_size)},
      {"character_coverage", std::to_string(spec.character_coverage)},
      {"byte_fallback", b(spec.byte_fallback)},
      {"split_digits", b(spec.split_digits)},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_by_whitespace", "true"},
      {"max_sentence_length", std::to_string(spec.max_sentence_bytes)},
      {"input_sentence_size", "0"},  // the sample is drawn by dfssm (deterministically)
      {"shuffle_input_sentence", "false"},
      {"num_threads", std::to_string(std::max(1, threads))},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", "1"},
  };
  sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned int>(seed & 0xFFFFFFFFu));
  VectorIterator it(sentences);
  std::string proto;
  const auto st = sentencepiece::SentencePieceTrainer::Train(kw, &it, &proto);
  if (!st.ok()) {
    const std::string msg = st.ToString();
    std::string hint;
    if (msg.find("ocabulary size") != std::string::npos)
      hint = " (lower tokenizer.vocab_size, or raise tokenizer.sample_bytes / add text)";
    throw Error(str("training the SentencePiece tokenizer failed: ", msg, hint));
  }
  std::string canonical = canonical_model(proto);
  sentencepiece::SentencePieceProcessor check;
  return check.LoadFromSerializedProto(canonical).ok() ? canonical : proto;
}

}  // namespace dfssm::data
