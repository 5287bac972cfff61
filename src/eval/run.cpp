#include "eval/run.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "distill/data/manifest.h"
#include "eval/report.h"
#include "eval/runtime_engine.h"
#include "eval/torch_engine.h"
#include "model/checkpoint.h"
#include "model/checkpoint_files.h"
#include "quant/layout.h"
#include "quant/student.h"
#include "runtime/model.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace dfssm::eval {

// ---- Config --------------------------------------------------------------------------------------

std::vector<std::string> EvalConfig::keys() {
  return {"teacher",    "student",      "student_checkpoint", "packed",     "init_only",     "tokenizer",
          "data",       "tasks",        "device",             "teacher_dtype", "threads",    "batch_size",
          "max_length", "limit",        "prefix_token",       "seed",       "output",        "plot",
          "check_export", "tolerance",  "check_limit",        "quiet"};
}

namespace {

bool parse_bool(const std::string& k, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  throw Error("eval option '" + k + "' must be true or false, got '" + v + "'");
}

int64_t parse_int(const std::string& k, const std::string& v, int64_t lo) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  DFSSM_CHECK(!v.empty() && end && *end == 0, "eval option '", k, "' must be an integer, got '", v, "'");
  DFSSM_CHECK(x >= lo, "eval option '", k, "' must be at least ", lo, ", got ", x);
  return x;
}

double parse_double(const std::string& k, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  DFSSM_CHECK(!v.empty() && end && *end == 0 && std::isfinite(x) && x >= 0, "eval option '", k,
              "' must be a non-negative number, got '", v, "'");
  return x;
}

std::string did_you_mean(const std::string& k) {
  std::string best;
  size_t bd = 99;
  for (const auto& c : EvalConfig::keys()) {  // edit distance
    std::vector<size_t> d(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) d[j] = j;
    for (size_t i = 1; i <= k.size(); ++i) {
      size_t prev = d[0];
      d[0] = i;
      for (size_t j = 1; j <= c.size(); ++j) {
        const size_t cur = d[j];
        d[j] = std::min({d[j] + 1, d[j - 1] + 1, prev + (k[i - 1] == c[j - 1] ? 0 : 1)});
        prev = cur;
      }
    }
    if (d[c.size()] < bd) bd = d[c.size()], best = c;
  }
  return bd <= 3 ? " (did you mean '" + best + "'?)" : "";
}

}  // namespace

void EvalConfig::set(const std::string& k, const std::string& v) {
  if (k == "teacher") teacher = v;
  else if (k == "student") student = v;
  else if (k == "student_checkpoint") student_checkpoint = v;
  else if (k == "packed") packed = v;
  else if (k == "init_only") init_only = parse_bool(k, v);
  else if (k == "tokenizer") tokenizer = v;
  else if (k == "data") data = v;
  else if (k == "tasks") tasks = parse_task_list(v);
  else if (k == "device") {
    DFSSM_CHECK(v == "cpu" || v == "cuda", "eval option 'device' must be cpu or cuda, got '", v, "'");
    device = v;
  } else if (k == "teacher_dtype") {
    DFSSM_CHECK(v == "fp32" || v == "fp16" || v == "bf16", "eval option 'teacher_dtype' must be fp32, fp16 or bf16");
    teacher_dtype = v;
  } else if (k == "threads") threads = int(parse_int(k, v, 0));
  else if (k == "batch_size") batch_size = parse_int(k, v, 1);
  else if (k == "max_length") max_length = parse_int(k, v, 2);
  else if (k == "limit") limit = parse_int(k, v, 0);
  else if (k == "prefix_token") {
    DFSSM_CHECK(v == "auto" || v == "bos" || v == "eos" || (!v.empty() && std::all_of(v.begin(), v.end(), ::isdigit)),
                "eval option 'prefix_token' must be auto, bos, eos or a token id, got '", v, "'");
    prefix_token = v;
  } else if (k == "seed") seed = uint64_t(parse_int(k, v, 0));
  else if (k == "output") output = v;
  else if (k == "plot") plot = parse_bool(k, v);
  else if (k == "check_export") check_export = parse_bool(k, v);
  else if (k == "tolerance") tolerance = parse_double(k, v);
  else if (k == "check_limit") check_limit = parse_int(k, v, 1);
  else if (k == "quiet") quiet = parse_bool(k, v);
  else throw Error("unknown eval option '" + k + "'" + did_you_mean(k));
}

