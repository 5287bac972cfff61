// The data-preparation config (`dfssm data prepare <config.yaml> [key=value ...]`).
// docs/data.md lists every key with its default. Unknown keys are an error, so typos do not
// pass silently; relative paths are relative to the current directory.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dfssm::data {

struct SourceSpec {
  std::string path;     // file, directory or glob (relative to `python`'s directory when that is set)
  std::string python;   // "", "stdlib", "purelib" or "platlib": root at that sysconfig path
  std::vector<std::string> exclude;  // globs relative to the directory / the glob's fixed prefix
  std::string format = "auto";       // auto | text | jsonl | tokens
  std::string field = "text";        // JSONL: the field holding the document text
  std::string dtype;                 // tokens in .bin files: uint16 | uint32 (.npy carries its own)
  std::string on_invalid_utf8;       // skip | fail; "" = the top-level setting
  std::string on_missing_field = "fail";  // JSONL line without `field`: fail | skip
  bool split_on_eos = true;          // tokens: EOS-separated runs are documents

  std::string describe() const;  // e.g. "python:stdlib/**/*.py"
};

struct TokenizerSpec {
  std::string model;            // an existing SentencePiece .model; empty = train one
  std::string type = "bpe";     // training: bpe | unigram;  "none": pre-tokenized sources only
  int64_t vocab_size = 4096;
  bool byte_fallback = true;
  double character_coverage = 0.9995;
  int64_t sample_bytes = 16000000;    // text sampled for training
  int64_t max_sentence_bytes = 2048;  // training sentences: line-aligned chunks of at most this
  bool split_digits = true;
  int64_t eos_id = -1;  // type none: the EOS id of the external tokenizer (required)
  int64_t bos_id = -1;  // type none: its BOS id (-1 = none)
  std::string file;     // type none: optional file hashed as the tokenizer identity (tokenizer.json)
};

struct DataConfig {
  std::string output;
  bool overwrite = false;
  std::vector<SourceSpec> sources;
  TokenizerSpec tokenizer;
  double val_fraction = 0.01;
  uint64_t seed = 1234;
  int num_threads = 0;             // 0 = all cores
  int64_t shard_tokens = 1 << 24;  // a shard is closed at the first document end past this
  int64_t chunk_tokens = 4096;     // HDF5 chunk of the tokens dataset (small: fast random windows)
  int compression = 0;             // gzip level 0-9 (0 = none; slows random reads)
  bool checksum = true;            // Fletcher-32 per chunk: corruption is detected on read
  std::string on_invalid_utf8 = "skip";  // skip (with a warning) | fail
  bool add_bos = false;            // prepend BOS to every text document
  std::string python = "python3";  // interpreter that resolves `python:` sources

  nlohmann::json to_json() const;
  int threads() const;  // num_threads, or the core count when 0
};

// Parses YAML text (origin names it in errors), applies dotted key=value overrides
// (e.g. tokenizer.vocab_size=8192, sources.0.path=x), validates, and returns the config.
DataConfig parse_data_config(const std::string& yaml_text, const std::string& origin,
                             const std::vector<std::pair<std::string, std::string>>& overrides = {});
DataConfig load_data_config(const std::string& path,
                            const std::vector<std::pair<std::string, std::string>>& overrides = {});
// Validation alone (parse_data_config calls it): ranges, enums, required keys.
void validate(const DataConfig& cfg);

}  // namespace dfssm::data
