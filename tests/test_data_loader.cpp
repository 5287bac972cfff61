// The streaming loader: window contents, determinism, resume, rank partition, validation
// iterator, prefetch, and the dataset checks (missing shard, tokenizer mismatch, corruption).
#include <filesystem>
#include <set>

#include "tests/catch_compat.h"
#include "tests/test_data_util.h"

#include "distill/data/loader.h"
#include "distill/data/prepare.h"
#include "distill/data/sha256.h"

using namespace dfssm;
using namespace dfssm::data;
using dfssm::test::contains;
using dfssm::test::error_of;
using dfssm::test::TempDir;
using dfssm::test::write_bytes;
namespace fs = std::filesystem;

namespace {

// A pre-tokenized dataset (~120k ids, several shards per split) prepared once per test case.
struct Fixture {
  TempDir dir{"loader"};
  std::string out = dir / "ds";
  Manifest manifest;
  Fixture() {
    std::vector<uint16_t> stream;
    Rng rng(17);
    for (int d = 0; d < 300; ++d) {
      for (uint64_t k = 0, n = 50 + rng.below(700); k < n; ++k) stream.push_back(uint16_t(1 + rng.below(999)));
      stream.push_back(0);
    }
    write_bytes(dir / "tokens.bin", std::string(reinterpret_cast<const char*>(stream.data()), stream.size() * 2));
    DataConfig c;
    c.output = out;
    SourceSpec s;
    s.path = dir / "tokens.bin";
    s.dtype = "uint16";
    c.sources.push_back(s);
    c.tokenizer.type = "none";
    c.tokenizer.vocab_size = 1000;
    c.tokenizer.eos_id = 0;
    c.val_fraction = 0.2;
    c.shard_tokens = 20000;
    c.chunk_tokens = 512;
    manifest = prepare_data(c);
  }
  // The whole token stream of a split, read directly from its shards.
  std::vector<int32_t> stream(const std::string& split) const {
    std::vector<int32_t> all;
    for (const auto& r : open_split(out, manifest, split)) {
      std::vector<int32_t> part(size_t(r->meta().token_count));
      r->read(0, r->meta().token_count, part.data());
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  }
  LoaderOptions options(int64_t seq_len = 64, int64_t batch = 4, uint64_t seed = 1) const {
    LoaderOptions o;
    o.dir = out;
    o.seq_len = seq_len;
    o.batch_size = batch;
    o.seed = seed;
    return o;
  }
};

std::vector<Batch> take(TokenLoader& l, int n) {
  std::vector<Batch> v;
  for (int i = 0; i < n; ++i) {
    Batch b;
    REQUIRE(l.next(&b));
    v.push_back(std::move(b));
  }
  return v;
}

bool same(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].tokens != b[i].tokens || a[i].windows != b[i].windows || a[i].epoch != b[i].epoch ||
        a[i].step != b[i].step)
      return false;
  return true;
}

}  // namespace

TEST_CASE("loader: windows are seq_len+1 slices of the split's token stream", "[data]") {
  Fixture f;
  REQUIRE(f.manifest.splits.at("train").shards.size() >= 3);
  const auto stream = f.stream("train");
  TokenLoader l(f.options(64, 4));
  CHECK(l.split_tokens() == int64_t(stream.size()));
  CHECK(l.num_windows() == (int64_t(stream.size()) - 1) / 64);
  CHECK(l.steps_per_epoch() == l.num_windows() / 4);
  const auto batches = take(l, int(l.steps_per_epoch()) + 3);
  std::set<int64_t> seen;
  for (const auto& b : batches) {
    REQUIRE(b.rows == 4);
    REQUIRE(b.cols == 65);
    REQUIRE(b.tokens.size() == 4 * 65);
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t w = b.windows[size_t(r)];
      CHECK(std::equal(b.row(r), b.row(r) + 65, stream.begin() + w * 64));
      if (b.epoch == 0) CHECK(seen.insert(w).second);  // no window twice in an epoch
    }
  }
  CHECK(int64_t(seen.size()) == l.steps_per_epoch() * 4);
  CHECK(batches.back().epoch == 1);  // rolled over into the next epoch
}

TEST_CASE("loader: the same seed gives the same batches, a different seed different ones", "[data]") {
  Fixture f;
  TokenLoader a(f.options(32, 8, 123)), b(f.options(32, 8, 123)), c(f.options(32, 8, 124));
  const int n = int(a.steps_per_epoch()) + 5;  // across an epoch boundary
  const auto ba = take(a, n), bb = take(b, n), bc = take(c, n);
  CHECK(same(ba, bb));
  CHECK(!same(ba, bc));
  // Epochs are shuffled differently.
  CHECK(ba[0].windows != ba[size_t(a.steps_per_epoch())].windows);
  // Prefetch does not change what is produced.
  LoaderOptions o = f.options(32, 8, 123);
  o.prefetch = 0;
  TokenLoader sync(o);
  CHECK(same(take(sync, n), ba));
}

