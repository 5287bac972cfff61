// HDF5 shards: exact round trip, atomic writes, and corrupt/truncated/foreign files.
#include <filesystem>

#include "tests/catch_compat.h"
#include "tests/test_data_util.h"

#include "distill/data/shard.h"

using namespace dfssm;
using namespace dfssm::data;
using dfssm::test::contains;
using dfssm::test::error_of;
using dfssm::test::read_bytes;
using dfssm::test::TempDir;
using dfssm::test::write_bytes;
namespace fs = std::filesystem;

namespace {

// Writes `docs` (each followed by eos) to a shard and returns the full id stream.
std::vector<int32_t> write_shard(const std::string& path, int64_t vocab, const std::vector<std::vector<int32_t>>& docs,
                                 ShardWriteOptions o = {}) {
  ShardMeta meta;
  meta.split = "train";
  meta.vocab_size = vocab;
  meta.dtype = dtype_for_vocab(vocab);
  meta.tokenizer_sha256 = "abc123";
  meta.eos_id = 0;
  meta.bos_id = -1;
  ShardWriter w(path, meta, o);
  std::vector<int32_t> all;
  for (const auto& d : docs) {
    w.append(d.data(), d.size());
    const int32_t eos = 0;
    w.append(&eos, 1);
    w.end_document();
    all.insert(all.end(), d.begin(), d.end());
    all.push_back(0);
  }
  w.finish("[{\"source\":0}]");
  return all;
}

std::vector<std::vector<int32_t>> random_docs(uint64_t seed, int64_t vocab, size_t ndocs, size_t max_len) {
  Rng rng(seed);
  std::vector<std::vector<int32_t>> docs(ndocs);
  for (auto& d : docs) {
    d.resize(rng.below(max_len));
    for (auto& t : d) t = int32_t(1 + rng.below(uint64_t(vocab - 1)));
  }
  return docs;
}

}  // namespace

TEST_CASE("shard write -> read round trip is exact (uint16 and uint32)", "[data]") {
  TempDir dir("shard_rt");
  for (int64_t vocab : {int64_t(300), int64_t(65536), int64_t(70000)}) {
    INFO("vocab " << vocab);
    ShardWriteOptions o;
    o.chunk_tokens = 1000;  // many chunks, windows straddle them
    const auto docs = random_docs(uint64_t(vocab), vocab, 400, 9000);  // ~1.8M ids: several flushes
    const std::string path = dir / ("s" + std::to_string(vocab) + ".h5");
    const auto all = write_shard(path, vocab, docs, o);
    CHECK(!fs::exists(path + ".tmp"));
    const auto r = ShardReader::open(path);
    CHECK(r->meta().vocab_size == vocab);
    CHECK(r->meta().dtype == (vocab <= 65536 ? TokenDType::U16 : TokenDType::U32));
    CHECK(r->meta().token_count == int64_t(all.size()));
    CHECK(r->meta().doc_count == 400);
    CHECK(r->meta().tokenizer_sha256 == "abc123");
    CHECK(r->meta().eos_id == 0);
    CHECK(r->meta().bos_id == -1);
    CHECK(r->meta().split == "train");
    CHECK(r->meta().sources_json == "[{\"source\":0}]");
    std::vector<int32_t> back(all.size());
    r->read(0, int64_t(all.size()), back.data());
    CHECK(back == all);
    // Arbitrary sub-ranges.
    Rng rng(1);
    for (int k = 0; k < 50; ++k) {
      const int64_t b = int64_t(rng.below(all.size() - 3000)), n = int64_t(1 + rng.below(3000));
      std::vector<int32_t> part(static_cast<size_t>(n));
      r->read(b, n, part.data());
      CHECK(std::equal(part.begin(), part.end(), all.begin() + b));
    }
    const auto off = r->doc_offsets();
    REQUIRE(off.size() == 401);
    size_t pos = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
      CHECK(off[d] == pos);
      pos += docs[d].size() + 1;
    }
    CHECK(off.back() == all.size());
    CHECK(contains(error_of([&] { r->read(int64_t(all.size()) - 1, 2, back.data()); }), "outside the shard"));
  }
  // Compression without checksum round-trips too.
  ShardWriteOptions z;
  z.compression = 4;
  z.checksum = false;
  const auto docs = random_docs(5, 1000, 50, 500);
  const auto all = write_shard(dir / "z.h5", 1000, docs, z);
  std::vector<int32_t> back(all.size());
  ShardReader::open(dir / "z.h5")->read(0, int64_t(all.size()), back.data());
  CHECK(back == all);
}

