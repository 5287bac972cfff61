// `dfssm data prepare` end to end on small generated corpora, and every bad input it rejects.
#include <filesystem>
#include <map>
#include <set>

#include "tests/catch_compat.h"
#include "tests/test_data_util.h"

#include "distill/data/loader.h"
#include "distill/data/prepare.h"
#include "distill/data/sha256.h"
#include "distill/data/shard.h"

using namespace dfssm;
using namespace dfssm::data;
using dfssm::test::contains;
using dfssm::test::error_of;
using dfssm::test::generated_text;
using dfssm::test::TempDir;
using dfssm::test::write_bytes;
namespace fs = std::filesystem;

namespace {

// n text files of varied length under dir/corpus.
std::map<std::string, std::string> make_corpus(const TempDir& dir, int n, uint64_t seed = 1) {
  std::map<std::string, std::string> files;
  for (int i = 0; i < n; ++i) {
    const std::string rel = "corpus/" + std::string(i % 3 == 0 ? "sub/" : "") + "f" + std::to_string(i) + ".txt";
    files[rel] = generated_text(seed * 1000 + uint64_t(i), size_t(5 + (i * 37) % 120));
    write_bytes(dir / rel, files[rel]);
  }
  return files;
}

DataConfig base_config(const TempDir& dir) {
  DataConfig c;
  c.output = dir / "out";
  SourceSpec s;
  s.path = dir / "corpus";
  c.sources.push_back(s);
  c.tokenizer.vocab_size = 400;
  c.tokenizer.character_coverage = 1.0;
  c.val_fraction = 0.1;
  c.num_threads = 2;
  return c;
}

// All documents of a prepared dataset (both splits), as id vectors without their EOS.
std::vector<std::vector<int32_t>> all_docs(const std::string& dir) {
  const Manifest m = read_manifest(dir);
  std::vector<std::vector<int32_t>> docs;
  for (const auto& [name, s] : m.splits) {
    for (const auto& r : open_split(dir, m, name, true)) {
      const auto off = r->doc_offsets();
      for (size_t d = 0; d + 1 < off.size(); ++d) {
        std::vector<int32_t> ids(off[d + 1] - off[d]);
        r->read(int64_t(off[d]), int64_t(ids.size()), ids.data());
        REQUIRE(ids.back() == m.eos_id);
        ids.pop_back();
        docs.push_back(std::move(ids));
      }
    }
  }
  return docs;
}

std::string npy_header(const std::string& descr, size_t n) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + std::to_string(n) + ",), }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string h = "\x93NUMPY";
  h += char(1);
  h += char(0);
  h += char(dict.size() & 0xFF);
  h += char(dict.size() >> 8);
  return h + dict;
}

template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

}  // namespace

TEST_CASE("prepare: text corpus -> trained tokenizer -> shards that decode to the exact files", "[data]") {
  TempDir dir("prep_text");
  const auto files = make_corpus(dir, 60);
  DataConfig c = base_config(dir);
  c.shard_tokens = 3000;  // several shards per split
  std::vector<std::string> infos;
  PrepareLog log;
  log.info = [&](const std::string& s) { infos.push_back(s); };
  const Manifest m = prepare_data(c, log);
  CHECK(!infos.empty());

  CHECK(fs::exists(dir / "out/manifest.json"));
  CHECK(fs::exists(dir / "out/tokenizer.model"));
  CHECK(m.vocab_size == 400);
  CHECK(m.dtype == "uint16");
  CHECK(m.eos_id == 2);
  CHECK(m.bos_id == 1);
  CHECK(m.tokenizer_sha256 == sha256_file(dir / "out/tokenizer.model"));
  const Manifest back = read_manifest(dir / "out");
  CHECK(back.to_json() == m.to_json());
  CHECK(m.splits.at("train").shards.size() > 1);
  CHECK(m.splits.at("val").documents > 0);
  CHECK(m.splits.at("train").documents + m.splits.at("val").documents == 60);
  CHECK(m.sources[0]["documents"] == 60);
  int64_t tokens = 0;
  for (const auto& [name, s] : m.splits) tokens += s.tokens;
  CHECK(m.sources[0]["tokens"].get<int64_t>() == tokens);
  for (const auto& e : fs::directory_iterator(dir / "out")) CHECK(e.path().extension() != ".tmp");

  // Every document decodes back to exactly one of the files.
  const Tokenizer tok = Tokenizer::load(dir / "out/tokenizer.model");
  std::multiset<std::string> want, got;
  for (const auto& [rel, text] : files) want.insert(text);
  for (const auto& d : all_docs(dir / "out")) got.insert(tok.decode(d));
  CHECK(got == want);

  // The same config gives byte-identical shards and tokenizer (deterministic preparation).
  DataConfig c2 = c;
  c2.output = dir / "out2";
  c2.num_threads = 1;
  const Manifest m2 = prepare_data(c2);
  CHECK(m2.tokenizer_sha256 == m.tokenizer_sha256);
  CHECK(m2.splits.at("train").shards.size() == m.splits.at("train").shards.size());
  for (size_t i = 0; i < m.splits.at("train").shards.size(); ++i)
    CHECK(m2.splits.at("train").shards[i].sha256 == m.splits.at("train").shards[i].sha256);

  // An existing dataset is only replaced with overwrite=true.
  CHECK(contains(error_of([&] { prepare_data(c); }), "overwrite=true"));
  c.overwrite = true;
  c.shard_tokens = 1 << 20;
  const Manifest m3 = prepare_data(c);
  CHECK(m3.splits.at("train").shards.size() == 1);
  CHECK(!fs::exists(dir / "out/train-00001.h5"));  // the old shards are gone
}

