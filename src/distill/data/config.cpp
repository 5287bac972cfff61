#include "distill/data/config.h"

#include <algorithm>
#include <thread>

#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "distill/data/util.h"

namespace dfssm::data {
namespace {

std::vector<std::string> split_dots(const std::string& key) {
  std::vector<std::string> parts;
  size_t p = 0;
  while (true) {
    const size_t e = key.find('.', p);
    parts.push_back(key.substr(p, e == std::string::npos ? std::string::npos : e - p));
    if (e == std::string::npos) break;
    p = e + 1;
  }
  return parts;
}

bool parse_index(const std::string& s, size_t* out) {
  if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  *out = size_t(std::stoul(s));
  return true;
}

// key=value on the YAML tree: maps are created on the way, sequences are indexed by number.
void apply_override(YAML::Node& root, const std::string& key, const std::string& value) {
  const auto parts = split_dots(key);
  for (const auto& p : parts) DFSSM_CHECK(!p.empty(), "override '", key, "=", value, "': empty key component");
  YAML::Node v;
  try {
    v = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    throw Error(str("override '", key, "=", value, "': the value is not valid YAML (", e.msg, ")"));
  }
  YAML::Node cur;
  cur.reset(root);
  std::string parent, where;
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    const std::string& part = parts[i];
    parent = where;
    where += (where.empty() ? "" : ".") + part;
    if (cur.IsSequence()) {
      size_t idx = 0;
      DFSSM_CHECK(parse_index(part, &idx) && idx < cur.size(), "override '", key, "': '", where,
                  "' indexes a list of ", cur.size(), " entries; use 0..", cur.size() == 0 ? 0 : cur.size() - 1);
      if (last) {
        cur[idx] = v;
      } else {
        YAML::Node next = cur[idx];
        cur.reset(next);
      }
      continue;
    }
    DFSSM_CHECK(cur.IsMap() || cur.IsNull(), "override '", key, "': '", parent, "' is a single value, not a section");
    if (last) {
      cur[part] = v;
    } else {
      if (!cur[part] || cur[part].IsNull()) cur[part] = YAML::Node(YAML::NodeType::Map);
      YAML::Node next = cur[part];
      cur.reset(next);
    }
  }
}

class Reader {
 public:
  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  void check_keys(const YAML::Node& n, const std::string& where, std::initializer_list<const char*> known) const {
    DFSSM_CHECK(n.IsMap(), origin_, ": '", where, "' must be a mapping of key: value");
    for (auto it = n.begin(); it != n.end(); ++it) {
      const std::string k = it->first.as<std::string>();
      if (std::find_if(known.begin(), known.end(), [&](const char* s) { return k == s; }) != known.end()) continue;
      std::string list;
      for (const char* s : known) list += str(list.empty() ? "" : ", ", s);
      throw Error(str(origin_, ": unknown key '", join(where, k), "' (known keys", where.empty() ? "" : " in '",
                      where, where.empty() ? "" : "'", ": ", list, ")"));
    }
  }

  template <class T>
  T get(const YAML::Node& n, const char* key, const T& def, const std::string& where, const char* type) const {
    const YAML::Node v = n[key];
    if (!v || v.IsNull()) return def;
    DFSSM_CHECK(v.IsScalar(), origin_, ": key '", join(where, key), "' expects ", type);
    try {
      return v.as<T>();
    } catch (const YAML::Exception&) {
      throw Error(str(origin_, ": key '", join(where, key), "' expects ", type, ", got '", v.Scalar(), "'"));
    }
  }

  std::vector<std::string> get_list(const YAML::Node& n, const char* key, const std::string& where) const {
    const YAML::Node v = n[key];
    std::vector<std::string> out;
    if (!v || v.IsNull()) return out;
    if (v.IsScalar()) return {v.Scalar()};
    DFSSM_CHECK(v.IsSequence(), origin_, ": key '", join(where, key), "' expects a list of strings");
    for (const auto& e : v) {
      DFSSM_CHECK(e.IsScalar(), origin_, ": key '", join(where, key), "' expects a list of strings");
      out.push_back(e.Scalar());
    }
    return out;
  }

  static std::string join(const std::string& where, const std::string& key) {
    return where.empty() ? key : where + "." + key;
  }

