// Corpus reading: sources (files, directories, globs, the Python installation's own library)
// are expanded to a sorted file list, then streamed as documents in that order.
//   text   : one document per file (must be UTF-8: skipped with a warning or an error)
//   jsonl  : one document per non-blank line, the text in a configurable field
//   tokens : pre-tokenized ids, raw .bin (uint16/uint32, little-endian) or .npy (any shape,
//            C order, integer dtype); EOS-separated runs are documents (or one per file)
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "distill/data/config.h"

namespace dfssm::data {

enum class SourceFormat { Text, Jsonl, Tokens };
const char* format_name(SourceFormat f);

struct CorpusFile {
  std::string path;    // on disk
  std::string key;     // relative to the source root: the stable name the split hash uses
  size_t source = 0;   // index into DataConfig::sources
  SourceFormat format = SourceFormat::Text;
  uint64_t bytes = 0;  // file size
};

// The directory of `which` (stdlib, purelib, platlib) of the given Python interpreter.
std::string python_path(const std::string& python, const std::string& which);

// Expands every source in config order (files sorted within a source, duplicates dropped).
// A source that matches no file is an error naming it.
// `resolved` (optional) receives each source's path after `python:` resolution.
std::vector<CorpusFile> expand_sources(const DataConfig& cfg, std::vector<std::string>* resolved = nullptr);

// Where the ids of a token file are: raw .bin (dtype from the source) or .npy (from its header).
struct TokenFileLayout {
  std::string dtype;     // numpy-style: u2 u4 i2 i4 i8 u8
  int item_size = 0;
  bool is_signed = false;
  uint64_t count = 0;        // number of ids
  uint64_t data_offset = 0;  // byte offset of the first id
};
TokenFileLayout token_file_layout(const std::string& path, const std::string& dtype);

// A unit of corpus, in order. A text document is one unit; a pre-tokenized document may come as
// several runs (begin on the first, end on the last) so that huge files stream in blocks.
struct Unit {
  enum Kind { kText, kTokens } kind = kText;
  size_t file = 0;   // index into the file list
  uint64_t doc = 0;  // document index within the file
  std::string text;
  std::vector<int32_t> tokens;  // without the EOS that separated documents in the file
  bool begin = true;
  bool end = true;
};

struct FileStats {
  uint64_t documents = 0;
  uint64_t skipped_invalid_utf8 = 0;
  uint64_t skipped_empty = 0;
  uint64_t skipped_missing_field = 0;
  uint64_t text_bytes = 0;  // bytes of text handed out
};

class CorpusReader {
 public:
  using Warn = std::function<void(const std::string&)>;
  // vocab_size / eos_id check and split pre-tokenized files. text_only skips token files (used
  // to sample text for tokenizer training).
  CorpusReader(const DataConfig& cfg, std::vector<CorpusFile> files, int64_t vocab_size, int64_t eos_id, Warn warn,
               bool text_only = false);
  ~CorpusReader();
  CorpusReader(const CorpusReader&) = delete;
  CorpusReader& operator=(const CorpusReader&) = delete;

  // The next unit; false at the end. Bad input throws dfssm::Error naming the file (and line).
  bool next(Unit* u);
  const std::vector<CorpusFile>& files() const { return files_; }
  const std::vector<FileStats>& stats() const { return stats_; }

 private:
  bool next_text(Unit* u);
  bool next_jsonl(Unit* u);
  bool fill_tokens();
  void advance();
  std::string utf8_policy(const CorpusFile& f) const;

  const DataConfig& cfg_;
  std::vector<CorpusFile> files_;
  std::vector<FileStats> stats_;
  int64_t vocab_size_;
  int64_t eos_id_;
  Warn warn_;
  bool text_only_;
  size_t fi_ = 0;
  std::deque<Unit> pending_;
  // JSONL state
  std::ifstream jsonl_;
  bool jsonl_open_ = false;
  uint64_t line_ = 0;
  // token-file state
  FILE* tok_ = nullptr;
  TokenFileLayout layout_;
  uint64_t tok_pos_ = 0;
  uint64_t tok_doc_ = 0;
  bool tok_in_doc_ = false;
  std::vector<char> raw_;
};

}  // namespace dfssm::data