TEST_CASE("prepare: an existing tokenizer, JSONL sources and BOS", "[data]") {
  TempDir dir("prep_jsonl");
  const std::string model = dfssm::test::write_tiny_model(dir / "tiny.model");
  std::string jsonl;
  std::vector<std::string> texts;
  for (int i = 0; i < 30; ++i) {
    texts.push_back(generated_text(500 + uint64_t(i), 8));
    jsonl += nlohmann::json{{"id", i}, {"content", texts.back()}}.dump() + "\n";
    if (i % 7 == 0) jsonl += "\n";  // blank lines are ignored
  }
  write_bytes(dir / "corpus/a.jsonl", jsonl);
  DataConfig c = base_config(dir);
  c.sources[0].field = "content";
  c.tokenizer.model = model;
  c.add_bos = true;
  c.val_fraction = 0.2;
  const Manifest m = prepare_data(c);
  CHECK(m.tokenizer_sha256 == dfssm::test::tiny_tokenizer().info().sha256);
  CHECK(m.add_bos);
  const auto docs = all_docs(dir / "out");
  REQUIRE(docs.size() == 30);
  std::multiset<std::string> want(texts.begin(), texts.end()), got;
  for (const auto& d : docs) {
    CHECK(d.front() == 1);  // BOS
    got.insert(dfssm::test::tiny_tokenizer().decode(std::vector<int32_t>(d.begin() + 1, d.end())));
  }
  CHECK(got == want);

  SECTION("a JSONL line without the field is an error naming file and line") {
    write_bytes(dir / "corpus/b.jsonl", "{\"content\": \"ok\"}\n{\"text\": \"wrong field\"}\n");
    c.overwrite = true;
    const std::string e = error_of([&] { prepare_data(c); });
    INFO(e);
    CHECK(contains(e, "b.jsonl:2"));
    CHECK(contains(e, "no field 'content'"));
    // ... and nothing is left half-written: no manifest, no shards, no temp files.
    CHECK(!fs::exists(dir / "out/manifest.json"));
    for (const auto& f : fs::directory_iterator(dir / "out")) {
      INFO(f.path());
      CHECK(f.path().extension() != ".h5");
      CHECK(f.path().extension() != ".tmp");
    }
    c.sources[0].on_missing_field = "skip";
    const Manifest ms = prepare_data(c);
    CHECK(ms.sources[0]["skipped"]["missing_field"] == 1);
  }
  SECTION("invalid JSON is an error naming file and line") {
    write_bytes(dir / "corpus/c.jsonl", "{\"content\": \"ok\"}\n{not json\n");
    c.overwrite = true;
    CHECK(contains(error_of([&] { prepare_data(c); }), "c.jsonl:2: invalid JSON"));
  }
  SECTION("a line that is not an object, or whose field is not a string, is an error naming file and line") {
    c.overwrite = true;
    write_bytes(dir / "corpus/d.jsonl", "{\"content\": \"ok\"}\n[\"content\", \"x\"]\n");
    std::string e = error_of([&] { prepare_data(c); });
    INFO(e);
    CHECK(contains(e, "d.jsonl:2: not a JSON object, so no field 'content'"));
    write_bytes(dir / "corpus/d.jsonl", "{\"content\": 42}\n");
    e = error_of([&] { prepare_data(c); });
    CHECK(contains(e, "d.jsonl:1: field 'content' is a number, not a string"));
    CHECK(!fs::exists(dir / "out/manifest.json"));
  }
}

