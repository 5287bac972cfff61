#include "eval/tasks.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "distill/data/corpus.h"
#include "distill/data/loader.h"
#include "distill/data/manifest.h"
#include "distill/data/shard.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace dfssm::eval {

namespace {

const std::vector<std::string> kLayouts = {"auto", "lm", "generic", "hellaswag", "piqa", "arc", "winogrande", "lambada"};

std::string ext_of(const std::string& p) {
  auto e = fs::path(p).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return e;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DFSSM_CHECK(f, "cannot open task file '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Python's str.strip() on both ends.
std::string py_strip(const std::string& s) {
  const size_t end = rstrip_length(s);
  size_t b = 0;
  while (b < end && uint8_t(s[b]) < 0x80 && is_py_space(uint8_t(s[b]))) ++b;  // leading ASCII whitespace
  return s.substr(b, end - b);
}

// lm-eval hellaswag preprocess().
std::string hellaswag_pre(std::string t) {
  t = py_strip(t);
  for (size_t p; (p = t.find(" [title]")) != std::string::npos;) t.replace(p, 8, ". ");
  t = std::regex_replace(t, std::regex("\\[[^\\n]*?\\]"), "");
  std::string out;  // str.replace("  ", " "): one non-overlapping pass
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == ' ' && i + 1 < t.size() && t[i + 1] == ' ') {
      out += ' ';
      ++i;
    } else {
      out += t[i];
    }
  }
  return out;
}

// Python's str.capitalize() for ASCII letters (first upper, the rest lower).
std::string py_capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); ++i) s[i] = char(i == 0 ? std::toupper(uint8_t(s[i])) : std::tolower(uint8_t(s[i])));
  return s;
}

struct LineCtx {
  const std::string* file;
  int64_t line;
};

[[noreturn]] void bad_line(const LineCtx& c, const std::string& what) {
  throw Error(*c.file + ":" + std::to_string(c.line) + ": " + what);
}

const json& field(const json& j, const char* key, const LineCtx& c) {
  if (!j.contains(key)) bad_line(c, std::string("missing field \"") + key + "\"");
  return j.at(key);
}

std::string str_field(const json& j, const char* key, const LineCtx& c) {
  const auto& v = field(j, key, c);
  if (!v.is_string()) bad_line(c, std::string("field \"") + key + "\" must be a string");
  return v.get<std::string>();
}

int64_t int_of(const json& v, const char* key, const LineCtx& c) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_string()) {  // labels stored as "0", "1", ...
    const auto s = v.get<std::string>();
    if (!s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char ch) { return std::isdigit(ch); }))
      return std::stoll(s);
  }
  bad_line(c, std::string("field \"") + key + "\" must be an integer index");
}