EvalConfig load_eval_config(const std::string& path, const std::vector<std::pair<std::string, std::string>>& overrides) {
  EvalConfig c;
  if (!path.empty()) {
    DFSSM_CHECK(fs::exists(path), "eval config '", path, "' not found");
    YAML::Node root;
    try {
      root = YAML::LoadFile(path);
    } catch (const YAML::Exception& e) {
      throw Error(path + ": not valid YAML (" + e.what() + ")");
    }
    DFSSM_CHECK(root.IsMap() || root.IsNull(), path, ": expected a mapping of eval options");
    for (auto it = root.begin(); root.IsMap() && it != root.end(); ++it) {
      const auto key = it->first.as<std::string>();
      const YAML::Node v = it->second;
      try {
        if (key == "tasks" && v.IsSequence()) {
          c.tasks.clear();
          for (const auto& t : v) {
            if (t.IsScalar()) {
              c.tasks.push_back(parse_task_spec(t.as<std::string>()));
              continue;
            }
            DFSSM_CHECK(t.IsMap(), "each task is a string or a mapping");
            TaskSpec s;
            for (auto f = t.begin(); f != t.end(); ++f) {
              const auto fk = f->first.as<std::string>();
              const auto fv = f->second.as<std::string>();
              if (fk == "name") s.name = fv;
              else if (fk == "path") s.path = fv;
              else if (fk == "layout") s.layout = fv;
              else if (fk == "split") s.split = fv;
              else if (fk == "field") s.field = fv;
              else if (fk == "target_delimiter") s.target_delimiter = fv;
              else if (fk == "token_dtype") s.token_dtype = fv;
              else if (fk == "limit") s.limit = parse_int("tasks.limit", fv, 0);
              else
                throw Error("unknown task key '" + fk +
                            "' (known: name, path, layout, split, field, target_delimiter, token_dtype, limit)");
            }
            DFSSM_CHECK(!s.path.empty(), "a task needs a path");
            c.tasks.push_back(s);
          }
        } else {
          DFSSM_CHECK(v.IsScalar() || v.IsNull(), "expected a single value");
          c.set(key, v.IsNull() ? "" : v.as<std::string>());
        }
      } catch (const Error& e) {
        throw Error(path + ": " + key + ": " + e.what());
      } catch (const YAML::Exception& e) {
        throw Error(path + ": " + key + ": " + e.what());
      }
    }
  }
  for (const auto& [k, v] : overrides) c.set(k, v);
  return c;
}

// ---- Loading -------------------------------------------------------------------------------------

