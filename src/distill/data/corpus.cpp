#include "distill/data/corpus.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "distill/data/util.h"

namespace fs = std::filesystem;

namespace dfssm::data {
namespace {

constexpr uint64_t kTokenBlock = 1 << 20;  // ids read per block from a token file

std::string lower_ext(const std::string& path) {
  std::string e = fs::path(path).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return e;
}

SourceFormat format_of(const SourceSpec& s, const std::string& path) {
  if (s.format == "text") return SourceFormat::Text;
  if (s.format == "jsonl") return SourceFormat::Jsonl;
  if (s.format == "tokens") return SourceFormat::Tokens;
  const std::string e = lower_ext(path);
  if (e == ".jsonl" || e == ".ndjson") return SourceFormat::Jsonl;
  if (e == ".bin" || e == ".npy") return SourceFormat::Tokens;
  return SourceFormat::Text;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

}  // namespace

const char* format_name(SourceFormat f) {
  switch (f) {
    case SourceFormat::Text: return "text";
    case SourceFormat::Jsonl: return "jsonl";
    case SourceFormat::Tokens: return "tokens";
  }
  return "?";
}

std::string python_path(const std::string& python, const std::string& which) {
  const std::string cmd = shell_quote(python) + " -c " +
                          shell_quote("import sysconfig; print(sysconfig.get_paths()['" + which + "'])") +
                          " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  DFSSM_CHECK(p, "cannot run '", python, "' to locate its ", which, " directory (", std::strerror(errno), ")");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  DFSSM_CHECK(rc == 0 && !out.empty(), "could not locate Python's ", which, " directory with '", python,
              " -c \"import sysconfig; ...\"'; set the config key python= to a Python 3 interpreter");
  std::error_code ec;
  DFSSM_CHECK(fs::is_directory(out, ec), "Python's ", which, " directory '", out, "' does not exist");
  return out;
}

std::vector<CorpusFile> expand_sources(const DataConfig& cfg, std::vector<std::string>* resolved) {
  std::vector<CorpusFile> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < cfg.sources.size(); ++i) {
    const SourceSpec& s = cfg.sources[i];
    std::string spec = s.path;
    if (!s.python.empty()) {
      const std::string root = python_path(cfg.python, s.python);
      spec = s.path.empty() ? root : root + "/" + s.path;
    }
    if (resolved) resolved->push_back(spec);
    const auto found = expand_path(spec, s.exclude);
    DFSSM_CHECK(!found.empty(), "source ", i, " ('", s.describe(), "' = '", spec,
                "') matched no files; fix its path or glob (globs: *, ?, **)");
    for (const auto& f : found) {
      if (!seen.insert(f.path).second) continue;
      CorpusFile cf;
      cf.path = f.path;
      cf.key = f.rel;
      cf.source = i;
      cf.format = format_of(s, f.path);
      std::error_code ec;
      cf.bytes = fs::file_size(f.path, ec);
      if (ec) cf.bytes = 0;
      out.push_back(std::move(cf));
    }
  }
  return out;
}

