// HDF5 token shards. One file per shard (docs/data.md has the full layout):
//   /tokens       1-D uint16 or uint32 (uint16 when vocab_size <= 65536), chunked, optionally
//                 gzip-compressed and Fletcher-32 checksummed; documents separated by EOS
//   /doc_offsets  1-D uint64, documents+1 entries: where each document starts (the last entry
//                 is the token count); a document's tokens include its trailing EOS
//   attributes on the root group: format, format_version, split, vocab_size, dtype,
//   tokenizer_sha256, eos_id, bos_id, token_count, doc_count, sources (JSON)
// A shard is written to "<name>.tmp" and renamed to <name> only when complete; the writer
// removes the temporary file if it is destroyed before finish().
// Every HDF5 error becomes a dfssm::Error naming the file and the dataset. HDF5 calls are
// serialised by one process-wide lock (the library is usually built without thread safety).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace dfssm::data {

constexpr int kShardFormatVersion = 1;
constexpr const char* kShardFormat = "dfssm-tokens";

enum class TokenDType { U16, U32 };
TokenDType dtype_for_vocab(int64_t vocab_size);
const char* dtype_name(TokenDType d);  // "uint16" / "uint32"
size_t dtype_size(TokenDType d);

struct ShardMeta {
  int64_t format_version = kShardFormatVersion;
  std::string split;  // "train" or "val"
  int64_t vocab_size = 0;
  TokenDType dtype = TokenDType::U16;
  std::string tokenizer_sha256;
  int64_t eos_id = -1;
  int64_t bos_id = -1;
  int64_t token_count = 0;
  int64_t doc_count = 0;
  std::string sources_json = "[]";  // [{"source": i, "spec": "...", "documents": n, "tokens": n}]
};

struct ShardWriteOptions {
  int64_t chunk_tokens = 4096;
  int compression = 0;  // gzip level; 0 = none
  bool checksum = true;  // Fletcher-32
};

// The lock around every HDF5 call of dfssm.
std::recursive_mutex& hdf5_mutex();

class ShardWriter {
 public:
  // meta's counts are filled in by finish().
  ShardWriter(std::string path, ShardMeta meta, ShardWriteOptions opts);
  ~ShardWriter();  // without finish(): closes and deletes the temporary file
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void append(const int32_t* ids, size_t n);  // ids must be in [0, vocab_size)
  void end_document();                        // marks a document boundary (after its EOS)
  int64_t tokens() const { return written_ + int64_t(buffer_count_); }
  int64_t documents() const { return int64_t(doc_offsets_.size()) - 1; }
  // Writes the attributes, closes, fsyncs and renames the file to its final name.
  void finish(const std::string& sources_json);
  const std::string& path() const { return path_; }

 private:
  void flush();
  struct H;
  std::unique_ptr<H> h_;
  std::string path_, tmp_;
  ShardMeta meta_;
  ShardWriteOptions opts_;
  std::vector<uint8_t> buffer_;
  size_t buffer_count_ = 0;
  int64_t written_ = 0;
  std::vector<uint64_t> doc_offsets_{0};
  bool finished_ = false;
};

class ShardReader {
 public:
  // Opens and validates the structure (attributes, dataset types and sizes). Throws
  // dfssm::Error for a missing, truncated, corrupt or foreign file.
  static std::unique_ptr<ShardReader> open(const std::string& path);
  ~ShardReader();

  const ShardMeta& meta() const { return meta_; }
  const std::string& path() const { return path_; }
  // Reads ids [begin, begin+n) as int32. Corruption (checksum failure, ids >= vocab_size) throws.
  void read(int64_t begin, int64_t n, int32_t* out) const;
  std::vector<uint64_t> doc_offsets() const;

 private:
  ShardReader() = default;
  struct H;
  std::unique_ptr<H> h_;
  std::string path_;
  ShardMeta meta_;
  mutable std::vector<uint8_t> scratch_;
};

// Atomically writes `path` (temp name + fsync + rename). fsync of a file by path.
void fsync_path(const std::string& path);

}  // namespace dfssm::data