 private:
  std::string origin_;
};

SourceSpec parse_source(const Reader& r, const YAML::Node& n, const std::string& where) {
  SourceSpec s;
  if (n.IsScalar()) {
    s.path = n.Scalar();
    return s;
  }
  r.check_keys(n, where,
               {"path", "python", "exclude", "format", "field", "dtype", "on_invalid_utf8", "on_missing_field",
                "split_on_eos"});
  s.path = r.get<std::string>(n, "path", "", where, "a path or glob");
  s.python = r.get<std::string>(n, "python", "", where, "stdlib, purelib or platlib");
  s.exclude = r.get_list(n, "exclude", where);
  s.format = r.get<std::string>(n, "format", s.format, where, "auto, text, jsonl or tokens");
  s.field = r.get<std::string>(n, "field", s.field, where, "a JSON field name");
  s.dtype = r.get<std::string>(n, "dtype", "", where, "uint16 or uint32");
  s.on_invalid_utf8 = r.get<std::string>(n, "on_invalid_utf8", "", where, "skip or fail");
  s.on_missing_field = r.get<std::string>(n, "on_missing_field", s.on_missing_field, where, "fail or skip");
  s.split_on_eos = r.get<bool>(n, "split_on_eos", s.split_on_eos, where, "true or false");
  return s;
}

template <class T>
bool one_of(const T& v, std::initializer_list<T> allowed) {
  return std::find(allowed.begin(), allowed.end(), v) != allowed.end();
}

}  // namespace

std::string SourceSpec::describe() const {
  if (python.empty()) return path;
  return "python:" + python + (path.empty() ? "" : "/" + path);
}