TokenFileLayout token_file_layout(const std::string& path, const std::string& dtype) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  DFSSM_CHECK(!ec, path, ": cannot stat (", ec.message(), ")");
  TokenFileLayout L;
  if (lower_ext(path) == ".npy") {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    DFSSM_CHECK(f, path, ": cannot open (", std::strerror(errno), ")");
    unsigned char pre[12] = {};
    const size_t got = std::fread(pre, 1, sizeof pre, f.get());
    DFSSM_CHECK(got >= 10 && std::memcmp(pre, "\x93NUMPY", 6) == 0, path, ": not a .npy file (bad magic)");
    const int major = pre[6];
    DFSSM_CHECK(major >= 1 && major <= 3, path, ": unsupported .npy version ", major);
    uint64_t hlen, hstart;
    if (major == 1) {
      hlen = uint64_t(pre[8]) | uint64_t(pre[9]) << 8;
      hstart = 10;
    } else {
      DFSSM_CHECK(got == 12, path, ": truncated .npy header");
      hlen = uint64_t(pre[8]) | uint64_t(pre[9]) << 8 | uint64_t(pre[10]) << 16 | uint64_t(pre[11]) << 24;
      hstart = 12;
    }
    DFSSM_CHECK(hstart + hlen <= size, path, ": truncated .npy header");
    std::string h(hlen, '\0');
    std::fseek(f.get(), long(hstart), SEEK_SET);
    DFSSM_CHECK(std::fread(h.data(), 1, hlen, f.get()) == hlen, path, ": truncated .npy header");
    auto field = [&](const char* key) -> std::string {
      const size_t k = h.find(std::string("'") + key + "'");
      DFSSM_CHECK(k != std::string::npos, path, ": .npy header has no '", key, "'");
      size_t v = h.find(':', k);
      DFSSM_CHECK(v != std::string::npos, path, ": malformed .npy header");
      ++v;
      while (v < h.size() && h[v] == ' ') ++v;
      if (h[v] == '(') return h.substr(v + 1, h.find(')', v) - v - 1);
      if (h[v] == '\'') return h.substr(v + 1, h.find('\'', v + 1) - v - 1);
      size_t e = v;
      while (e < h.size() && h[e] != ',' && h[e] != '}') ++e;
      return h.substr(v, e - v);
    };
    const std::string descr = field("descr");
    DFSSM_CHECK(field("fortran_order").find("False") != std::string::npos, path,
                ": Fortran-order .npy arrays are not supported; save with np.ascontiguousarray");
    DFSSM_CHECK(descr.size() == 3 && (descr[0] == '<' || descr[0] == '|'), path, ": .npy dtype '", descr,
                "' is not supported; use little-endian uint16, uint32, int16, int32, int64 or uint64");
    L.dtype = descr.substr(1);
    uint64_t count = 1;
    const std::string shape = field("shape");
    size_t p = 0;
    bool any = false;
    while (p < shape.size()) {
      while (p < shape.size() && (shape[p] == ' ' || shape[p] == ',')) ++p;
      if (p >= shape.size()) break;
      size_t e = p;
      while (e < shape.size() && std::isdigit(static_cast<unsigned char>(shape[e]))) ++e;
      DFSSM_CHECK(e > p, path, ": malformed .npy shape (", shape, ")");
      count *= std::stoull(shape.substr(p, e - p));
      any = true;
      p = e;
    }
    if (!any) count = 1;  // a 0-d array holds one element
    L.count = count;
    L.data_offset = hstart + hlen;
  } else {
    DFSSM_CHECK(!dtype.empty(), path, ": raw token files need the source's dtype (uint16 or uint32)");
    L.dtype = dtype == "uint16" ? "u2" : "u4";
    L.data_offset = 0;
  }
  if (L.dtype == "u2") L.item_size = 2;
  else if (L.dtype == "u4") L.item_size = 4;
  else if (L.dtype == "u8") L.item_size = 8;
  else if (L.dtype == "i2") L.item_size = 2, L.is_signed = true;
  else if (L.dtype == "i4") L.item_size = 4, L.is_signed = true;
  else if (L.dtype == "i8") L.item_size = 8, L.is_signed = true;
  else throw Error(str(path, ": token dtype '", L.dtype, "' is not supported; use uint16, uint32, int16, int32, int64 or uint64"));
  if (lower_ext(path) == ".npy") {
    DFSSM_CHECK(L.data_offset + L.count * uint64_t(L.item_size) <= size, path, ": truncated .npy: the header says ",
                L.count, " ids (", L.count * uint64_t(L.item_size), " bytes) but the file has ", size - L.data_offset,
                " data bytes");
  } else {
    DFSSM_CHECK(size % uint64_t(L.item_size) == 0, path, ": size ", size, " is not a multiple of ", L.item_size,
                " bytes (dtype ", dtype, "); is the dtype right?");
    L.count = size / uint64_t(L.item_size);
  }
  return L;
}

CorpusReader::CorpusReader(const DataConfig& cfg, std::vector<CorpusFile> files, int64_t vocab_size, int64_t eos_id,
                           Warn warn, bool text_only)
    : cfg_(cfg),
      files_(std::move(files)),
      stats_(files_.size()),
      vocab_size_(vocab_size),
      eos_id_(eos_id),
      warn_(std::move(warn)),
      text_only_(text_only) {}