TEST_CASE("prepare: a non-UTF-8 JSONL line is skipped with a warning or fails, as configured", "[data]") {
  TempDir dir("prep_jsonl_utf8");
  std::string jsonl;
  for (int i = 0; i < 12; ++i) jsonl += nlohmann::json{{"text", generated_text(700 + uint64_t(i), 6)}}.dump() + "\n";
  jsonl += "{\"text\": \"caf\xe9\"}\n";  // line 13: Latin-1 inside the JSON string
  write_bytes(dir / "corpus/a.jsonl", jsonl);
  DataConfig c = base_config(dir);
  c.tokenizer.model = dfssm::test::write_tiny_model(dir / "tiny.model");
  c.val_fraction = 0;
  std::vector<std::string> warnings;
  PrepareLog log;
  log.warn = [&](const std::string& s) { warnings.push_back(s); };
  const Manifest m = prepare_data(c, log);
  REQUIRE(warnings.size() == 1);
  CHECK(contains(warnings[0], "a.jsonl:13"));
  CHECK(contains(warnings[0], "not valid UTF-8"));
  CHECK(m.sources[0]["skipped"]["invalid_utf8"] == 1);
  CHECK(m.sources[0]["documents"] == 12);

  c.on_invalid_utf8 = "fail";
  c.output = dir / "out_fail";
  const std::string e = error_of([&] { prepare_data(c); });
  INFO(e);
  CHECK(contains(e, "a.jsonl:13: not valid UTF-8"));
  CHECK(contains(e, "on_invalid_utf8=skip"));
  CHECK(!fs::exists(dir / "out_fail/manifest.json"));
}

TEST_CASE("prepare: non-UTF-8 files are skipped with a warning or fail, as configured", "[data]") {
  TempDir dir("prep_utf8");
  make_corpus(dir, 20);
  write_bytes(dir / "corpus/latin1.txt", "caf\xe9 cr\xe8me\n");
  DataConfig c = base_config(dir);
  c.tokenizer.model = dfssm::test::write_tiny_model(dir / "tiny.model");
  std::vector<std::string> warnings;
  PrepareLog log;
  log.warn = [&](const std::string& s) { warnings.push_back(s); };
  const Manifest m = prepare_data(c, log);
  REQUIRE(warnings.size() == 1);
  CHECK(contains(warnings[0], "latin1.txt"));
  CHECK(contains(warnings[0], "UTF-8"));
  CHECK(m.sources[0]["skipped"]["invalid_utf8"] == 1);
  CHECK(m.sources[0]["documents"] == 20);

  c.on_invalid_utf8 = "fail";
  c.output = dir / "out_fail";
  const std::string e = error_of([&] { prepare_data(c); });
  INFO(e);
  CHECK(contains(e, "latin1.txt"));
  CHECK(contains(e, "not valid UTF-8"));
  CHECK(contains(e, "on_invalid_utf8"));
  CHECK(!fs::exists(dir / "out_fail/manifest.json"));

  // A source's own on_invalid_utf8 wins over the top-level one, both ways.
  c.output = dir / "out_source_skip";
  c.sources[0].on_invalid_utf8 = "skip";
  CHECK(prepare_data(c).sources[0]["skipped"]["invalid_utf8"] == 1);
  c.output = dir / "out_source_fail";
  c.on_invalid_utf8 = "skip";
  c.sources[0].on_invalid_utf8 = "fail";
  CHECK(contains(error_of([&] { prepare_data(c); }), "latin1.txt: not valid UTF-8"));
}

