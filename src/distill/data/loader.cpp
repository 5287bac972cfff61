#include "distill/data/loader.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "distill/data/sha256.h"
#include "distill/data/util.h"

namespace fs = std::filesystem;

namespace dfssm::data {
namespace {

constexpr uint64_t kEpochSalt = 0xE90C5A17ull;

std::string data_id_of(const Manifest& m, const std::string& split, const std::string& dir) {
  Sha256 h;
  h.update(split);
  h.update(m.tokenizer_sha256);
  for (const auto& e : m.split(split, dir).shards) h.update(str("|", e.file, ":", e.tokens, ":", e.sha256));
  return h.hex_digest().substr(0, 16);
}

}  // namespace

LoaderOptions validation_options(const LoaderOptions& train) {
  LoaderOptions v = train;
  v.split = "val";
  v.shuffle = false;
  v.epochs = 1;
  v.drop_last = false;
  return v;
}

// ---- Cursor --------------------------------------------------------------------------------------

std::string Cursor::to_json() const {
  return nlohmann::json{{"dfssm_cursor", version},
                        {"split", split},
                        {"epoch", epoch},
                        {"step", step},
                        {"seed", seed},
                        {"seq_len", seq_len},
                        {"global_batch", global_batch},
                        {"num_windows", num_windows},
                        {"data_id", data_id}}
      .dump();
}

Cursor Cursor::from_json(const std::string& s) {
  Cursor c;
  try {
    const auto j = nlohmann::json::parse(s);
    c.version = j.at("dfssm_cursor").get<int>();
    c.split = j.at("split").get<std::string>();
    c.epoch = j.at("epoch").get<int64_t>();
    c.step = j.at("step").get<int64_t>();
    c.seed = j.at("seed").get<uint64_t>();
    c.seq_len = j.at("seq_len").get<int64_t>();
    c.global_batch = j.at("global_batch").get<int64_t>();
    c.num_windows = j.at("num_windows").get<int64_t>();
    c.data_id = j.at("data_id").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(str("not a data-loader cursor (", e.what(), "); the checkpoint's loader state is damaged"));
  }
  DFSSM_CHECK(c.version == 1, "data-loader cursor version ", c.version, " is not supported by this dfssm");
  DFSSM_CHECK(c.epoch >= 0 && c.step >= 0, "data-loader cursor has a negative position");
  return c;
}

std::vector<uint8_t> Cursor::to_bytes() const {
  const std::string s = to_json();
  return std::vector<uint8_t>(s.begin(), s.end());
}

Cursor Cursor::from_bytes(const std::vector<uint8_t>& b) { return from_json(std::string(b.begin(), b.end())); }

// ---- Opening a split -----------------------------------------------------------------------------

std::vector<std::unique_ptr<ShardReader>> open_split(const std::string& dir, const Manifest& m,
                                                     const std::string& split, bool verify_sha256) {
  const SplitEntry& se = m.split(split, dir);
  std::vector<std::unique_ptr<ShardReader>> out;
  for (const auto& e : se.shards) {
    const std::string path = (fs::path(dir) / e.file).string();
    std::error_code ec;
    DFSSM_CHECK(fs::is_regular_file(path, ec), dir, "/manifest.json lists shard '", e.file, "' but ", path,
                " does not exist; the dataset is incomplete - re-run dfssm data prepare");
    const uint64_t size = fs::file_size(path, ec);
    DFSSM_CHECK(!ec && size == e.bytes, path, ": the file has ", size, " bytes but manifest.json says ", e.bytes,
                " - the shard is truncated or was replaced; re-run dfssm data prepare");
    if (verify_sha256 && !e.sha256.empty()) {
      const std::string h = sha256_file(path);
      DFSSM_CHECK(h == e.sha256, path, ": SHA-256 ", h, " differs from manifest.json's ", e.sha256,
                  " - the shard is corrupt; re-run dfssm data prepare");
    }
    auto r = ShardReader::open(path);
    const ShardMeta& sm = r->meta();
    DFSSM_CHECK(sm.tokenizer_sha256 == m.tokenizer_sha256, path, ": tokenizer SHA-256 ", sm.tokenizer_sha256,
                " differs from manifest.json's ", m.tokenizer_sha256,
                " - the shard comes from another preparation; re-run dfssm data prepare");
    DFSSM_CHECK(sm.vocab_size == m.vocab_size && std::string(dtype_name(sm.dtype)) == m.dtype, path,
                ": vocab_size/dtype (", sm.vocab_size, ", ", dtype_name(sm.dtype), ") differ from manifest.json's (",
                m.vocab_size, ", ", m.dtype, ") - re-run dfssm data prepare");
    DFSSM_CHECK(sm.token_count == e.tokens && sm.doc_count == e.documents && sm.split == split, path, ": holds ",
                sm.token_count, " tokens / ", sm.doc_count, " documents of split '", sm.split,
                "' but manifest.json says ", e.tokens, " / ", e.documents, " of '", split,
                "' - re-run dfssm data prepare");
    out.push_back(std::move(r));
  }
  return out;
}

// ---- Loader --------------------------------------------------------------------------------------

struct TokenLoader::Impl {
  LoaderOptions opts;
  Manifest manifest;
  std::vector<std::unique_ptr<ShardReader>> shards;
  std::vector<int64_t> starts;  // global offset of each shard; starts.back() = total
  int64_t total = 0, nwin = 0, global = 0, spe = 0;
  std::string data_id;