CorpusReader::~CorpusReader() {
  if (tok_) std::fclose(tok_);
}

std::string CorpusReader::utf8_policy(const CorpusFile& f) const {
  const std::string& s = cfg_.sources[f.source].on_invalid_utf8;
  return s.empty() ? cfg_.on_invalid_utf8 : s;
}

void CorpusReader::advance() {
  if (jsonl_open_) {
    jsonl_.close();
    jsonl_open_ = false;
  }
  if (tok_) {
    std::fclose(tok_);
    tok_ = nullptr;
  }
  ++fi_;
}

bool CorpusReader::next(Unit* u) {
  while (true) {
    if (!pending_.empty()) {
      *u = std::move(pending_.front());
      pending_.pop_front();
      return true;
    }
    if (fi_ >= files_.size()) return false;
    const CorpusFile& f = files_[fi_];
    switch (f.format) {
      case SourceFormat::Text:
        if (next_text(u)) return true;
        break;
      case SourceFormat::Jsonl:
        if (next_jsonl(u)) return true;
        break;
      case SourceFormat::Tokens:
        if (text_only_) {
          advance();
        } else if (!fill_tokens()) {
          advance();
        }
        break;
    }
  }
}

bool CorpusReader::next_text(Unit* u) {
  const CorpusFile& f = files_[fi_];
  FileStats& st = stats_[fi_];
  std::string text = read_file(f.path);
  const size_t fi = fi_;
  advance();
  if (text.empty()) {
    ++st.skipped_empty;
    return false;
  }
  size_t bad = 0;
  if (!valid_utf8(text, &bad)) {
    const size_t line = size_t(std::count(text.begin(), text.begin() + long(bad), '\n')) + 1;
    if (utf8_policy(f) == "fail")
      throw Error(str(f.path, ": not valid UTF-8 (line ", line, ", byte offset ", bad,
                      "); convert it to UTF-8, exclude it, or set on_invalid_utf8=skip"));
    ++st.skipped_invalid_utf8;
    if (warn_) warn_(str("skipping ", f.path, ": not valid UTF-8 (line ", line, ", byte offset ", bad, ")"));
    return false;
  }
  ++st.documents;
  st.text_bytes += text.size();
  u->kind = Unit::kText;
  u->file = fi;
  u->doc = 0;
  u->text = std::move(text);
  u->tokens.clear();
  u->begin = u->end = true;
  return true;
}

bool CorpusReader::next_jsonl(Unit* u) {
  const CorpusFile& f = files_[fi_];
  FileStats& st = stats_[fi_];
  const SourceSpec& spec = cfg_.sources[f.source];
  if (!jsonl_open_) {
    jsonl_.open(f.path, std::ios::binary);
    DFSSM_CHECK(jsonl_.is_open(), f.path, ": cannot open for reading (", std::strerror(errno), ")");
    jsonl_open_ = true;
    line_ = 0;
  }
  std::string line;
  while (std::getline(jsonl_, line)) {
    ++line_;
    if (is_blank(line)) continue;
    const std::string where = str(f.path, ":", line_);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      if (e.id == 101 && std::string(e.what()).find("UTF-8") != std::string::npos) {
        if (utf8_policy(f) == "fail")
          throw Error(str(where, ": not valid UTF-8; fix the file or set on_invalid_utf8=skip"));
        ++st.skipped_invalid_utf8;
        if (warn_) warn_(str("skipping ", where, ": not valid UTF-8"));
        continue;
      }
      throw Error(str(where, ": invalid JSON (", e.what(), ")"));
    }
    const auto it = j.is_object() ? j.find(spec.field) : j.end();
    if (!j.is_object() || it == j.end() || it->is_null()) {
      if (spec.on_missing_field == "skip") {
        ++st.skipped_missing_field;
        continue;
      }
      throw Error(str(where, ": ", j.is_object() ? "" : "not a JSON object, so ", "no field '", spec.field,
                      "'; set the source's field: to the key holding the text, or on_missing_field: skip"));
    }
    DFSSM_CHECK(it->is_string(), where, ": field '", spec.field, "' is a ", it->type_name(), ", not a string");
    std::string text = it->get<std::string>();
    if (text.empty()) {
      ++st.skipped_empty;
      continue;
    }
    u->kind = Unit::kText;
    u->file = fi_;
    u->doc = line_ - 1;  // the line number: stable when lines are skipped
    st.text_bytes += text.size();
    u->text = std::move(text);
    u->tokens.clear();
    u->begin = u->end = true;
    ++st.documents;
    return true;
  }
  DFSSM_CHECK(jsonl_.eof(), f.path, ": read error after line ", line_);
  advance();
  return false;
}