TEST_CASE("loader: resuming from a saved cursor gives exactly the batches that would have come next", "[data]") {
  Fixture f;
  for (int prefetch : {0, 3}) {
    INFO("prefetch " << prefetch);
    LoaderOptions o = f.options(48, 4, 9);
    o.prefetch = prefetch;
    TokenLoader full(o);
    const int k = int(full.steps_per_epoch()) - 2, more = 6;  // the resume crosses an epoch boundary
    const auto reference = take(full, k + more);

    std::vector<uint8_t> saved;
    {
      TokenLoader first(o);
      take(first, k);  // its prefetch thread is ahead; the cursor is not
      saved = first.cursor().to_bytes();
    }
    const Cursor c = Cursor::from_bytes(saved);
    CHECK(c.step == k);
    CHECK(c.epoch == 0);
    CHECK(Cursor::from_json(c.to_json()).to_json() == c.to_json());
    TokenLoader resumed(o);
    resumed.restore(c);
    const auto next = take(resumed, more);
    CHECK(same(next, std::vector<Batch>(reference.begin() + k, reference.end())));

    // A cursor from a different run setting is refused with the reason.
    LoaderOptions other = o;
    other.seq_len = 40;
    TokenLoader l2(other);
    CHECK(contains(error_of([&] { l2.restore(c); }), "seq_len"));
    other = o;
    other.seed = 10;
    TokenLoader l3(other);
    CHECK(contains(error_of([&] { l3.restore(c); }), "seed"));
  }
  CHECK(contains(error_of([&] { Cursor::from_json("{\"x\":1}"); }), "not a data-loader cursor"));
}

TEST_CASE("loader: ranks see disjoint windows that together cover the epoch", "[data]") {
  Fixture f;
  const int W = 3;
  const int64_t B = 5;
  std::vector<std::set<int64_t>> per_rank(W);
  int64_t nwin = 0, spe = 0;
  for (int r = 0; r < W; ++r) {
    LoaderOptions o = f.options(40, B, 77);
    o.rank = r;
    o.world_size = W;
    TokenLoader l(o);
    nwin = l.num_windows();
    spe = l.steps_per_epoch();
    CHECK(spe == nwin / (W * B));
    for (const auto& b : take(l, int(spe)))
      for (int64_t w : b.windows) CHECK(per_rank[size_t(r)].insert(w).second);
  }
  std::set<int64_t> all;
  for (const auto& s : per_rank) {
    CHECK(int64_t(s.size()) == spe * B);
    for (int64_t w : s) CHECK(all.insert(w).second);  // disjoint
  }
  CHECK(int64_t(all.size()) == spe * W * B);
  CHECK(nwin - int64_t(all.size()) < W * B);  // only the remainder of the epoch is left out
  // The global batch does not depend on how it is split across ranks.
  LoaderOptions one = f.options(40, B * W, 77);
  TokenLoader l(one);
  Batch b;
  REQUIRE(l.next(&b));
  std::vector<int64_t> ranks_step0;
  for (int r = 0; r < W; ++r) {
    LoaderOptions o = f.options(40, B, 77);
    o.rank = r;
    o.world_size = W;
    TokenLoader lr(o);
    Batch br;
    REQUIRE(lr.next(&br));
    ranks_step0.insert(ranks_step0.end(), br.windows.begin(), br.windows.end());
  }
  CHECK(ranks_step0 == b.windows);

  // Without drop_last (the validation iterator) the ranks cover every window exactly once.
  std::set<int64_t> val_all;
  int64_t val_windows = 0;
  for (int r = 0; r < W; ++r) {
    LoaderOptions o = f.options(40, B, 77);
    o.rank = r;
    o.world_size = W;
    TokenLoader v(validation_options(o));
    val_windows = v.num_windows();
    Batch vb;
    while (v.next(&vb))
      for (int64_t w : vb.windows) CHECK(val_all.insert(w).second);
  }
  CHECK(int64_t(val_all.size()) == val_windows);
  CHECK(*val_all.rbegin() == val_windows - 1);
}

TEST_CASE("loader: the validation iterator is one ordered pass and can be reset", "[data]") {
  Fixture f;
  const auto stream = f.stream("val");
  TokenLoader v(validation_options(f.options(50, 7)));
  std::vector<int64_t> order;
  Batch b;
  while (v.next(&b)) {
    for (int64_t r = 0; r < b.rows; ++r) {
      order.push_back(b.windows[size_t(r)]);
      CHECK(std::equal(b.row(r), b.row(r) + 51, stream.begin() + b.windows[size_t(r)] * 50));
    }
  }
  CHECK(int64_t(order.size()) == v.num_windows());
  for (size_t i = 0; i < order.size(); ++i) CHECK(order[i] == int64_t(i));
  CHECK(!v.next(&b));  // stays exhausted
  v.reset();
  REQUIRE(v.next(&b));
  CHECK(b.windows[0] == 0);
}