int DataConfig::threads() const {
  if (num_threads > 0) return num_threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

nlohmann::json DataConfig::to_json() const {
  nlohmann::json srcs = nlohmann::json::array();
  for (const auto& s : sources) {
    srcs.push_back({{"path", s.path},
                    {"python", s.python},
                    {"exclude", s.exclude},
                    {"format", s.format},
                    {"field", s.field},
                    {"dtype", s.dtype},
                    {"on_invalid_utf8", s.on_invalid_utf8},
                    {"on_missing_field", s.on_missing_field},
                    {"split_on_eos", s.split_on_eos}});
  }
  return {{"output", output},
          {"overwrite", overwrite},
          {"sources", srcs},
          {"tokenizer",
           {{"model", tokenizer.model},
            {"type", tokenizer.type},
            {"vocab_size", tokenizer.vocab_size},
            {"byte_fallback", tokenizer.byte_fallback},
            {"character_coverage", tokenizer.character_coverage},
            {"sample_bytes", tokenizer.sample_bytes},
            {"max_sentence_bytes", tokenizer.max_sentence_bytes},
            {"split_digits", tokenizer.split_digits},
            {"eos_id", tokenizer.eos_id},
            {"bos_id", tokenizer.bos_id},
            {"file", tokenizer.file}}},
          {"val_fraction", val_fraction},
          {"seed", seed},
          {"num_threads", num_threads},
          {"shard_tokens", shard_tokens},
          {"chunk_tokens", chunk_tokens},
          {"compression", compression},
          {"checksum", checksum},
          {"on_invalid_utf8", on_invalid_utf8},
          {"add_bos", add_bos},
          {"python", python}};
}

void validate(const DataConfig& c) {
  DFSSM_CHECK(!c.output.empty(), "data config: 'output' is required (the dataset directory, e.g. runs/data/mycorpus)");
  DFSSM_CHECK(!c.sources.empty(), "data config: 'sources' is empty; list at least one file, directory or glob");
  for (size_t i = 0; i < c.sources.size(); ++i) {
    const SourceSpec& s = c.sources[i];
    const std::string w = str("data config: sources.", i, " (", s.describe(), ")");
    DFSSM_CHECK(!s.path.empty() || !s.python.empty(), w, ": needs 'path' (a file, directory or glob) or 'python'");
    DFSSM_CHECK(s.python.empty() || one_of<std::string>(s.python, {"stdlib", "purelib", "platlib"}), w,
                ": 'python' must be stdlib, purelib or platlib, got '", s.python, "'");
    DFSSM_CHECK(one_of<std::string>(s.format, {"auto", "text", "jsonl", "tokens"}), w,
                ": 'format' must be auto, text, jsonl or tokens, got '", s.format, "'");
    DFSSM_CHECK(s.dtype.empty() || one_of<std::string>(s.dtype, {"uint16", "uint32"}), w,
                ": 'dtype' must be uint16 or uint32, got '", s.dtype, "'");
    DFSSM_CHECK(s.on_invalid_utf8.empty() || one_of<std::string>(s.on_invalid_utf8, {"skip", "fail"}), w,
                ": 'on_invalid_utf8' must be skip or fail, got '", s.on_invalid_utf8, "'");
    DFSSM_CHECK(one_of<std::string>(s.on_missing_field, {"skip", "fail"}), w,
                ": 'on_missing_field' must be fail or skip, got '", s.on_missing_field, "'");
    DFSSM_CHECK(!s.field.empty(), w, ": 'field' must not be empty");
  }
  const TokenizerSpec& t = c.tokenizer;
  if (t.model.empty()) {
    DFSSM_CHECK(one_of<std::string>(t.type, {"bpe", "unigram", "none"}), "data config: tokenizer.type must be bpe, ",
                "unigram or none (pre-tokenized sources only), got '", t.type, "'");
  }
  if (t.model.empty() && t.type == "none") {
    DFSSM_CHECK(t.vocab_size >= 2 && t.vocab_size <= (int64_t(1) << 31), "data config: tokenizer.vocab_size must be ",
                "the external tokenizer's vocabulary size (2 .. 2^31), got ", t.vocab_size);
    DFSSM_CHECK(t.eos_id >= 0 && t.eos_id < t.vocab_size, "data config: tokenizer.type=none needs tokenizer.eos_id, ",
                "the EOS id of the tokenizer that produced the tokens (0 .. vocab_size-1), got ", t.eos_id);
    DFSSM_CHECK(t.bos_id >= -1 && t.bos_id < t.vocab_size, "data config: tokenizer.bos_id must be -1 (none) or ",
                "in 0 .. vocab_size-1, got ", t.bos_id);
  } else if (t.model.empty()) {
    const int64_t min_vocab = t.byte_fallback ? 260 : 8;
    DFSSM_CHECK(t.vocab_size >= min_vocab && t.vocab_size <= 1000000, "data config: tokenizer.vocab_size must be in ",
                min_vocab, " .. 1000000", t.byte_fallback ? " (byte_fallback needs 256 byte pieces + specials)" : "",
                ", got ", t.vocab_size);
    DFSSM_CHECK(t.character_coverage > 0 && t.character_coverage <= 1,
                "data config: tokenizer.character_coverage must be in (0, 1], got ", t.character_coverage);
    DFSSM_CHECK(t.sample_bytes >= 1000, "data config: tokenizer.sample_bytes must be >= 1000, got ", t.sample_bytes);
    DFSSM_CHECK(t.max_sentence_bytes >= 64 && t.max_sentence_bytes <= (1 << 20),
                "data config: tokenizer.max_sentence_bytes must be in 64 .. 1048576, got ", t.max_sentence_bytes);
  }
  DFSSM_CHECK(c.val_fraction >= 0 && c.val_fraction <= 0.5, "data config: val_fraction must be in [0, 0.5], got ",
              c.val_fraction);
  DFSSM_CHECK(c.num_threads >= 0, "data config: num_threads must be >= 0 (0 = all cores), got ", c.num_threads);
  DFSSM_CHECK(c.shard_tokens >= 1, "data config: shard_tokens must be >= 1, got ", c.shard_tokens);
  DFSSM_CHECK(c.chunk_tokens >= 64 && c.chunk_tokens <= (1 << 24), "data config: chunk_tokens must be in 64 .. ",
              (1 << 24), ", got ", c.chunk_tokens);
  DFSSM_CHECK(c.compression >= 0 && c.compression <= 9, "data config: compression must be a gzip level 0..9, got ",
              c.compression);
  DFSSM_CHECK(one_of<std::string>(c.on_invalid_utf8, {"skip", "fail"}),
              "data config: on_invalid_utf8 must be skip or fail, got '", c.on_invalid_utf8, "'");
}

DataConfig parse_data_config(const std::string& yaml_text, const std::string& origin,
                             const std::vector<std::pair<std::string, std::string>>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw Error(str(origin, ": invalid YAML: ", e.what()));
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  DFSSM_CHECK(root.IsMap(), origin, ": the data config must be a mapping of key: value");
  for (const auto& [k, v] : overrides) apply_override(root, k, v);

  const Reader r(origin);
  r.check_keys(root, "",
               {"output", "overwrite", "sources", "tokenizer", "val_fraction", "seed", "num_threads", "shard_tokens",
                "chunk_tokens", "compression", "checksum", "on_invalid_utf8", "add_bos", "python"});
  DataConfig c;
  c.output = r.get<std::string>(root, "output", "", "", "a directory path");
  c.overwrite = r.get<bool>(root, "overwrite", c.overwrite, "", "true or false");
  c.val_fraction = r.get<double>(root, "val_fraction", c.val_fraction, "", "a number");
  c.seed = r.get<uint64_t>(root, "seed", c.seed, "", "a non-negative integer");
  c.num_threads = r.get<int>(root, "num_threads", c.num_threads, "", "an integer");
  c.shard_tokens = r.get<int64_t>(root, "shard_tokens", c.shard_tokens, "", "an integer");
  c.chunk_tokens = r.get<int64_t>(root, "chunk_tokens", c.chunk_tokens, "", "an integer");
  c.compression = r.get<int>(root, "compression", c.compression, "", "an integer 0..9");
  c.checksum = r.get<bool>(root, "checksum", c.checksum, "", "true or false");
  c.on_invalid_utf8 = r.get<std::string>(root, "on_invalid_utf8", c.on_invalid_utf8, "", "skip or fail");
  c.add_bos = r.get<bool>(root, "add_bos", c.add_bos, "", "true or false");
  c.python = r.get<std::string>(root, "python", c.python, "", "a Python interpreter");

  const YAML::Node srcs = root["sources"];
  if (srcs && !srcs.IsNull()) {
    if (srcs.IsScalar() || srcs.IsMap()) {
      c.sources.push_back(parse_source(r, srcs, "sources"));
    } else {
      for (size_t i = 0; i < srcs.size(); ++i) c.sources.push_back(parse_source(r, srcs[i], str("sources.", i)));
    }
  }
  const YAML::Node tok = root["tokenizer"];
  if (tok && !tok.IsNull()) {
    const std::string w = "tokenizer";
    r.check_keys(tok, w,
                 {"model", "type", "vocab_size", "byte_fallback", "character_coverage", "sample_bytes",
                  "max_sentence_bytes", "split_digits", "eos_id", "bos_id", "file"});
    TokenizerSpec& t = c.tokenizer;
    t.model = r.get<std::string>(tok, "model", t.model, w, "a path to a SentencePiece .model");
    t.type = r.get<std::string>(tok, "type", t.type, w, "bpe, unigram or none");
    t.vocab_size = r.get<int64_t>(tok, "vocab_size", t.vocab_size, w, "an integer");
    t.byte_fallback = r.get<bool>(tok, "byte_fallback", t.byte_fallback, w, "true or false");
    t.character_coverage = r.get<double>(tok, "character_coverage", t.character_coverage, w, "a number in (0, 1]");
    t.sample_bytes = r.get<int64_t>(tok, "sample_bytes", t.sample_bytes, w, "an integer");
    t.max_sentence_bytes = r.get<int64_t>(tok, "max_sentence_bytes", t.max_sentence_bytes, w, "an integer");
    t.split_digits = r.get<bool>(tok, "split_digits", t.split_digits, w, "true or false");
    t.eos_id = r.get<int64_t>(tok, "eos_id", t.eos_id, w, "an integer");
    t.bos_id = r.get<int64_t>(tok, "bos_id", t.bos_id, w, "an integer");
    t.file = r.get<std::string>(tok, "file", t.file, w, "a path");
  }
  validate(c);
  return c;
}

DataConfig load_data_config(const std::string& path,
                            const std::vector<std::pair<std::string, std::string>>& overrides) {
  return parse_data_config(read_file(path), path, overrides);
}

}  // namespace dfssm::data