TEST_CASE("a shard is written under a temp name and never left half-written", "[data]") {
  TempDir dir("shard_atomic");
  const std::string path = dir / "train-00000.h5";
  {
    ShardMeta meta;
    meta.split = "train";
    meta.vocab_size = 100;
    ShardWriter w(path, meta, {});
    const std::vector<int32_t> ids(5000, 7);
    w.append(ids.data(), ids.size());
    CHECK(fs::exists(path + ".tmp"));
    CHECK(!fs::exists(path));
    // destroyed without finish(): an aborted run
  }
  CHECK(!fs::exists(path));
  CHECK(!fs::exists(path + ".tmp"));
  CHECK(fs::is_empty(dir.str()));

  // A temp file left by a killed process is replaced; finish() renames the temp file to the
  // final name, so the final name only ever holds a complete shard.
  write_bytes(path + ".tmp", "stale bytes of a crashed run");
  {
    ShardMeta meta;
    meta.split = "train";
    meta.vocab_size = 100;
    ShardWriter w(path, meta, {});
    const std::vector<int32_t> ids(5000, 7);
    w.append(ids.data(), ids.size());
    w.end_document();
    CHECK(!fs::exists(path));
    w.finish("[]");
    CHECK(fs::exists(path));
    CHECK(!fs::exists(path + ".tmp"));
  }
  CHECK(fs::exists(path));  // the destructor of a finished writer leaves the shard alone
  const auto r = ShardReader::open(path);
  CHECK(r->meta().token_count == 5000);
  CHECK(r->meta().doc_count == 1);
}

TEST_CASE("corrupt, truncated and foreign shard files give clear errors", "[data]") {
  TempDir dir("shard_bad");
  const auto docs = random_docs(11, 300, 200, 2000);
  const std::string good = dir / "good.h5";
  const auto all = write_shard(good, 300, docs);
  const std::string bytes = read_bytes(good);

  SECTION("missing") {
    CHECK(contains(error_of([&] { ShardReader::open(dir / "nope.h5"); }), "does not exist"));
  }
  SECTION("truncated") {
    write_bytes(dir / "trunc.h5", bytes.substr(0, bytes.size() / 2));
    const std::string e = error_of([&] { ShardReader::open(dir / "trunc.h5"); });
    INFO(e);
    CHECK(contains(e, "trunc.h5"));
    CHECK(contains(e, "truncated or corrupt"));
  }
  SECTION("not HDF5") {
    write_bytes(dir / "junk.h5", std::string(4096, 'j'));
    const std::string e = error_of([&] { ShardReader::open(dir / "junk.h5"); });
    INFO(e);
    CHECK(contains(e, "junk.h5"));
    CHECK(contains(e, "cannot open as HDF5"));
  }
  SECTION("flipped bytes in the token data are caught by the checksum") {
    std::string bad = bytes;
    for (size_t k = bad.size() / 3; k < bad.size() / 3 + 64; ++k) bad[k] = char(bad[k] ^ 0x5A);
    write_bytes(dir / "flip.h5", bad);
    std::string e;
    try {
      const auto r = ShardReader::open(dir / "flip.h5");
      std::vector<int32_t> back(all.size());
      r->read(0, int64_t(all.size()), back.data());
      r->doc_offsets();
    } catch (const Error& ex) {
      e = ex.what();
    }
    INFO(e);
    CHECK(contains(e, "flip.h5"));
    CHECK(contains(e, "corrupt"));
  }
  SECTION("ids >= vocab_size in a shard without checksums are caught on read") {
    // Documents of id 7 only: the token data is a long run of 07 00 that is easy to find.
    ShardWriteOptions o;
    o.checksum = false;
    const std::string path = dir / "nocheck.h5";
    const auto ids = write_shard(path, 300, {std::vector<int32_t>(3000, 7)}, o);
    std::string b = read_bytes(path);
    const std::string run = [] {
      std::string r;
      for (int k = 0; k < 64; ++k) r += std::string("\x07\x00", 2);
      return r;
    }();
    const size_t at = b.find(run);
    REQUIRE(at != std::string::npos);
    b[at + 20] = '\xff';  // id 10 becomes 0x00ff = 255 (< 300: still plausible) ...
    b[at + 21] = '\x01';  // ... 0x01ff = 511: outside the vocabulary
    write_bytes(path, b);
    const auto r = ShardReader::open(path);
    std::vector<int32_t> back(ids.size());
    const std::string e = error_of([&] { r->read(0, int64_t(ids.size()), back.data()); });
    INFO(e);
    CHECK(contains(e, "nocheck.h5"));
    CHECK(contains(e, "id 511"));
    CHECK(contains(e, ">= vocab_size 300"));
    CHECK(contains(e, "corrupt"));
  }
  SECTION("an empty file") {
    write_bytes(dir / "empty.h5", "");
    CHECK(contains(error_of([&] { ShardReader::open(dir / "empty.h5"); }), "cannot open as HDF5"));
  }
}