TEST_CASE("loader: bad datasets and mismatched runs give clear errors", "[data]") {
  Fixture f;
  SECTION("a manifest listing a missing shard") {
    fs::remove(f.out + "/train-00001.h5");
    const std::string e = error_of([&] { TokenLoader l(f.options()); });
    INFO(e);
    CHECK(contains(e, "train-00001.h5"));
    CHECK(contains(e, "does not exist"));
  }
  SECTION("a manifest listing a missing validation shard: the validation iterator names it") {
    fs::remove(f.out + "/val-00000.h5");
    TokenLoader train(f.options());  // the train split is complete
    const std::string e = error_of([&] { TokenLoader l(validation_options(f.options())); });
    INFO(e);
    CHECK(contains(e, "val-00000.h5"));
    CHECK(contains(e, "does not exist"));
  }
  SECTION("a shard replaced by one of the same size: only the SHA-256 check (inspect --verify) sees it") {
    const std::string p = f.out + "/train-00001.h5";
    std::string bytes = dfssm::data::read_file(p);
    bytes[bytes.size() / 2] = char(bytes[bytes.size() / 2] ^ 1);
    write_bytes(p, bytes);
    const std::string e = error_of([&] { open_split(f.out, f.manifest, "train", /*verify_sha256=*/true); });
    INFO(e);
    CHECK(contains(e, "train-00001.h5"));
    CHECK(contains(e, "differs from manifest.json's"));
  }
  SECTION("no manifest (an incomplete preparation)") {
    fs::remove(f.out + "/manifest.json");
    CHECK(contains(error_of([&] { TokenLoader l(f.options()); }), "manifest.json does not exist"));
  }
  SECTION("the run's tokenizer differs from the dataset's") {
    LoaderOptions o = f.options();
    o.tokenizer_sha256 = sha256_hex("another tokenizer");
    const std::string e = error_of([&] { TokenLoader l(o); });
    INFO(e);
    CHECK(contains(e, "tokenizer mismatch"));
    CHECK(contains(e, f.manifest.tokenizer_sha256));
    o.tokenizer_sha256 = f.manifest.tokenizer_sha256;
    TokenLoader ok(o);  // the matching hash is accepted
    const std::string model = dfssm::test::write_tiny_model(f.dir / "tiny.model");
    o.tokenizer_sha256.clear();
    o.tokenizer_model = model;
    CHECK(contains(error_of([&] { TokenLoader l(o); }), "tokenizer mismatch"));
  }
  SECTION("shards whose tokenizer hash differs from the manifest's") {
    auto j = nlohmann::json::parse(dfssm::data::read_file(f.out + "/manifest.json"));
    j["tokenizer"]["sha256"] = sha256_hex("edited");
    write_bytes(f.out + "/manifest.json", j.dump());
    const std::string e = error_of([&] { TokenLoader l(f.options()); });
    INFO(e);
    CHECK(contains(e, "tokenizer SHA-256"));
    CHECK(contains(e, "another preparation"));
  }
  SECTION("a truncated shard") {
    const std::string p = f.out + "/train-00000.h5";
    const std::string bytes = dfssm::data::read_file(p);
    write_bytes(p, bytes.substr(0, bytes.size() - 100));
    const std::string e = error_of([&] { TokenLoader l(f.options()); });
    INFO(e);
    CHECK(contains(e, "train-00000.h5"));
    CHECK(contains(e, "truncated"));
  }
  SECTION("a corrupt shard: the error surfaces from the prefetch thread at next()") {
    const std::string p = f.out + "/train-00000.h5";
    std::string bytes = dfssm::data::read_file(p);
    for (size_t k = bytes.size() / 4; k < bytes.size() * 3 / 4; k += 97) bytes[k] = char(bytes[k] ^ 0x33);
    write_bytes(p, bytes);  // same size: only the checksums can tell
    std::string e;
    try {
      TokenLoader l(f.options(64, 4));
      Batch b;
      for (int i = 0; i < 200; ++i) l.next(&b);
    } catch (const Error& ex) {
      e = ex.what();
    }
    INFO(e);
    CHECK(contains(e, "train-00000.h5"));
    CHECK(contains(e, "corrupt"));
  }
  SECTION("options that cannot work") {
    LoaderOptions o = f.options();
    o.rank = 2;
    o.world_size = 2;
    CHECK(contains(error_of([&] { TokenLoader l(o); }), "rank 2"));
    o = f.options(1 << 20);
    CHECK(contains(error_of([&] { TokenLoader l(o); }), "fewer than one window"));
    o = f.options(64, 100000);
    CHECK(contains(error_of([&] { TokenLoader l(o); }), "fewer than one global batch"));
    o = f.options();
    o.split = "test";
    CHECK(contains(error_of([&] { TokenLoader l(o); }), "no split 'test'"));
  }
}