// Reads one block of ids into pending_ units; false when the file is done.
bool CorpusReader::fill_tokens() {
  const CorpusFile& f = files_[fi_];
  FileStats& st = stats_[fi_];
  const SourceSpec& spec = cfg_.sources[f.source];
  if (!tok_) {
    layout_ = token_file_layout(f.path, spec.dtype);
    tok_ = std::fopen(f.path.c_str(), "rb");
    DFSSM_CHECK(tok_, f.path, ": cannot open for reading (", std::strerror(errno), ")");
    DFSSM_CHECK(std::fseek(tok_, long(layout_.data_offset), SEEK_SET) == 0, f.path, ": seek failed");
    tok_pos_ = 0;
    tok_doc_ = 0;
    tok_in_doc_ = false;
    if (layout_.count == 0) ++st.skipped_empty;
  }
  if (tok_pos_ >= layout_.count) {
    if (tok_in_doc_) {  // the last document had no trailing EOS
      Unit u;
      u.kind = Unit::kTokens;
      u.file = fi_;
      u.doc = tok_doc_;
      u.begin = false;
      u.end = true;
      pending_.push_back(std::move(u));
      ++st.documents;
      tok_in_doc_ = false;
      return true;
    }
    return false;
  }
  const uint64_t n = std::min(kTokenBlock, layout_.count - tok_pos_);
  raw_.resize(n * uint64_t(layout_.item_size));
  DFSSM_CHECK(std::fread(raw_.data(), 1, raw_.size(), tok_) == raw_.size(), f.path, ": unexpected end of file at id ",
              tok_pos_, " (the file is truncated)");
  const bool split = spec.split_on_eos && eos_id_ >= 0;
  Unit cur;
  bool have = false;  // `cur` holds a run of the current document
  auto start_run = [&] {
    cur = Unit();
    cur.kind = Unit::kTokens;
    cur.file = fi_;
    cur.doc = tok_doc_;
    cur.begin = !tok_in_doc_;
    cur.end = false;
    tok_in_doc_ = true;
    have = true;
  };
  const char* p = raw_.data();
  for (uint64_t k = 0; k < n; ++k, p += layout_.item_size) {
    int64_t v;
    if (layout_.item_size == 2) {
      uint16_t x;
      std::memcpy(&x, p, 2);
      v = layout_.is_signed ? int64_t(int16_t(x)) : int64_t(x);
    } else if (layout_.item_size == 4) {
      uint32_t x;
      std::memcpy(&x, p, 4);
      v = layout_.is_signed ? int64_t(int32_t(x)) : int64_t(x);
    } else {
      uint64_t x;
      std::memcpy(&x, p, 8);
      v = (!layout_.is_signed && x > uint64_t(INT64_MAX)) ? INT64_MAX : int64_t(x);
    }
    if (v < 0 || v >= vocab_size_)
      throw Error(str(f.path, ": token id ", v, " at index ", tok_pos_ + k, " is outside the vocabulary 0..",
                      vocab_size_ - 1, " (vocab_size ", vocab_size_,
                      "); check the source's dtype and the tokenizer's vocab_size"));
    if (!have) start_run();
    if (split && v == eos_id_) {  // ends the document (the EOS is re-added by the shard writer)
      cur.end = true;
      pending_.push_back(std::move(cur));
      have = false;
      tok_in_doc_ = false;
      ++tok_doc_;
      ++st.documents;
      continue;
    }
    cur.tokens.push_back(int32_t(v));
  }
  if (have) pending_.push_back(std::move(cur));
  tok_pos_ += n;
  return true;
}

}  // namespace dfssm::data