  // Consumer position: the next batch next() returns.
  int64_t epoch = 0, step = 0;
  bool exhausted = false;

  // Permutation cache (used by whichever thread makes batches; never two at once).
  int64_t perm_epoch = -1;
  std::vector<uint32_t> perm;

  // Prefetch.
  struct Slot {
    Batch batch;
    std::exception_ptr error;
    bool end = false;
  };
  std::thread producer;
  std::mutex mu;
  std::condition_variable cv_space, cv_data;
  std::deque<Slot> queue;
  bool stop = false;
  bool running = false;

  void advance(int64_t* e, int64_t* s) const {
    if (++*s >= spe) {
      *s = 0;
      ++*e;
    }
  }

  void read_range(int64_t g, int64_t n, int32_t* out) {
    while (n > 0) {
      const size_t k = size_t(std::upper_bound(starts.begin(), starts.end(), g) - starts.begin()) - 1;
      const int64_t local = g - starts[k];
      const int64_t take = std::min(n, starts[k + 1] - g);
      shards[k]->read(local, take, out);
      g += take;
      n -= take;
      out += take;
    }
  }

  // Builds batch (e, s) of this rank; false if there is none (finite loader done).
  bool make_batch(int64_t e, int64_t s, Batch* b) {
    if (opts.epochs > 0 && e >= opts.epochs) return false;
    if (opts.shuffle && perm_epoch != e) {
      perm = permutation(uint64_t(nwin), hash_combine(hash_combine(opts.seed, kEpochSalt), uint64_t(e)));
      perm_epoch = e;
    }
    const int64_t L = opts.seq_len, cols = L + 1;
    const int64_t first = s * global + int64_t(opts.rank) * opts.batch_size;
    const int64_t rows = std::max<int64_t>(0, std::min(opts.batch_size, nwin - first));
    if (rows == 0) return false;
    b->rows = rows;
    b->cols = cols;
    b->epoch = e;
    b->step = s;
    b->tokens.resize(size_t(rows * cols));
    b->windows.resize(size_t(rows));
    for (int64_t j = 0; j < rows; ++j) {
      const int64_t pos = first + j;
      const int64_t w = opts.shuffle ? int64_t(perm[size_t(pos)]) : pos;
      b->windows[size_t(j)] = w;
      read_range(w * L, cols, b->tokens.data() + j * cols);
    }
    return true;
  }

  void produce(int64_t e, int64_t s) {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv_space.wait(lock, [&] { return stop || int(queue.size()) < opts.prefetch; });
        if (stop) return;
      }
      Slot slot;
      try {
        slot.end = !make_batch(e, s, &slot.batch);
      } catch (...) {
        slot.error = std::current_exception();
      }
      const bool last = slot.end || slot.error;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stop) return;
        queue.push_back(std::move(slot));
      }
      cv_data.notify_one();
      if (last) return;
      advance(&e, &s);
    }
  }

  void start() {
    stop = false;
    running = true;
    const int64_t e = epoch, s = step;
    producer = std::thread([this, e, s] { produce(e, s); });
  }

  void halt() {
    if (!running) return;
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    cv_space.notify_all();
    producer.join();
    running = false;
    queue.clear();
  }
};

