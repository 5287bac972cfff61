// The streaming loader the trainer reads batches from. LibTorch-free: batches are host buffers
// of int32 ids that the trainer copies into (pinned) tensors.
//
//  * A split is one token stream (its shards in manifest order). Window w covers ids
//    [w*seq_len, w*seq_len + seq_len + 1): inputs are the first seq_len, targets the last
//    seq_len, and every id after the first is a target exactly once per epoch.
//  * Epoch e visits the windows in a permutation drawn from (seed, e): deterministic on every
//    machine. Without shuffle (validation) the order is 0, 1, 2, ...
//  * Global step s of an epoch takes positions [s*G, (s+1)*G) of that order, G = world_size *
//    batch_size; rank r takes the r-th block of batch_size. Ranks are disjoint, and together
//    they cover every window of the epoch except the < G left over when drop_last is on.
//  * Only the windows of a batch are read (HDF5 hyperslabs): the corpus is never loaded whole.
//  * cursor() is the exact position after the last batch returned; restore() in a fresh loader
//    continues with exactly the batches an uninterrupted run would have produced. The cursor
//    is a small JSON document (to_json / to_bytes) for the trainer's checkpoint.
//  * A background thread prepares `prefetch` batches ahead; errors it hits are rethrown by next().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distill/data/manifest.h"
#include "distill/data/shard.h"

namespace dfssm::data {

struct LoaderOptions {
  std::string dir;               // a prepared dataset (manifest.json + shards)
  std::string split = "train";
  int64_t seq_len = 2048;
  int64_t batch_size = 8;        // rows per rank
  uint64_t seed = 0;
  int rank = 0;
  int world_size = 1;
  bool shuffle = true;           // permute the windows per epoch
  int64_t epochs = 0;            // 0 = endless; otherwise next() returns false after this many
  bool drop_last = true;         // false: the last global batch of an epoch may be short
  int prefetch = 4;              // batches prepared ahead in a background thread; 0 = none
  std::string tokenizer_sha256;  // when set, must match the dataset's tokenizer
  std::string tokenizer_model;   // when set, its file's SHA-256 must match the dataset's tokenizer
};

// The validation iterator's options: the same dataset, seq_len and ranks, split "val", in order,
// one pass, the last short batch kept.
LoaderOptions validation_options(const LoaderOptions& train);

struct Batch {
  std::vector<int32_t> tokens;  // rows x cols, row-major
  int64_t rows = 0;
  int64_t cols = 0;             // seq_len + 1
  int64_t epoch = 0;
  int64_t step = 0;             // global step within the epoch
  std::vector<int64_t> windows; // the window index of each row
  const int32_t* row(int64_t r) const { return tokens.data() + r * cols; }
};

struct Cursor {
  int version = 1;
  std::string split;
  int64_t epoch = 0;
  int64_t step = 0;  // next global step within the epoch
  uint64_t seed = 0;
  int64_t seq_len = 0;
  int64_t global_batch = 0;  // world_size * batch_size
  int64_t num_windows = 0;
  std::string data_id;       // identifies the split's shards

  std::string to_json() const;
  static Cursor from_json(const std::string& s);
  std::vector<uint8_t> to_bytes() const;
  static Cursor from_bytes(const std::vector<uint8_t>& b);
};

// Opens every shard of a split and checks it against the manifest (file present, size,
// attributes, tokenizer hash); with verify_sha256 also the file hashes.
std::vector<std::unique_ptr<ShardReader>> open_split(const std::string& dir, const Manifest& m,
                                                     const std::string& split, bool verify_sha256 = false);

class TokenLoader {
 public:
  explicit TokenLoader(LoaderOptions opts);
  ~TokenLoader();
  TokenLoader(const TokenLoader&) = delete;
  TokenLoader& operator=(const TokenLoader&) = delete;

  // The next batch of this rank; false when a finite loader (epochs > 0) is done.
  bool next(Batch* b);
  Cursor cursor() const;
  // Continues from a cursor (saved by any rank of a run with the same seed, seq_len, global
  // batch and data). Throws dfssm::Error naming what differs.
  void restore(const Cursor& c);
  void reset();  // back to the start (epoch 0, step 0)

  int64_t num_windows() const;
  int64_t steps_per_epoch() const;
  int64_t split_tokens() const;
  const Manifest& manifest() const;
  const LoaderOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dfssm::data
