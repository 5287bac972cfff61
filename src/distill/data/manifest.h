// manifest.json: the index of a prepared dataset directory, written last (atomically), so a
// directory without one is an incomplete preparation. docs/data.md documents the schema.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dfssm::data {

constexpr int kManifestVersion = 1;

struct ShardEntry {
  std::string file;  // relative to the dataset directory
  int64_t tokens = 0;
  int64_t documents = 0;
  uint64_t bytes = 0;  // file size
  std::string sha256;  // of the file
};

struct SplitEntry {
  int64_t tokens = 0;
  int64_t documents = 0;
  std::vector<ShardEntry> shards;
};

struct Manifest {
  int format_version = kManifestVersion;
  std::string created_by;
  int64_t vocab_size = 0;
  std::string dtype;  // uint16 | uint32
  int64_t eos_id = -1;
  int64_t bos_id = -1;
  bool add_bos = false;
  std::string tokenizer_type;  // sentencepiece | external
  std::string tokenizer_file;  // relative to the directory ("" for external without a file)
  std::string tokenizer_sha256;
  double val_fraction = 0;
  uint64_t seed = 0;
  std::map<std::string, SplitEntry> splits;  // "train", "val"
  nlohmann::json sources = nlohmann::json::array();
  nlohmann::json config = nlohmann::json::object();
  nlohmann::json stats = nlohmann::json::object();

  const SplitEntry& split(const std::string& name, const std::string& dir) const;  // throws if absent
  nlohmann::json to_json() const;
};

Manifest manifest_from_json(const nlohmann::json& j, const std::string& origin);
// Reads <dir>/manifest.json; throws dfssm::Error with what is wrong and how to fix it.
Manifest read_manifest(const std::string& dir);
void write_manifest(const std::string& dir, const Manifest& m);

}  // namespace dfssm::data