TEST_CASE("prepare: an empty corpus is an error", "[data]") {
  TempDir dir("prep_empty");
  DataConfig c = base_config(dir);
  SECTION("no files match") {
    fs::create_directories(dir / "corpus");
    c.sources[0].path = dir / "corpus/*.txt";
    CHECK(contains(error_of([&] { prepare_data(c); }), "matched no files"));
  }
  SECTION("files without text (training a tokenizer)") {
    write_bytes(dir / "corpus/a.txt", "");
    write_bytes(dir / "corpus/b.txt", "");
    CHECK(contains(error_of([&] { prepare_data(c); }), "the corpus is empty"));
  }
  SECTION("files without text (given tokenizer)") {
    write_bytes(dir / "corpus/a.txt", "");
    write_bytes(dir / "corpus/b.txt", "\xff\xfe");
    c.tokenizer.model = dfssm::test::write_tiny_model(dir / "tiny.model");
    const std::string e = error_of([&] { prepare_data(c); });
    INFO(e);
    CHECK(contains(e, "the corpus is empty"));
    CHECK(contains(e, "1 empty, 1 skipped as not UTF-8"));
    CHECK(!fs::exists(dir / "out/manifest.json"));
    CHECK(!fs::exists(dir / "out/tokenizer.model"));
  }
  SECTION("pre-tokenized files without ids") {
    write_bytes(dir / "corpus/a.bin", "");
    write_bytes(dir / "corpus/b.npy", npy_header("<u2", 0));
    c.sources[0].dtype = "uint16";
    c.tokenizer.type = "none";
    c.tokenizer.vocab_size = 1000;
    c.tokenizer.eos_id = 0;
    const std::string e = error_of([&] { prepare_data(c); });
    INFO(e);
    CHECK(contains(e, "the corpus is empty"));
    CHECK(contains(e, "2 empty"));
    CHECK(!fs::exists(dir / "out/manifest.json"));
  }
  SECTION("a source path that does not exist") {
    c.sources[0].path = dir / "nowhere";
    CHECK(contains(error_of([&] { prepare_data(c); }), "does not exist"));
  }
}