std::vector<std::string> str_list(const json& v, const char* key, const LineCtx& c) {
  if (!v.is_array()) bad_line(c, std::string("field \"") + key + "\" must be a list of strings");
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) bad_line(c, std::string("field \"") + key + "\" must be a list of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

std::string detect_layout(const json& j) {
  auto has = [&](const char* k) { return j.contains(k); };
  if (has("context") && has("choices")) return "generic";
  if (has("ctx_a") && has("endings")) return "hellaswag";
  if (has("goal") && has("sol1")) return "piqa";
  if (has("question") && has("answerKey")) return "arc";
  if (has("sentence") && has("option1")) return "winogrande";
  if (has("text")) return "lm";
  return "";
}

// One JSONL object -> one multiple-choice / loglikelihood document.
McDoc mc_doc(const json& j, const std::string& layout, const TaskSpec& spec, const LineCtx& c) {
  McDoc d;
  std::string ctx;
  std::vector<std::string> choices;
  std::string delim = spec.target_delimiter;
  if (layout == "generic") {
    ctx = str_field(j, "context", c);
    choices = str_list(field(j, "choices", c), "choices", c);
    if (j.contains("target_delimiter")) {
      if (!j["target_delimiter"].is_string()) bad_line(c, "field \"target_delimiter\" must be a string");
      delim = j["target_delimiter"].get<std::string>();
    }
    const char* gk = j.contains("gold") ? "gold" : j.contains("label") ? "label" : "answer";
    const auto& g = field(j, gk, c);
    if (g.is_array()) {
      for (const auto& e : g) d.gold.push_back(int_of(e, gk, c));
    } else if (g.is_string() && std::find(choices.begin(), choices.end(), g.get<std::string>()) != choices.end()) {
      d.gold.push_back(std::find(choices.begin(), choices.end(), g.get<std::string>()) - choices.begin());
    } else {
      d.gold.push_back(int_of(g, gk, c));
    }
  } else if (layout == "hellaswag") {
    const std::string raw = str_field(j, "activity_label", c) + ": " + str_field(j, "ctx_a", c) + " " +
                            py_capitalize(str_field(j, "ctx_b", c));
    ctx = hellaswag_pre(raw);
    for (auto& e : str_list(field(j, "endings", c), "endings", c)) choices.push_back(hellaswag_pre(e));
    d.gold.push_back(int_of(field(j, "label", c), "label", c));
  } else if (layout == "piqa") {
    ctx = "Question: " + str_field(j, "goal", c) + "\nAnswer:";
    choices = {str_field(j, "sol1", c), str_field(j, "sol2", c)};
    d.gold.push_back(int_of(field(j, "label", c), "label", c));
  } else if (layout == "arc") {
    const auto& q = field(j, "question", c);
    std::vector<std::string> labels;
    if (q.is_string()) {  // Hugging Face allenai/ai2_arc
      ctx = "Question: " + q.get<std::string>() + "\nAnswer:";
      const auto& ch = field(j, "choices", c);
      choices = str_list(field(ch, "text", c), "choices.text", c);
      labels = str_list(field(ch, "label", c), "choices.label", c);
    } else {  // AI2's original JSONL: question.stem, question.choices[{text, label}]
      ctx = "Question: " + str_field(q, "stem", c) + "\nAnswer:";
      for (const auto& e : field(q, "choices", c)) {
        choices.push_back(str_field(e, "text", c));
        labels.push_back(str_field(e, "label", c));
      }
    }
    const auto key = str_field(j, "answerKey", c);
    const auto it = std::find(labels.begin(), labels.end(), key);
    if (it == labels.end()) bad_line(c, "answerKey \"" + key + "\" is not one of the choice labels");
    d.gold.push_back(it - labels.begin());
  } else if (layout == "winogrande") {
    // lm-eval's partial evaluation: one context per option (the sentence up to "_" with the
    // option filled in), the same continuation (the rest of the sentence) for both.
    const auto s = str_field(j, "sentence", c);
    const auto idx = s.find('_');
    if (idx == std::string::npos) bad_line(c, "sentence has no \"_\" blank");
    const std::string target = py_strip(s.substr(idx + 1));
    for (const char* k : {"option1", "option2"}) {
      d.contexts.push_back(s.substr(0, idx) + str_field(j, k, c));
      d.continuations.push_back(delim + target);
      d.choices.push_back(d.contexts.back());
    }
    const auto a = str_field(j, "answer", c);
    if (a != "1" && a != "2") bad_line(c, "answer must be \"1\" or \"2\", got \"" + a + "\"");
    d.gold.push_back(a == "1" ? 0 : 1);
    return d;
  } else if (layout == "lambada") {
    // lm-eval lambada_openai: context = all words but the last (split on " "), target = " " + last.
    const auto t = str_field(j, "text", c);
    const auto sp = t.rfind(' ');
    if (sp == std::string::npos) bad_line(c, "lambada text has no space (needs a context and a last word)");
    d.contexts.push_back(t.substr(0, sp));
    d.continuations.push_back(" " + t.substr(sp + 1));
    d.choices.push_back(t.substr(sp + 1));
    return d;
  } else {
    bad_line(c, "unknown layout '" + layout + "'");
  }
  if (choices.size() < 2) bad_line(c, "needs at least 2 choices, got " + std::to_string(choices.size()));
  for (const auto& ch : choices)
    if (ch.empty()) bad_line(c, "a choice is empty (acc_norm divides by its length)");
  for (auto g : d.gold)
    if (g < 0 || g >= int64_t(choices.size()))
      bad_line(c, "gold index " + std::to_string(g) + " is outside the " + std::to_string(choices.size()) + " choices");
  if (d.gold.empty()) bad_line(c, "no gold answer");
  for (const auto& ch : choices) {
    d.contexts.push_back(ctx);
    d.continuations.push_back(delim + ch);
    d.choices.push_back(ch);
  }
  return d;
}

void check_ids(const std::vector<int32_t>& ids, const TokenContext& tc, const std::string& where) {
  for (auto t : ids)
    DFSSM_CHECK(t >= 0 && (tc.vocab_size <= 0 || t < tc.vocab_size), where, ": token id ", t,
                " is outside the models' vocabulary (size ", tc.vocab_size, ")");
}

void load_dataset(Task& t, const TokenContext& tc) {
  const auto& dir = t.spec.path;
  const auto m = data::read_manifest(dir);
  DFSSM_CHECK(tc.vocab_size <= 0 || m.vocab_size <= tc.vocab_size, dir, ": the dataset's vocabulary (", m.vocab_size,
              ") is larger than the models' (", tc.vocab_size, "): a different tokenizer");
  if (tc.tok && m.tokenizer_type == "sentencepiece")
    DFSSM_CHECK(m.tokenizer_sha256 == tc.tok->sha256(), dir, " was tokenized with a different tokenizer (sha256 ",
                m.tokenizer_sha256.substr(0, 12), ") than the one in use (", tc.tok->origin(), ", sha256 ",
                tc.tok->sha256().substr(0, 12), ")");
  const bool can_decode = tc.tok && m.tokenizer_type == "sentencepiece";
  auto shards = data::open_split(dir, m, t.spec.split);
  for (const auto& sh : shards) {
    const auto off = sh->doc_offsets();
    for (size_t d = 0; d + 1 < off.size(); ++d) {
      LmDoc doc;
      doc.tokens.resize(off[d + 1] - off[d]);
      sh->read(int64_t(off[d]), int64_t(doc.tokens.size()), doc.tokens.data());
      if (!doc.tokens.empty() && doc.tokens.back() == m.eos_id) doc.tokens.pop_back();
      if (m.add_bos && !doc.tokens.empty() && doc.tokens.front() == m.bos_id) doc.tokens.erase(doc.tokens.begin());
      if (can_decode) doc.text = tc.tok->decode(doc.tokens), doc.has_text = true;
      t.lm.push_back(std::move(doc));
    }
  }
  t.source_detail = "split " + t.spec.split + " of " + dir;
}

void load_token_file(Task& t, const TokenContext& tc) {
  DFSSM_CHECK(tc.eos_id >= 0, t.spec.path, ": a token file is split into documents at EOS, but no EOS id is known");
  const auto lay = data::token_file_layout(t.spec.path, t.spec.token_dtype);
  const auto bytes = read_all(t.spec.path);
  DFSSM_CHECK(lay.data_offset + lay.count * uint64_t(lay.item_size) <= bytes.size(), t.spec.path, ": truncated");
  LmDoc cur;
  auto flush = [&] {
    if (!cur.tokens.empty()) t.lm.push_back(std::move(cur));
    cur = LmDoc{};
  };
  for (uint64_t i = 0; i < lay.count; ++i) {
    const char* p = bytes.data() + lay.data_offset + i * uint64_t(lay.item_size);
    int64_t v = 0;
    if (lay.item_size == 2) v = lay.is_signed ? int64_t(*reinterpret_cast<const int16_t*>(p)) : *reinterpret_cast<const uint16_t*>(p);
    else if (lay.item_size == 4) v = lay.is_signed ? int64_t(*reinterpret_cast<const int32_t*>(p)) : *reinterpret_cast<const uint32_t*>(p);
    else v = *reinterpret_cast<const int64_t*>(p);
    DFSSM_CHECK(v >= 0 && v < (1ll << 31), t.spec.path, ": token ", i, " = ", v, " is not a valid id");
    if (v == tc.eos_id) flush();
    else cur.tokens.push_back(int32_t(v));
  }
  flush();
  if (tc.tok)
    for (auto& d : t.lm) d.text = tc.tok->decode(d.tokens), d.has_text = true;
  t.source_detail = "token file " + t.spec.path;
}

void load_jsonl(Task& t, const TokenContext& tc, const std::string& layout_in) {
  std::ifstream f(t.spec.path);
  DFSSM_CHECK(f, "cannot open task file '", t.spec.path, "'");
  std::string layout = layout_in;
  std::string line;
  for (int64_t ln = 1; std::getline(f, line); ++ln) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const LineCtx c{&t.spec.path, ln};
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      bad_line(c, std::string("not valid JSON (") + e.what() + ")");
    }
    if (!j.is_object()) bad_line(c, "not a JSON object");
    if (layout == "auto") {
      layout = detect_layout(j);
      if (layout.empty())
        bad_line(c, "cannot tell the layout from the fields (expected context+choices+gold, or a hellaswag / piqa / "
                    "arc / winogrande / lambada / text layout; set it with PATH:LAYOUT)");
    }
    if (layout == "lm") {
      LmDoc d;
      d.text = str_field(j, t.spec.field.c_str(), c);
      d.has_text = true;
      t.lm.push_back(std::move(d));
    } else {
      auto d = mc_doc(j, layout, t.spec, c);
      d.id = t.spec.path + ":" + std::to_string(ln);
      t.mc.push_back(std::move(d));
    }
  }
  DFSSM_CHECK(layout != "auto", t.spec.path, ": no documents (the file is empty)");
  t.layout = layout;
  t.source_detail = t.spec.path;
}

}  // namespace