namespace {

void say(const EvalConfig& c, const std::string& s) {
  if (!c.quiet) std::printf("%s\n", s.c_str()), std::fflush(stdout);
}

bool is_packed_file(const std::string& p) { return fs::is_regular_file(p); }
bool is_student_dir(const std::string& p) { return fs::is_directory(p) && fs::exists(fs::path(p) / "quant.json"); }

at::Device device_of(const EvalConfig& c) {
  if (c.device == "cuda") {
    DFSSM_CHECK(at::hasCUDA(), "--device cuda: this LibTorch has no CUDA (or no GPU is visible)");
    return at::Device(at::kCUDA);
  }
  return at::Device(at::kCPU);
}

struct Resolved {
  std::string packed, checkpoint;  // the student's packed file and trainer checkpoint, either may be ""
};

Resolved resolve_student(const EvalConfig& c) {
  Resolved r;
  if (!c.student.empty()) {
    DFSSM_CHECK(fs::exists(c.student), "student '", c.student, "' not found");
    if (is_packed_file(c.student)) r.packed = c.student;
    else if (is_student_dir(c.student)) r.checkpoint = c.student;
    else
      throw Error("student '" + c.student +
                  "' is neither a packed .dfssm.safetensors file nor a student checkpoint directory (with quant.json)");
  }
  if (!c.student_checkpoint.empty()) {
    DFSSM_CHECK(is_student_dir(c.student_checkpoint), "student_checkpoint '", c.student_checkpoint,
                "' is not a student checkpoint directory (config.json + quant.json + student.safetensors)");
    if (r.checkpoint.empty()) r.checkpoint = c.student_checkpoint;
  }
  if (!c.packed.empty()) {
    DFSSM_CHECK(is_packed_file(c.packed), "packed file '", c.packed, "' not found");
    if (r.packed.empty()) r.packed = c.packed;
  }
  return r;
}

std::string dataset_of(const EvalConfig& c) {
  if (!c.data.empty()) return c.data;
  for (const auto& t : c.tasks)
    if (fs::is_directory(t.path) && fs::exists(fs::path(t.path) / "manifest.json")) return t.path;
  return "";
}

// The tokenizer: --tokenizer, the dataset's, the packed file's, the checkpoint's recorded one.
std::unique_ptr<Tokenizer> find_tokenizer(const EvalConfig& c, const Resolved& r,
                                          const std::shared_ptr<runtime::Model>& packed, const quant::Student* ckpt) {
  if (!c.tokenizer.empty()) return std::make_unique<Tokenizer>(Tokenizer::from_file(c.tokenizer));
  const auto ds = dataset_of(c);
  if (!ds.empty()) {
    const auto m = data::read_manifest(ds);
    if (m.tokenizer_type == "sentencepiece" && !m.tokenizer_file.empty())
      return std::make_unique<Tokenizer>(Tokenizer::from_file((fs::path(ds) / m.tokenizer_file).string()));
  }
  if (packed && packed->metadata().count("tokenizer_model") && !packed->metadata().at("tokenizer_model").empty())
    return std::make_unique<Tokenizer>(Tokenizer::from_packed_metadata(packed->metadata(), r.packed));
  if (ckpt && ckpt->meta.count("tokenizer_path") && fs::exists(ckpt->meta.at("tokenizer_path")))
    return std::make_unique<Tokenizer>(Tokenizer::from_file(ckpt->meta.at("tokenizer_path")));
  return nullptr;
}

int32_t prefix_token_of(const EvalConfig& c, const Tokenizer* tok, const std::string& dataset) {
  int64_t bos = -1, eos = -1;
  if (tok) bos = tok->bos_id(), eos = tok->eos_id();
  else if (!dataset.empty()) {
    const auto m = data::read_manifest(dataset);
    bos = m.bos_id, eos = m.eos_id;
  }
  if (c.prefix_token == "auto") return int32_t(bos >= 0 ? bos : eos);
  if (c.prefix_token == "bos") {
    DFSSM_CHECK(bos >= 0, "prefix_token bos: the tokenizer has no BOS");
    return int32_t(bos);
  }
  if (c.prefix_token == "eos") {
    DFSSM_CHECK(eos >= 0, "prefix_token eos: the tokenizer has no EOS");
    return int32_t(eos);
  }
  return int32_t(std::stoll(c.prefix_token));
}

double packed_mb(const Mamba2Config& cfg, const quant::QuantConfig& q) {
  return double(quant::packed_data_bytes(quant::packed_layout(cfg, q))) / 1e6;
}

void check_same_vocab(const std::string& a_name, const Mamba2Config& a, const std::string& b_name, const Mamba2Config& b) {
  DFSSM_CHECK(a.vocab_size == b.vocab_size && a.padded_vocab() == b.padded_vocab(), "vocabulary mismatch: ", a_name,
              " has vocab_size ", a.vocab_size, " (padded ", a.padded_vocab(), "), ", b_name, " has ", b.vocab_size,
              " (padded ", b.padded_vocab(), ")");
}

void check_tokenizer(const Tokenizer& tok, const std::string& model_name, const Mamba2Config& cfg,
                     const std::string& model_tok_sha) {
  DFSSM_CHECK(tok.vocab_size() <= cfg.vocab_size, "vocabulary mismatch: tokenizer ", tok.origin(), " has ",
              tok.vocab_size(), " pieces but ", model_name, " has vocab_size ", cfg.vocab_size);
  DFSSM_CHECK(model_tok_sha.empty() || model_tok_sha == tok.sha256(), "tokenizer mismatch: ", model_name,
              " was trained with tokenizer sha256 ", model_tok_sha.substr(0, 12), "…, but ", tok.origin(), " has ",
              tok.sha256().substr(0, 12), "…");
}

std::string python_exe() {
  if (const char* p = std::getenv("DFSSM_PYTHON"); p && *p) return p;
  std::vector<std::string> cands = {".venv/bin/python"};
#ifdef DFSSM_SOURCE_DIR
  cands.push_back(std::string(DFSSM_SOURCE_DIR) + "/.venv/bin/python");
#endif
  for (const auto& c : cands)
    if (fs::exists(c)) return c;
  return "python3";
}

std::string plot_script() {
#ifdef DFSSM_SOURCE_DIR
  if (fs::exists(std::string(DFSSM_SOURCE_DIR) + "/scripts/plot_eval.py")) return std::string(DFSSM_SOURCE_DIR) + "/scripts/plot_eval.py";
#endif
  return fs::exists("scripts/plot_eval.py") ? "scripts/plot_eval.py" : "";
}

std::string shell_quote(const std::string& s) {
  std::string o = "'";
  for (char ch : s) o += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return o + "'";
}

nlohmann::ordered_json config_json(const EvalConfig& c, const EvalOptions& o) {
  nlohmann::ordered_json j;
  j["teacher"] = c.teacher, j["student"] = c.student, j["init_only"] = c.init_only, j["device"] = c.device;
  j["teacher_dtype"] = c.teacher_dtype, j["batch_size"] = c.batch_size, j["max_length"] = c.max_length;
  j["limit"] = c.limit ? nlohmann::ordered_json(c.limit) : nlohmann::ordered_json(nullptr);
  j["prefix_token"] = c.prefix_token, j["prefix_token_id"] = o.prefix_token, j["seed"] = c.seed;
  j["num_fewshot"] = 0;
  return j;
}

}  // namespace