TEST_CASE("prepare: pre-tokenized .bin and .npy are kept exactly; ids >= vocab are rejected", "[data]") {
  TempDir dir("prep_tokens");
  // A stream of documents separated by EOS=0, the last one without a trailing EOS.
  std::vector<uint16_t> stream;
  Rng rng(3);
  for (int d = 0; d < 40; ++d) {
    for (uint64_t k = 0, n = rng.below(300); k < n; ++k) stream.push_back(uint16_t(1 + rng.below(999)));
    if (d != 39) stream.push_back(0);
  }
  write_bytes(dir / "tok/a.bin", raw(stream));
  std::vector<int64_t> npy_ids = {5, 6, 0, 7, 0, 0, 8};  // includes an empty document
  write_bytes(dir / "tok/b.npy", npy_header("<i8", npy_ids.size()) + raw(npy_ids));

  DataConfig c;
  c.output = dir / "out";
  SourceSpec s;
  s.path = dir / "tok/*";
  s.dtype = "uint16";
  c.sources.push_back(s);
  c.tokenizer.type = "none";
  c.tokenizer.vocab_size = 1000;
  c.tokenizer.eos_id = 0;
  c.val_fraction = 0;
  const Manifest m = prepare_data(c);
  CHECK(m.tokenizer_type == "external");
  CHECK(m.splits.at("val").documents == 0);
  CHECK(m.splits.at("train").documents == 40 + 4);

  std::vector<int32_t> want(stream.begin(), stream.end());
  want.push_back(0);  // the writer ends the last document with EOS
  for (int64_t v : npy_ids) want.push_back(int32_t(v));
  want.push_back(0);
  const auto readers = open_split(dir / "out", m, "train");
  std::vector<int32_t> got;
  for (const auto& r : readers) {
    std::vector<int32_t> part(size_t(r->meta().token_count));
    r->read(0, r->meta().token_count, part.data());
    got.insert(got.end(), part.begin(), part.end());
  }
  CHECK(got == want);

  SECTION("token ids >= vocab") {
    c.overwrite = true;
    c.tokenizer.vocab_size = 500;
    const std::string e = error_of([&] { prepare_data(c); });
    INFO(e);
    CHECK(contains(e, "a.bin"));
    CHECK(contains(e, "outside the vocabulary"));
    CHECK(!fs::exists(dir / "out/manifest.json"));
  }
  SECTION("token ids >= vocab in a .npy, negative ids, and uint32 .bin files") {
    c.overwrite = true;
    c.sources[0].path = dir / "tok2/*";
    write_bytes(dir / "tok2/big.npy", npy_header("<i8", 3) + raw(std::vector<int64_t>{5, 1000, 0}));
    std::string e = error_of([&] { prepare_data(c); });
    INFO(e);
    CHECK(contains(e, "big.npy: token id 1000 at index 1 is outside the vocabulary 0..999"));
    write_bytes(dir / "tok2/big.npy", npy_header("<i4", 3) + raw(std::vector<int32_t>{5, -1, 0}));
    e = error_of([&] { prepare_data(c); });
    CHECK(contains(e, "big.npy: token id -1 at index 1 is outside the vocabulary"));
    fs::remove(dir / "tok2/big.npy");
    // 70000 fits uint32 but not this vocabulary; read as uint16 the same bytes would pass silently,
    // which is why raw .bin files need an explicit dtype.
    write_bytes(dir / "tok2/wide.bin", raw(std::vector<uint32_t>{1, 2, 70000, 0}));
    c.sources[0].dtype = "uint32";
    e = error_of([&] { prepare_data(c); });
    CHECK(contains(e, "wide.bin: token id 70000 at index 2 is outside the vocabulary"));
    CHECK(contains(e, "check the source's dtype"));
    CHECK(!fs::exists(dir / "out/manifest.json"));
  }
  SECTION("a truncated .npy and a .bin without a dtype") {
    c.overwrite = true;
    c.sources[0].path = dir / "tok2/*";
    write_bytes(dir / "tok2/t.npy", npy_header("<u2", 100) + raw(std::vector<uint16_t>(10, 3)));
    std::string e = error_of([&] { prepare_data(c); });
    INFO(e);
    CHECK(contains(e, "t.npy: truncated .npy"));
    fs::remove(dir / "tok2/t.npy");
    write_bytes(dir / "tok2/u.bin", raw(std::vector<uint16_t>{1, 2, 0}));
    c.sources[0].dtype = "";
    CHECK(contains(error_of([&] { prepare_data(c); }), "u.bin: raw token files need the source's dtype"));
  }
  SECTION("a .bin whose size does not fit the dtype") {
    write_bytes(dir / "tok/c.bin", "abc");
    c.overwrite = true;
    CHECK(contains(error_of([&] { prepare_data(c); }), "not a multiple of 2"));
  }
  SECTION("text sources need a real tokenizer") {
    write_bytes(dir / "tok/d.txt", "hello");
    c.overwrite = true;
    CHECK(contains(error_of([&] { prepare_data(c); }), "tokenizer.type=none"));
  }
}

TEST_CASE("prepare: an empty validation split is an error unless val_fraction=0", "[data]") {
  TempDir dir("prep_val");
  make_corpus(dir, 3);
  DataConfig c = base_config(dir);
  c.tokenizer.model = dfssm::test::write_tiny_model(dir / "tiny.model");
  c.val_fraction = 0.001;
  CHECK(contains(error_of([&] { prepare_data(c); }), "validation split is empty"));
  c.val_fraction = 0;
  CHECK(prepare_data(c).splits.at("train").documents == 3);
}

TEST_CASE("prepare: temp files of a crashed run are cleared by overwrite=true; none is left behind", "[data]") {
  TempDir dir("prep_stale");
  make_corpus(dir, 12);
  DataConfig c = base_config(dir);
  c.tokenizer.model = dfssm::test::write_tiny_model(dir / "tiny.model");
  // What a killed run leaves: shards still under their temp names, no manifest.json.
  write_bytes(dir / "out/train-00000.h5.tmp", "half a shard");
  write_bytes(dir / "out/val-00003.h5.tmp", "half a shard");
  write_bytes(dir / "out/manifest.json.tmp", "{");
  write_bytes(dir / "out/notes.txt", "not ours");
  CHECK(contains(error_of([&] { prepare_data(c); }), "overwrite=true"));
  c.overwrite = true;
  const Manifest m = prepare_data(c);
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir / "out")) names.insert(e.path().filename().string());
  std::set<std::string> want = {"manifest.json", "tokenizer.model", "notes.txt"};  // other files are kept
  for (const auto& [split, s] : m.splits)
    for (const auto& e : s.shards) want.insert(e.file);
  CHECK(names == want);
}
