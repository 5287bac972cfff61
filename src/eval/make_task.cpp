#include "eval/make_task.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "distill/data/loader.h"
#include "distill/data/manifest.h"
#include "distill/data/shard.h"
#include "distill/data/util.h"
#include "eval/text.h"

namespace fs = std::filesystem;

namespace dfssm::eval {

namespace {

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string l; std::getline(ss, l);) out.push_back(l);
  return out;
}

std::string indent_of(const std::string& l) { return l.substr(0, l.find_first_not_of(" \t")); }
std::string content_of(const std::string& l) {
  const auto b = l.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return l.substr(b, rstrip_length(l) - b);
}

// A portable deterministic generator (std distributions differ between standard libraries).
struct Rng {
  uint64_t s;
  uint64_t next() { return s = data::splitmix64(s); }
  uint64_t below(uint64_t n) { return next() % n; }
};

}  // namespace

std::vector<nlohmann::ordered_json> make_nextline_task(const std::vector<std::string>& texts,
                                                       const std::vector<std::string>& names,
                                                       const MakeTaskOptions& opt) {
  DFSSM_CHECK(opt.kind == "nextline", "make-task: unknown kind '", opt.kind, "' (known: nextline)");
  DFSSM_CHECK(opt.distractors == "other-files" || opt.distractors == "same-file",
              "make-task: distractors must be other-files or same-file, got '", opt.distractors, "'");
  DFSSM_CHECK(opt.choices >= 2 && opt.n >= 1, "make-task: needs n >= 1 and choices >= 2");
  DFSSM_CHECK(texts.size() == names.size(), "make-task: ", texts.size(), " texts but ", names.size(), " names");
  struct Cand {
    size_t doc, line;
  };
  std::vector<std::vector<std::string>> lines(texts.size());
  std::vector<Cand> cands;
  std::vector<std::vector<size_t>> per_doc(texts.size());
  for (size_t d = 0; d < texts.size(); ++d) {
    lines[d] = split_lines(texts[d]);
    std::set<std::string> seen;
    for (size_t i = 0; i < lines[d].size(); ++i) {
      const auto c = content_of(lines[d][i]);
      const int64_t n = code_points(c);
      if (n < opt.min_line_chars || n > opt.max_line_chars || !seen.insert(c).second) continue;
      per_doc[d].push_back(i);
      if (i >= 2) cands.push_back({d, i});
    }
  }
  DFSSM_CHECK(!cands.empty(), "make-task: no candidate lines (", texts.size(), " documents)");
  const size_t docs_with = size_t(std::count_if(per_doc.begin(), per_doc.end(), [](auto& v) { return !v.empty(); }));
  DFSSM_CHECK(opt.distractors == "same-file" || docs_with >= 2, "make-task: other-files distractors need at least 2 documents");
  Rng rng{opt.seed * 0x9E3779B97F4A7C15ull + 1};
  for (size_t i = cands.size(); i > 1; --i) std::swap(cands[i - 1], cands[rng.below(i)]);  // Fisher-Yates
  // Spread the items over the documents: at most ceil(2n / documents) per document.
  const size_t cap = std::max<size_t>(1, (2 * size_t(opt.n) + docs_with - 1) / docs_with);
  std::vector<size_t> used(texts.size(), 0);
  std::vector<nlohmann::ordered_json> out;
  for (const auto& c : cands) {
    if (int64_t(out.size()) >= opt.n) break;
    if (used[c.doc] >= cap) continue;
    const auto& L = lines[c.doc];
    const std::string real = L[c.line], indent = indent_of(real), content = content_of(real);
    // Context: the preceding lines, at most context_lines and max_context_bytes, ending in "\n".
    std::string ctx;
    for (size_t k = c.line; k > 0 && c.line - k < size_t(opt.context_lines); --k) {
      const std::string cand = L[k - 1] + "\n" + ctx;
      if (int64_t(cand.size()) > opt.max_context_bytes && !ctx.empty()) break;
      ctx = cand;
    }
    if (rstrip_length(ctx) == 0) continue;  // nothing but whitespace before the line
    // Distractors.
    std::vector<std::string> dis;
    std::set<std::string> taken = {content};
    for (int tries = 0; int64_t(dis.size()) < opt.choices - 1 && tries < 200; ++tries) {
      size_t d = c.doc;
      if (opt.distractors == "other-files") {
        d = rng.below(texts.size());
        if (d == c.doc || per_doc[d].empty()) continue;
      }
      const size_t li = per_doc[d][rng.below(per_doc[d].size())];
      if (d == c.doc && li == c.line) continue;
      const auto dc = content_of(lines[d][li]);
      if (!taken.insert(dc).second) continue;
      dis.push_back(indent + dc);
    }
    if (int64_t(dis.size()) < opt.choices - 1) continue;
    const int64_t gold = int64_t(rng.below(uint64_t(opt.choices)));
    std::vector<std::string> choices;
    for (int64_t k = 0, di = 0; k < opt.choices; ++k) choices.push_back(k == gold ? real : dis[size_t(di++)]);
    nlohmann::ordered_json j;
    j["context"] = ctx;
    j["choices"] = choices;
    j["gold"] = gold;
    j["target_delimiter"] = "";
    j["source"] = names[c.doc] + ":" + std::to_string(c.line + 1);
    out.push_back(std::move(j));
    ++used[c.doc];
  }
  DFSSM_CHECK(!out.empty(), "make-task: could not build any item from ", texts.size(), " documents");
  return out;
}

std::vector<std::string> dataset_texts(const std::string& dir, const std::string& split, std::vector<std::string>* names) {
  const auto m = data::read_manifest(dir);
  DFSSM_CHECK(m.tokenizer_type == "sentencepiece" && !m.tokenizer_file.empty(), dir,
              ": the dataset has no SentencePiece tokenizer, so its documents cannot be decoded to text");
  const auto tok = Tokenizer::from_file((fs::path(dir) / m.tokenizer_file).string());
  std::vector<std::string> out;
  int64_t k = 0;
  for (const auto& sh : data::open_split(dir, m, split)) {
    const auto off = sh->doc_offsets();
    for (size_t d = 0; d + 1 < off.size(); ++d, ++k) {
      std::vector<int32_t> ids(off[d + 1] - off[d]);
      sh->read(int64_t(off[d]), int64_t(ids.size()), ids.data());
      if (!ids.empty() && ids.back() == m.eos_id) ids.pop_back();
      if (m.add_bos && !ids.empty() && ids.front() == m.bos_id) ids.erase(ids.begin());
      out.push_back(tok.decode(ids));
      if (names) names->push_back(split + " doc " + std::to_string(k));
    }
  }
  return out;
}

void write_jsonl(const std::string& path, const std::vector<nlohmann::ordered_json>& lines) {
  std::string s;
  for (const auto& j : lines) s += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  write_file_atomic(path, s);
}

}  // namespace dfssm::eval