TokenLoader::TokenLoader(LoaderOptions o) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  DFSSM_CHECK(o.seq_len >= 1, "loader: seq_len must be >= 1, got ", o.seq_len);
  DFSSM_CHECK(o.batch_size >= 1, "loader: batch_size must be >= 1, got ", o.batch_size);
  DFSSM_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "loader: rank ", o.rank,
              " is not in 0..world_size-1 (world_size ", o.world_size, ")");
  DFSSM_CHECK(o.prefetch >= 0, "loader: prefetch must be >= 0, got ", o.prefetch);
  DFSSM_CHECK(o.epochs >= 0, "loader: epochs must be >= 0 (0 = endless), got ", o.epochs);
  I.opts = std::move(o);
  const LoaderOptions& opts = I.opts;
  I.manifest = read_manifest(opts.dir);
  const Manifest& m = I.manifest;
  auto mismatch = [&](const std::string& theirs, const std::string& what) {
    return str("tokenizer mismatch: ", opts.dir, " was prepared with a tokenizer of SHA-256 ", m.tokenizer_sha256,
               " (manifest.json), but the run config's ", what, " has SHA-256 ", theirs,
               "; prepare the data with that tokenizer (tokenizer.model=...) or point the run at the matching dataset");
  };
  if (!opts.tokenizer_sha256.empty())
    DFSSM_CHECK(opts.tokenizer_sha256 == m.tokenizer_sha256, mismatch(opts.tokenizer_sha256, "tokenizer"));
  if (!opts.tokenizer_model.empty()) {
    const std::string h = sha256_file(opts.tokenizer_model);
    DFSSM_CHECK(h == m.tokenizer_sha256, mismatch(h, str("tokenizer ", opts.tokenizer_model)));
  }
  I.shards = open_split(opts.dir, m, opts.split);
  I.starts.push_back(0);
  for (const auto& s : I.shards) I.starts.push_back(I.starts.back() + s->meta().token_count);
  I.total = I.starts.back();
  DFSSM_CHECK(I.total >= opts.seq_len + 1, opts.dir, ": split '", opts.split, "' has ", I.total,
              " tokens, fewer than one window of seq_len+1 = ", opts.seq_len + 1,
              opts.split == "val" ? "; raise val_fraction when preparing, or lower seq_len" : "; lower seq_len");
  I.nwin = (I.total - 1) / opts.seq_len;
  DFSSM_CHECK(I.nwin <= int64_t(0xFFFFFFFFll), "loader: ", I.nwin, " windows is more than 2^32; raise seq_len");
  I.global = opts.batch_size * opts.world_size;
  if (opts.drop_last) {
    I.spe = I.nwin / I.global;
    DFSSM_CHECK(I.spe >= 1, opts.dir, ": split '", opts.split, "' has ", I.nwin, " windows of seq_len+1 = ",
                opts.seq_len + 1, " tokens, fewer than one global batch (world_size ", opts.world_size,
                " x batch_size ", opts.batch_size, "); lower batch_size or seq_len, or add data");
  } else {
    I.spe = (I.nwin + I.global - 1) / I.global;
  }
  I.data_id = data_id_of(m, opts.split, opts.dir);
}

TokenLoader::~TokenLoader() { impl_->halt(); }

bool TokenLoader::next(Batch* b) {
  Impl& I = *impl_;
  if (I.exhausted) return false;
  if (I.opts.prefetch == 0) {
    if (!I.make_batch(I.epoch, I.step, b)) {
      I.exhausted = true;
      return false;
    }
    I.advance(&I.epoch, &I.step);
    return true;
  }
  if (!I.running) I.start();
  Impl::Slot slot;
  {
    std::unique_lock<std::mutex> lock(I.mu);
    I.cv_data.wait(lock, [&] { return !I.queue.empty(); });
    slot = std::move(I.queue.front());
    I.queue.pop_front();
  }
  I.cv_space.notify_one();
  if (slot.error) {
    I.halt();
    std::rethrow_exception(slot.error);  // the position stays; a retry reads the batch again
  }
  if (slot.end) {
    I.halt();
    I.exhausted = true;
    return false;
  }
  *b = std::move(slot.batch);
  I.advance(&I.epoch, &I.step);
  return true;
}

Cursor TokenLoader::cursor() const {
  const Impl& I = *impl_;
  Cursor c;
  c.split = I.opts.split;
  c.epoch = I.epoch;
  c.step = I.step;
  c.seed = I.opts.seed;
  c.seq_len = I.opts.seq_len;
  c.global_batch = I.global;
  c.num_windows = I.nwin;
  c.data_id = I.data_id;
  return c;
}

void TokenLoader::restore(const Cursor& c) {
  Impl& I = *impl_;
  const std::string what = "cannot resume the data loader from the checkpoint's cursor: ";
  DFSSM_CHECK(c.split == I.opts.split, what, "it is for split '", c.split, "', this loader reads '", I.opts.split, "'");
  DFSSM_CHECK(c.seq_len == I.opts.seq_len, what, "it was saved with seq_len ", c.seq_len, ", the run has ",
              I.opts.seq_len);
  DFSSM_CHECK(c.global_batch == I.global, what, "it was saved with a global batch (world_size x batch_size) of ",
              c.global_batch, ", the run has ", I.global);
  DFSSM_CHECK(c.seed == I.opts.seed, what, "it was saved with data seed ", c.seed, ", the run has ", I.opts.seed);
  DFSSM_CHECK(c.num_windows == I.nwin && c.data_id == I.data_id, what, "it was saved for other data (", c.num_windows,
              " windows, data id ", c.data_id, "); this dataset has ", I.nwin, " windows, data id ", I.data_id);
  DFSSM_CHECK(c.step < I.spe, what, "step ", c.step, " is past the ", I.spe, " steps of an epoch");
  I.halt();
  I.epoch = c.epoch;
  I.step = c.step;
  I.exhausted = false;
}

void TokenLoader::reset() {
  Impl& I = *impl_;
  I.halt();
  I.epoch = 0;
  I.step = 0;
  I.exhausted = false;
}

int64_t TokenLoader::num_windows() const { return impl_->nwin; }
int64_t TokenLoader::steps_per_epoch() const { return impl_->spe; }
int64_t TokenLoader::split_tokens() const { return impl_->total; }
const Manifest& TokenLoader::manifest() const { return impl_->manifest; }
const LoaderOptions& TokenLoader::options() const { return impl_->opts; }

}  // namespace dfssm::data