TaskSpec parse_task_spec(const std::string& s0) {
  TaskSpec t;
  std::string s = s0;
  if (auto eq = s.find('='); eq != std::string::npos && s.find('/') > eq) {
    t.name = s.substr(0, eq);
    s = s.substr(eq + 1);
  }
  if (auto colon = s.rfind(':'); colon != std::string::npos) {
    const auto lay = s.substr(colon + 1);
    if (std::find(kLayouts.begin(), kLayouts.end(), lay) != kLayouts.end()) {
      t.layout = lay;
      s = s.substr(0, colon);
    }
  }
  DFSSM_CHECK(!s.empty(), "empty task in '", s0, "' (expected [name=]PATH[:layout])");
  t.path = s;
  return t;
}

std::vector<TaskSpec> parse_task_list(const std::string& csv) {
  std::vector<TaskSpec> out;
  std::stringstream ss(csv);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(parse_task_spec(item));
  return out;
}

Task load_task(const TaskSpec& spec, const TokenContext& tc, int64_t limit) {
  DFSSM_CHECK(std::find(kLayouts.begin(), kLayouts.end(), spec.layout) != kLayouts.end(), "task '", spec.path,
              "': unknown layout '", spec.layout, "' (known: auto, lm, generic, hellaswag, piqa, arc, winogrande, lambada)");
  DFSSM_CHECK(fs::exists(spec.path), "task file or dataset '", spec.path, "' not found");
  Task t;
  t.spec = spec;
  const bool dir = fs::is_directory(spec.path);
  const auto ext = ext_of(spec.path);
  t.name = spec.name;
  if (t.name.empty()) {
    auto p = fs::path(spec.path);
    if (p.filename().empty()) p = p.parent_path();
    t.name = dir ? p.filename().string() + "_" + spec.split : p.stem().string();
  }
  if (dir) {
    DFSSM_CHECK(spec.layout == "auto" || spec.layout == "lm", spec.path, ": a dataset directory is an lm task");
    load_dataset(t, tc);
    t.layout = "lm";
  } else if (ext == ".jsonl" || ext == ".ndjson" || ext == ".json") {
    load_jsonl(t, tc, spec.layout);
  } else if (ext == ".bin" || ext == ".npy") {
    load_token_file(t, tc);
    t.layout = "lm";
  } else {
    DFSSM_CHECK(spec.layout == "auto" || spec.layout == "lm", spec.path, ": a text file is an lm task (one document)");
    LmDoc d;
    d.text = read_all(spec.path);
    d.has_text = true;
    t.lm.push_back(std::move(d));
    t.layout = "lm";
    t.source_detail = spec.path;
  }
  t.kind = t.layout == "lm" ? "lm" : t.layout == "lambada" ? "loglikelihood" : "multiple_choice";
  // Limit (lm-eval's --limit: the first N documents), then tokenize text documents.
  t.original_docs = int64_t(t.kind == "lm" ? t.lm.size() : t.mc.size());
  const int64_t lim = spec.limit >= 0 ? spec.limit : limit;
  if (lim > 0) {
    if (int64_t(t.lm.size()) > lim) t.lm.resize(size_t(lim));
    if (int64_t(t.mc.size()) > lim) t.mc.resize(size_t(lim));
  }
  for (auto& d : t.lm) {
    if (d.tokens.empty() && d.has_text && !d.text.empty()) {
      DFSSM_CHECK(tc.tok, spec.path, ": text documents need a tokenizer (pass --tokenizer FILE.model)");
      d.tokens = tc.tok->encode(d.text);
      t.retokenized = true;
    }
    check_ids(d.tokens, tc, spec.path);
  }
  const size_t before = t.lm.size();
  t.lm.erase(std::remove_if(t.lm.begin(), t.lm.end(), [](const LmDoc& d) { return d.tokens.empty(); }), t.lm.end());
  t.skipped_docs = int64_t(before - t.lm.size());
  DFSSM_CHECK(!t.lm.empty() || !t.mc.empty(), "task '", t.name, "' (", spec.path, ") has no documents");
  return t;
}

}  // namespace dfssm::eval
