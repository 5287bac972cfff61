// The SentencePiece tokenizer: round trip, ids, parallel encoding, training determinism.
#include "tests/catch_compat.h"
#include "tests/test_data_util.h"

#include "distill/data/sha256.h"
#include "distill/data/tokenizer.h"

using namespace dfssm;
using namespace dfssm::data;
using dfssm::test::contains;
using dfssm::test::error_of;
using dfssm::test::generated_text;
using dfssm::test::tiny_tokenizer;

TEST_CASE("tokenize -> detokenize is the identity", "[data]") {
  const Tokenizer& tok = tiny_tokenizer();
  CHECK(tok.info().type == "sentencepiece");
  CHECK(tok.info().vocab_size == 400);
  CHECK(tok.info().eos_id == 2);
  CHECK(tok.info().bos_id == 1);
  CHECK(tok.info().unk_id == 0);
  CHECK(tok.info().sha256 == sha256_hex(tok.model_bytes()));
  const std::vector<std::string> texts = {
      generated_text(1, 50),
      "  leading spaces, trailing spaces   \n\n\ttabs\tand\r\nCRLF\n",
      "unseen characters: \xe2\x82\xac \xf0\x9f\x98\x80 \xd0\x96 \x01 control",  // byte fallback
      "x",
      std::string(10000, 'a') + "\n" + generated_text(2, 400),  // several encode chunks
  };
  for (const auto& t : texts) {
    const auto ids = tok.encode(t);
    REQUIRE(!ids.empty());
    for (int32_t id : ids) CHECK((id >= 0 && id < 400));
    CHECK(tok.decode(ids) == t);
  }
  CHECK(tok.encode("").empty());
  CHECK(tok.decode(std::vector<int32_t>{}).empty());
  CHECK(contains(error_of([&] { tok.decode(std::vector<int32_t>{5, 400}); }), "outside the vocabulary"));
}

TEST_CASE("parallel encoding equals sequential encoding", "[data]") {
  const Tokenizer& tok = tiny_tokenizer();
  std::vector<std::string> texts;
  for (uint64_t i = 0; i < 40; ++i) texts.push_back(generated_text(50 + i, 5 + i * 7));
  texts.push_back("");
  std::vector<std::string_view> views(texts.begin(), texts.end());
  const auto par = encode_parallel(tok, views, 4);
  REQUIRE(par.size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) CHECK(par[i] == tok.encode(texts[i]));
}

TEST_CASE("tokenizer training is deterministic; external tokenizers only describe ids", "[data]") {
  std::vector<std::string> sentences;
  for (uint64_t i = 0; i < 100; ++i) sentences.push_back(generated_text(7000 + i, 10));
  TokenizerSpec spec;
  spec.vocab_size = 320;
  spec.type = "unigram";
  const std::string a = train_sentencepiece(sentences, spec, 2, 3);
  const std::string b = train_sentencepiece(sentences, spec, 2, 3);
  CHECK(a == b);
  const Tokenizer u = Tokenizer::from_model_bytes(a, "unigram");
  const std::string t = generated_text(9, 30);
  CHECK(u.decode(u.encode(t)) == t);

  spec.vocab_size = 100000;
  CHECK(contains(error_of([&] { train_sentencepiece(sentences, spec, 2, 3); }), "vocab_size"));
  CHECK(contains(error_of([&] { train_sentencepiece({}, spec, 2, 3); }), "no text"));
  CHECK(contains(error_of([&] { Tokenizer::from_model_bytes("not a model", "bad.model"); }), "bad.model"));

  const Tokenizer ext = Tokenizer::external(50280, 0, -1, "");
  CHECK(!ext.can_encode());
  CHECK(ext.info().vocab_size == 50280);
  CHECK(ext.info().sha256.size() == 64);
  CHECK(contains(error_of([&] { ext.encode("x"); }), "cannot encode"));
}
