#include "distill/data/manifest.h"

#include <filesystem>

#include "core/error.h"
#include "core/safetensors.h"
#include "distill/data/shard.h"

namespace fs = std::filesystem;

namespace dfssm::data {
namespace {

const nlohmann::json& need(const nlohmann::json& j, const char* key, const std::string& where,
                           const std::string& origin) {
  DFSSM_CHECK(j.is_object() && j.contains(key), origin, ": missing key '", where.empty() ? "" : where + ".", key,
              "' - the manifest is damaged; re-run dfssm data prepare");
  return j.at(key);
}

template <class T>
T get(const nlohmann::json& j, const char* key, const std::string& where, const std::string& origin) {
  const auto& v = need(j, key, where, origin);
  try {
    return v.get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(str(origin, ": key '", where.empty() ? "" : where + ".", key, "' has the wrong type (",
                    v.type_name(), ") - the manifest is damaged; re-run dfssm data prepare"));
  }
}

}  // namespace

const SplitEntry& Manifest::split(const std::string& name, const std::string& dir) const {
  const auto it = splits.find(name);
  DFSSM_CHECK(it != splits.end(), dir, "/manifest.json: no split '", name, "' (has: ",
              [&] {
                std::string s;
                for (const auto& [k, v] : splits) s += (s.empty() ? "" : ", ") + k;
                return s;
              }(),
              ")");
  return it->second;
}

nlohmann::json Manifest::to_json() const {
  nlohmann::json js = nlohmann::json::object();
  for (const auto& [name, s] : splits) {
    nlohmann::json shards = nlohmann::json::array();
    for (const auto& e : s.shards)
      shards.push_back(
          {{"file", e.file}, {"tokens", e.tokens}, {"documents", e.documents}, {"bytes", e.bytes}, {"sha256", e.sha256}});
    js[name] = {{"tokens", s.tokens}, {"documents", s.documents}, {"shards", shards}};
  }
  return {{"format", kShardFormat},
          {"format_version", format_version},
          {"created_by", created_by},
          {"vocab_size", vocab_size},
          {"dtype", dtype},
          {"eos_id", eos_id},
          {"bos_id", bos_id},
          {"add_bos", add_bos},
          {"tokenizer", {{"type", tokenizer_type}, {"file", tokenizer_file}, {"sha256", tokenizer_sha256}}},
          {"val_fraction", val_fraction},
          {"seed", seed},
          {"splits", js},
          {"sources", sources},
          {"config", config},
          {"stats", stats}};
}

Manifest manifest_from_json(const nlohmann::json& j, const std::string& origin) {
  Manifest m;
  DFSSM_CHECK(j.is_object(), origin, ": not a JSON object - the manifest is damaged; re-run dfssm data prepare");
  const std::string format = get<std::string>(j, "format", "", origin);
  DFSSM_CHECK(format == kShardFormat, origin, ": format is '", format, "', expected '", kShardFormat,
              "' - not a dfssm dataset manifest");
  m.format_version = get<int>(j, "format_version", "", origin);
  DFSSM_CHECK(m.format_version >= 1 && m.format_version <= kManifestVersion, origin, ": format_version ",
              m.format_version, " is not supported by this dfssm (it reads 1..", kManifestVersion, ")");
  m.created_by = j.value("created_by", "");
  m.vocab_size = get<int64_t>(j, "vocab_size", "", origin);
  m.dtype = get<std::string>(j, "dtype", "", origin);
  DFSSM_CHECK(m.dtype == "uint16" || m.dtype == "uint32", origin, ": dtype '", m.dtype, "' is not uint16/uint32");
  DFSSM_CHECK(m.vocab_size >= 1, origin, ": vocab_size ", m.vocab_size, " must be positive");
  m.eos_id = get<int64_t>(j, "eos_id", "", origin);
  m.bos_id = get<int64_t>(j, "bos_id", "", origin);
  m.add_bos = j.value("add_bos", false);
  const auto& tok = need(j, "tokenizer", "", origin);
  m.tokenizer_type = get<std::string>(tok, "type", "tokenizer", origin);
  m.tokenizer_file = get<std::string>(tok, "file", "tokenizer", origin);
  m.tokenizer_sha256 = get<std::string>(tok, "sha256", "tokenizer", origin);
  m.val_fraction = j.value("val_fraction", 0.0);
  m.seed = j.value("seed", uint64_t(0));
  const auto& splits = need(j, "splits", "", origin);
  DFSSM_CHECK(splits.is_object(), origin, ": 'splits' must be an object");
  for (auto it = splits.begin(); it != splits.end(); ++it) {
    const std::string w = "splits." + it.key();
    SplitEntry s;
    s.tokens = get<int64_t>(it.value(), "tokens", w, origin);
    s.documents = get<int64_t>(it.value(), "documents", w, origin);
    const auto& shards = need(it.value(), "shards", w, origin);
    DFSSM_CHECK(shards.is_array(), origin, ": '", w, ".shards' must be a list");
    int64_t tokens = 0, docs = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string ws = str(w, ".shards.", i);
      ShardEntry e;
      e.file = get<std::string>(shards[i], "file", ws, origin);
      e.tokens = get<int64_t>(shards[i], "tokens", ws, origin);
      e.documents = get<int64_t>(shards[i], "documents", ws, origin);
      e.bytes = get<uint64_t>(shards[i], "bytes", ws, origin);
      e.sha256 = shards[i].value("sha256", "");
      DFSSM_CHECK(!e.file.empty() && e.file.find("..") == std::string::npos && e.file[0] != '/', origin, ": ", ws,
                  ".file '", e.file, "' must be a file name inside the dataset directory");
      tokens += e.tokens;
      docs += e.documents;
      s.shards.push_back(std::move(e));
    }
    DFSSM_CHECK(tokens == s.tokens && docs == s.documents, origin, ": ", w, " totals (", s.tokens, " tokens, ",
                s.documents, " documents) differ from the sum over its shards (", tokens, ", ", docs,
                ") - the manifest is damaged; re-run dfssm data prepare");
    m.splits[it.key()] = std::move(s);
  }
  if (j.contains("sources")) m.sources = j["sources"];
  if (j.contains("config")) m.config = j["config"];
  if (j.contains("stats")) m.stats = j["stats"];
  return m;
}

Manifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.json").string();
  std::error_code ec;
  DFSSM_CHECK(fs::is_directory(dir, ec), "dataset directory '", dir, "' does not exist; run dfssm data prepare first");
  DFSSM_CHECK(fs::is_regular_file(path, ec), path, " does not exist: '", dir,
              "' is not a prepared dataset, or its preparation did not complete; run dfssm data prepare");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(str(path, ": invalid JSON (", e.what(), ") - re-run dfssm data prepare"));
  }
  return manifest_from_json(j, path);
}

void write_manifest(const std::string& dir, const Manifest& m) {
  write_file_atomic((fs::path(dir) / "manifest.json").string(), m.to_json().dump(2) + "\n");
}

}  // namespace dfssm::data