// ---- run_eval ------------------------------------------------------------------------------------

EvalOutcome run_eval(const EvalConfig& c) {
  const auto t0 = Clock::now();
  at::NoGradGuard ng;
  if (c.threads > 0) at::set_num_threads(c.threads);
  const auto dev = device_of(c);
  const auto rs = resolve_student(c);
  DFSSM_CHECK(!c.teacher.empty() || !c.student.empty(), "nothing to evaluate: give a teacher and/or a student");

  std::unique_ptr<Mamba2Model> teacher, teacher32;
  std::shared_ptr<runtime::Model> packed;
  std::unique_ptr<quant::Student> ckpt, init_only;
  if (!c.teacher.empty()) {
    teacher = load_model(c.teacher, parse_dtype(c.teacher_dtype), dev);
    say(c, "teacher: " + c.teacher + " (" + std::to_string(teacher->config().num_params()) + " parameters)");
  }
  const bool student_packed = !c.student.empty() && !rs.packed.empty() && rs.packed == c.student;
  if (!c.student.empty()) {
    if (student_packed) {
      packed = runtime::Model::load(rs.packed);
#ifndef DFSSM_HAVE_CUDA_RUNTIME
      if (c.device == "cuda")
        say(c, "note: the packed file runs on the CPU runtime (this build has no CUDA runtime: DFSSM_CUDA=ON)");
#endif
    } else {
      ckpt = quant::load_student(rs.checkpoint, dev);
    }
  }
  const Mamba2Config* scfg = packed ? &packed->config() : ckpt ? &ckpt->model->config() : nullptr;
  const quant::QuantConfig* sq = packed ? &packed->quant() : ckpt ? &ckpt->quant : nullptr;
  if (teacher && scfg) check_same_vocab("teacher " + c.teacher, teacher->config(), "student " + c.student, *scfg);
  auto tok = find_tokenizer(c, rs, packed, ckpt.get());
  if (tok) {
    if (teacher) check_tokenizer(*tok, "teacher " + c.teacher, teacher->config(), "");
    if (packed) {
      const auto& m = packed->metadata();
      check_tokenizer(*tok, "student " + rs.packed, packed->config(), m.count("tokenizer_sha256") ? m.at("tokenizer_sha256") : "");
    }
    if (ckpt)
      check_tokenizer(*tok, "student " + rs.checkpoint, ckpt->model->config(),
                      ckpt->meta.count("tokenizer_sha256") ? ckpt->meta.at("tokenizer_sha256") : "");
  }
  if (teacher && sq && c.init_only) {
    const Mamba2Model* src = teacher.get();
    if (teacher->dtype() != at::kFloat) src = (teacher32 = load_model(c.teacher, at::kFloat, dev)).get();
    init_only = quant::make_student(*src, *sq, c.seed, dev);
  }

  // Engines, in table order: teacher | student | init-only.
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<ModelUnderTest> models;
  int teacher_idx = -1;
  if (teacher) {
    engines.push_back(std::make_unique<TorchEngine>(*teacher, c.batch_size));
    teacher_idx = 0;
    models.push_back({"teacher", "teacher", c.teacher, engines.back().get(),
                      double(teacher->config().num_params()) * 2 / 1e6, "fp16 params"});
  }
  if (packed) {
#ifdef DFSSM_HAVE_CUDA_RUNTIME
    if (c.device == "cuda")
      engines.push_back(std::make_unique<CudaRuntimeEngine>(packed));
    else
#endif
      engines.push_back(std::make_unique<RuntimeEngine>(packed, c.threads));
    models.push_back({"student", "student", rs.packed, engines.back().get(), double(fs::file_size(rs.packed)) / 1e6,
                      "packed file"});
  } else if (ckpt) {
    engines.push_back(std::make_unique<TorchEngine>(*ckpt->model, c.batch_size));
    models.push_back({"student", "student", rs.checkpoint, engines.back().get(),
                      packed_mb(ckpt->model->config(), ckpt->quant), "packed tensors"});
  }
  if (init_only) {
    engines.push_back(std::make_unique<TorchEngine>(*init_only->model, c.batch_size));
    models.push_back({"init_only", "init-only", "", engines.back().get(),
                      packed_mb(init_only->model->config(), init_only->quant), "packed tensors"});
  }

  // Tasks.
  const auto ds = dataset_of(c);
  std::vector<TaskSpec> specs = c.tasks;
  if (specs.empty() && !c.data.empty()) specs.push_back(parse_task_spec(c.data));
  DFSSM_CHECK(!specs.empty(), "no tasks: pass --tasks (a dataset directory, .txt, .jsonl, .bin/.npy) or --data DIR");
  TokenContext tc;
  tc.tok = tok.get();
  tc.vocab_size = models[0].engine->vocab_size();
  tc.eos_id = tok ? tok->eos_id() : -1;
  if (tc.eos_id < 0 && !ds.empty()) tc.eos_id = int32_t(data::read_manifest(ds).eos_id);
  EvalOptions opt;
  opt.max_length = c.max_length;
  opt.prefix_token = prefix_token_of(c, tok.get(), ds);
  opt.progress = [&](const std::string& s) { say(c, "  " + s); };
  opt.threads = c.threads;
  EvalOutcome out;
  for (const auto& spec : specs) {
    const auto task = load_task(spec, tc, c.limit);
    say(c, "task " + task.name + ": " + task.kind + ", " + std::to_string(task.kind == "lm" ? task.lm.size() : task.mc.size()) +
               " documents (" + task.source_detail + ")");
    out.tasks.push_back(evaluate_task(task, models, teacher_idx, tok.get(), opt));
    for (size_t m = 0; m < models.size(); ++m) {
      const auto& r = out.tasks.back().models[m];
      char b[256];
      std::snprintf(b, sizeof b, "  %-10s %8.1f examples/s  %9.0f tokens/s  (%.2f s, %s)", models[m].role.c_str(),
                    r.examples_per_s(), r.tokens_per_s(), r.seconds, models[m].engine->describe().c_str());
      say(c, b);
    }
  }
  for (const auto& m : models) out.roles.push_back(m.role), out.labels.push_back(m.label);
  out.table = markdown_table(out.tasks, models);
  if (!c.quiet) std::printf("\n%s", out.table.c_str());
  if (!c.output.empty()) {
    RunInfo run;
    run.config = config_json(c, opt);
    run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    run.date = std::to_string(double(std::time(nullptr)));
    write_outputs(c.output, out.tasks, models, teacher_idx, run);
    say(c, "\nresults: " + c.output + "/{" + [&] {
      std::string s;
      for (const auto& m : models) s += (s.empty() ? "" : ",") + m.role;
      return s;
    }() + "}/results.json, " + c.output + "/summary.json");
    if (c.plot) {
      const auto script = plot_script();
      const std::string png = c.output + "/eval.png";
      int rc = -1;
      if (!script.empty())
        rc = std::system((shell_quote(python_exe()) + " " + shell_quote(script) + " " + shell_quote(c.output + "/summary.json") +
                          " -o " + shell_quote(png) + " > /dev/null 2>&1").c_str());
      say(c, rc == 0 ? "plot: " + png : "plot skipped (scripts/plot_eval.py needs Python with matplotlib)");
    }
  }
  return out;
}

