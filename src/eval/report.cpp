#include "eval/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "core/safetensors.h"

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace dfssm::eval {

namespace {

ojson num_or_na(double v) { return std::isfinite(v) ? ojson(v) : ojson("N/A"); }

int role_index(const std::vector<ModelUnderTest>& models, const std::string& role) {
  for (size_t i = 0; i < models.size(); ++i)
    if (models[i].role == role) return int(i);
  return -1;
}

std::string fmt(double v) {
  if (!std::isfinite(v)) return "-";
  char b[64];
  if (std::fabs(v) >= 1000) std::snprintf(b, sizeof b, "%.1f", v);
  else if (std::fabs(v) >= 100) std::snprintf(b, sizeof b, "%.2f", v);
  else std::snprintf(b, sizeof b, "%.4f", v);
  return b;
}

std::string fmt_delta(double v) {
  if (!std::isfinite(v)) return "";
  const auto s = fmt(v);
  return v >= 0 ? "+" + s : s;
}

}  // namespace

ojson lm_eval_results(const std::vector<TaskResult>& tasks, const std::vector<ModelUnderTest>& models, size_t m,
                      const RunInfo& run) {
  ojson j;
  ojson results = ojson::object(), configs = ojson::object(), versions = ojson::object(), nshot = ojson::object(),
        hib = ojson::object(), nsamples = ojson::object(), groups = ojson::object(), tput = ojson::object();
  for (const auto& t : tasks) {
    const auto& r = t.models[m];
    ojson e;
    e["alias"] = t.name;
    ojson h = ojson::object();
    for (const auto& mt : r.metrics) {
      e[mt.name + ",none"] = num_or_na(mt.value);
      e[mt.name + "_stderr,none"] = num_or_na(mt.stderr_);
      h[mt.name] = mt.higher_is_better;
    }
    results[t.name] = e;
    groups[t.name] = ojson::array();
    configs[t.name] = t.config;
    versions[t.name] = 1.0;
    nshot[t.name] = 0;
    hib[t.name] = h;
    nsamples[t.name] = {{"original", t.original_docs}, {"effective", t.docs}};
    tput[t.name] = {{"seconds", r.seconds},           {"examples", r.examples},
                    {"examples_per_s", r.examples_per_s()}, {"requests", r.requests},
                    {"tokens_fed", r.tokens_fed},     {"tokens_per_s", r.tokens_per_s()}};
  }
  j["results"] = results;
  j["group_subtasks"] = groups;
  j["configs"] = configs;
  j["versions"] = versions;
  j["n-shot"] = nshot;
  j["higher_is_better"] = hib;
  j["n-samples"] = nsamples;
  ojson cfg = run.config;
  cfg["model"] = "dfssm";
  cfg["model_args"] = "role=" + models[m].role + ",path=" + models[m].path;
  cfg["engine"] = models[m].engine->describe();
  j["config"] = cfg;
  j["date"] = run.date;
  j["total_evaluation_time_seconds"] = std::to_string(run.seconds);
  j["dfssm"] = {{"role", models[m].role}, {"label", models[m].label}, {"path", models[m].path},
                {"engine", models[m].engine->describe()}, {"size_mb", models[m].size_mb},
                {"size_note", models[m].size_note}, {"throughput", tput}};
  return j;
}

ojson summary_json(const std::vector<TaskResult>& tasks, const std::vector<ModelUnderTest>& models, int teacher,
                   const RunInfo& run) {
  ojson j;
  ojson ms = ojson::array();
  for (const auto& m : models)
    ms.push_back({{"role", m.role}, {"label", m.label}, {"path", m.path}, {"engine", m.engine->describe()},
                  {"size_mb", m.size_mb}, {"size_note", m.size_note}});
  j["models"] = ms;
  j["teacher"] = teacher >= 0 ? ojson(models[size_t(teacher)].role) : ojson(nullptr);
  ojson ts = ojson::object();
  for (const auto& t : tasks) {
    ojson e;
    e["kind"] = t.kind, e["layout"] = t.layout, e["source"] = t.source, e["docs"] = t.docs;
    e["original_docs"] = t.original_docs;
    ojson per = ojson::object();
    for (size_t m = 0; m < models.size(); ++m) {
      const auto& r = t.models[m];
      ojson x;
      for (const auto& mt : r.metrics) {
        x[mt.name] = num_or_na(mt.value);
        if (std::isfinite(mt.stderr_)) x[mt.name + "_stderr"] = mt.stderr_;
      }
      x["seconds"] = r.seconds, x["examples_per_s"] = r.examples_per_s(), x["tokens_per_s"] = r.tokens_per_s();
      x["tokens_scored"] = r.tokens_scored;
      if (!r.pos_n.empty()) {
        x["per_position"] = {{"count", r.pos_n}, {"nll", r.pos_nll}};
        if (!r.pos_kl.empty()) x["per_position"]["kl"] = r.pos_kl;
      }
      per[models[m].role] = x;
    }
    e["models"] = per;
    ts[t.name] = e;
  }
  j["tasks"] = ts;
  j["config"] = run.config;
  j["seconds"] = run.seconds;
  j["date"] = run.date;
  return j;
}

std::string markdown_table(const std::vector<TaskResult>& tasks, const std::vector<ModelUnderTest>& models) {
  const int ti = role_index(models, "teacher"), si = role_index(models, "student");
  const bool delta = ti >= 0 && si >= 0;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> head = {"task", "metric"};
  for (const auto& m : models) head.push_back(m.label);
  if (delta) head.push_back("Δ student − teacher");
  auto add_row = [&](std::vector<std::string> r) {
    r.resize(head.size());
    rows.push_back(std::move(r));
  };
  for (const auto& t : tasks) {
    std::vector<std::string> names;  // union of metric names, in order of appearance
    for (const auto& r : t.models)
      for (const auto& mt : r.metrics)
        if (std::find(names.begin(), names.end(), mt.name) == names.end()) names.push_back(mt.name);
    bool first = true;
    for (const auto& n : names) {
      std::vector<std::string> r = {first ? t.name + " (" + std::to_string(t.docs) + ")" : "", n};
      first = false;
      for (const auto& mr : t.models) {
        const auto* mt = mr.find(n);
        std::string cell = mt ? fmt(mt->value) : "-";
        if (mt && std::isfinite(mt->stderr_)) cell += " ± " + fmt(mt->stderr_);
        r.push_back(cell);
      }
      if (delta) {
        const auto *a = t.models[size_t(si)].find(n), *b = t.models[size_t(ti)].find(n);
        r.push_back(a && b ? fmt_delta(a->value - b->value) : "");
      }
      add_row(r);
    }
    std::vector<std::string> r = {"", "examples/s"};
    for (const auto& mr : t.models) {
      char b[32];
      std::snprintf(b, sizeof b, "%.1f", mr.examples_per_s());
      r.push_back(b);
    }
    add_row(r);
  }
  std::vector<std::string> sz = {"model", "size MB"}, eng = {"", "engine"};
  for (const auto& m : models) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f", m.size_mb);
    sz.push_back(b + (m.size_note.empty() ? "" : " (" + m.size_note + ")"));
    eng.push_back(m.engine->describe());
  }
  add_row(sz);
  add_row(eng);
  // Column widths (in code points, for the UTF-8 "±", "Δ" and "−").
  auto width = [](const std::string& s) {
    int64_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
  };
  std::vector<int64_t> w(head.size(), 3);
  for (size_t c = 0; c < head.size(); ++c) {
    w[c] = std::max(w[c], width(head[c]));
    for (const auto& r : rows) w[c] = std::max(w[c], width(r[c]));
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string s = "|";
    for (size_t c = 0; c < r.size(); ++c) s += " " + r[c] + std::string(size_t(w[c] - width(r[c])), ' ') + " |";
    return s + "\n";
  };
  std::string out = line(head) + "|";
  for (size_t c = 0; c < head.size(); ++c) out += std::string(size_t(w[c] + 2), '-') + "|";
  out += "\n";
  for (const auto& r : rows) out += line(r);
  return out;
}

void write_outputs(const std::string& dir, const std::vector<TaskResult>& tasks,
                   const std::vector<ModelUnderTest>& models, int teacher, const RunInfo& run) {
  fs::create_directories(dir);
  for (size_t m = 0; m < models.size(); ++m) {
    fs::create_directories(fs::path(dir) / models[m].role);
    write_file_atomic((fs::path(dir) / models[m].role / "results.json").string(),
                      lm_eval_results(tasks, models, m, run).dump(2, ' ', false, ojson::error_handler_t::replace) + "\n");
  }
  write_file_atomic((fs::path(dir) / "summary.json").string(), summary_json(tasks, models, teacher, run).dump(2, ' ', false, ojson::error_handler_t::replace) + "\n");
}

}  // namespace dfssm::eval