// ---- check_export --------------------------------------------------------------------------------

ExportCheck check_export(const EvalConfig& c) {
  at::NoGradGuard ng;
  if (c.threads > 0) at::set_num_threads(c.threads);
  const auto rs = resolve_student(c);
  DFSSM_CHECK(!rs.packed.empty() && !rs.checkpoint.empty(),
              "--check-export needs both the student checkpoint and its packed file: --student FILE.dfssm.safetensors "
              "--student-checkpoint DIR (or --student DIR --packed FILE)");
  auto st = quant::load_student(rs.checkpoint, at::kCPU);
  auto packed = runtime::Model::load(rs.packed);
  DFSSM_CHECK(st->model->config().to_json() == packed->config().to_json(), "the packed file ", rs.packed,
              " has a different model config than the checkpoint ", rs.checkpoint, " (not exported from it?)");
  DFSSM_CHECK(st->quant.to_json() == packed->quant().to_json(), "the packed file ", rs.packed,
              " has a different quant config than the checkpoint ", rs.checkpoint, " (not exported from it?)");
  // The file stores conv1d and the norms in small_dtype, dense projections in fp16 (docs/format.md):
  // round the LibTorch student the same way, so both sides hold the same weights.
  for (auto& [key, t] : st->model->named_parameters()) {
    const bool dense_proj = key.find("_proj.weight") != std::string::npos;
    const bool small = key.find("conv1d") != std::string::npos || key.find("norm") != std::string::npos;
    if (dense_proj || (small && st->quant.small_dtype == "f16")) t.copy_(t.to(at::kHalf).to(at::kFloat));
  }
  TorchEngine te(*st->model, c.batch_size);
  RuntimeEngine re(packed, c.threads);
  const auto tok = find_tokenizer(c, rs, packed, st.get());
  const auto ds = dataset_of(c);
  EvalOptions opt;
  opt.max_length = c.max_length;
  opt.prefix_token = prefix_token_of(c, tok.get(), ds);
  if (opt.prefix_token < 0) opt.prefix_token = 0;
  std::vector<std::pair<std::string, std::vector<Request>>> sets;
  std::vector<TaskSpec> specs = c.tasks;
  if (specs.empty() && !c.data.empty()) specs.push_back(parse_task_spec(c.data));
  TokenContext tc;
  tc.tok = tok.get();
  tc.vocab_size = packed->config().vocab_size;
  tc.eos_id = tok ? tok->eos_id() : opt.prefix_token;
  for (auto spec : specs) {
    spec.limit = c.check_limit;
    const auto task = load_task(spec, tc, c.check_limit);
    sets.push_back({task.name, build_requests(task, tok.get(), opt).reqs});
  }
  if (sets.empty()) {  // no data: seeded random token sequences (4 x 300 tokens)
    std::mt19937_64 rng(c.seed + 12345);
    std::vector<Request> reqs;
    for (int s = 0; s < 4; ++s) {
      std::vector<int32_t> ids(300);
      for (auto& t : ids) t = int32_t(rng() % uint64_t(packed->config().vocab_size));
      for (auto& r : rolling_requests(ids, opt.prefix_token, std::min<int64_t>(c.max_length, 256))) reqs.push_back(r);
    }
    sets.push_back({"random-ids", std::move(reqs)});
  }
  ExportCheck out;
  out.passed = true;
  const int64_t V = te.vocab();
  DFSSM_CHECK(V == re.vocab(), "padded vocabularies differ: checkpoint ", V, ", packed file ", re.vocab());
  for (const auto& [name, reqs] : sets) {
    ExportCheck::Row row;
    row.task = name;
    std::vector<const Request*> ptrs;
    for (const auto& r : reqs) ptrs.push_back(&r);
    std::vector<std::vector<float>> tl(reqs.size());
    te.run(ptrs, [&](size_t i, const float* l) { tl[i].assign(l, l + reqs[i].targets.size() * size_t(V)); });
    re.run(ptrs, [&](size_t i, const float* l) {
      const auto& r = reqs[i];
      for (size_t j = 0; j < r.targets.size(); ++j) {
        const float* a = tl[i].data() + j * size_t(V);
        const float* b = l + j * size_t(V);
        const auto sa = row_stats(a, V), sb = row_stats(b, V);
        row.ce_torch -= log_prob(a, sa, r.targets[j]);
        row.ce_runtime -= log_prob(b, sb, r.targets[j]);
        double num = 0, den = 0;
        for (int64_t v = 0; v < V; ++v) {
          const double d = double(a[v]) - double(b[v]);
          row.max_abs_logit_diff = std::max(row.max_abs_logit_diff, std::fabs(d));
          num += d * d, den += double(a[v]) * double(a[v]);
        }
        row.max_rel_logit_diff = std::max(row.max_rel_logit_diff, std::sqrt(num / std::max(den, 1e-30)));
        ++row.tokens;
      }
    });
    if (row.tokens > 0) row.ce_torch /= double(row.tokens), row.ce_runtime /= double(row.tokens);
    const double d = std::fabs(row.ce_torch - row.ce_runtime);
    out.worst = std::max(out.worst, d);
    if (!(d <= c.tolerance)) out.passed = false;
    out.rows.push_back(row);
  }
  return out;
}

}  // namespace dfssm::eval
