#include "distill/job_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "distill/dist.h"
#include "model/checkpoint_files.h"

namespace fs = std::filesystem;

namespace dfssm::distill {

namespace {

void add_train_keys(std::vector<KeySpec>& s, const std::string& sec, bool distill) {
  auto k = [&](const std::string& name, char t, const std::string& def, const std::string& doc, double lo = -1e300,
               double hi = 1e300, std::vector<std::string> ch = {}) {
    s.push_back({sec + "." + name, t, def, doc, lo, hi, std::move(ch)});
  };
  k("steps", 'i', distill ? "300" : "400", "optimizer steps", 0, 1e12);
  k("batch_size", 'i', "8", "sequences per micro-batch (per process)", 1, 1e9);
  k("grad_accum", 'i', "1", "micro-batches per optimizer step", 1, 1e6);
  k("lr", 'f', distill ? "2e-3" : "3e-3", distill ? "peak learning rate of the sign latents W_lat" : "peak learning rate", 0, 10);
  if (distill) {
    k("lr_scales", 'f', "2e-3", "peak relative learning rate of the field, low-rank factors and their scales", 0, 10);
    k("lr_other", 'f', "5e-4", "peak relative learning rate of the embedding, conv1d, norms, A_log, D, dt_bias", 0, 10);
  }
  k("min_lr_ratio", 'f', "0.1", "final learning rate as a fraction of the peak", 0, 1);
  k("warmup_steps", 'i', "20", "linear warmup steps", 0, 1e12);
  k("schedule", 's', "cosine", "after warmup: cosine decay, wsd (constant then linear decay) or constant", 0, 0,
    {"cosine", "wsd", "constant"});
  k("wsd_decay_frac", 'f', "0.2", "wsd: fraction of the steps spent decaying", 0, 1);
  k("weight_decay", 'f', distill ? "0.0" : "0.1",
    distill ? "AdamW decay of W_lat only (never on scales)" : "AdamW decay of matrices (not of 1-D parameters)", 0, 10);
  k("beta1", 'f', "0.9", "AdamW beta1", 0, 0.999999);
  k("beta2", 'f', "0.95", "AdamW beta2", 0, 0.999999);
  k("eps", 'f', "1e-8", "AdamW epsilon", 0, 1);
  k("clip_grad_norm", 'f', "1.0", "clip the global gradient norm to this (0 = off)", 0, 1e9);
  k("spike_factor", 'f', "0", "skip the update when the grad norm exceeds this times its running mean (0 = off)", 0, 1e9);
  if (distill) {
    k("alpha", 'f', "1.0", "loss = alpha·T²·KL(p_t^T || p_s^T) + (1-alpha)·CE(data) + hidden_mse·MSE_hidden", 0, 1);
    k("temperature", 'f', "1.0", "distillation temperature T", 1e-3, 100);
    k("hidden_mse", 'f', "0", "weight of the MSE between normalised student and teacher residual streams (0 = off)", 0, 1e6);
    k("hidden_mse_layers", 's', "all", "layers whose output stream enters the hidden MSE: all, or indices like 0,11,23");
    k("teacher_cache", 's', "none",
      "top-k teacher log-probs in HDF5: none, write (run the teacher and store), read (no teacher forward; the "
      "file's capture settings must match), auto (read when a matching complete cache exists, else write)",
      0, 0, {"none", "write", "read", "auto"});
    k("teacher_cache_k", 'i', "64", "teacher tokens kept per position (KL over the renormalised top k)", 1, 1e6);
    k("teacher_cache_path", 's', "", "the cache file; empty = <run_dir>/teacher_topk.h5 (one file per process)");
  }
  k("activation_checkpointing", 's', "none",
    "recompute block activations in the backward pass: none, all, or layer indices like 0,1,2");
  k("activation_checkpointing_keep", 's', "ssd_output",
    "what a recomputed block keeps of its first forward besides its input: ssd_output (the SSD's output in the "
    "autocast dtype, B·L·d_inner·2 bytes per layer under bf16, so that the recomputation skips the SSD's chunk_scan; "
    "fused CUDA kernels only) or none",
    0, 0, {"ssd_output", "none"});
  k("activation_checkpointing_keep_in_proj", 's', "none",
    "recomputed layers that also keep their in_proj output (B·L·d_in_proj·2 bytes per layer under bf16: 0.52 GiB "
    "for the 1.3B at 16 x 2048), so that the recomputation skips in_proj's product: none, all, layer indices, or "
    "auto (the first recomputed layers, as many as memory_budget_gib leaves room for by the --dry-run estimate); "
    "CUDA only (memory for speed, where activation_checkpointing leaves room)");
  k("memory_budget_gib", 'f', "0",
    "GiB the --dry-run memory estimate may reach: --dry-run flags a config over it, and "
    "activation_checkpointing_keep_in_proj: auto fills it (0 = no budget)",
    0, 1e6);
  k("ssd_chunk", 'i', "0", "chunk length of the chunked SSD in training forwards (0 = the checkpoint's chunk_size; "
    "the fused CUDA kernels run 256 as 128); changes speed and memory, not the math", 0, 1 << 16);
  k("kl_chunk", 'i', "1024", "tokens per LM-head chunk: B·L·V fp32 logits never exist at once", 1, 1e9);
  k("dp_bucket_mb", 'f', "25", "data parallel: gradients all-reduced in buckets of this many MB as backward produces "
    "them (0 = one all-reduce after backward)", 0, 1e6);
  k("dp_backend", 's', "auto",
    "data parallel collectives: auto (nccl on CUDA, gloo on CPU, where built; else store), nccl, gloo (c10d "
    "ProcessGroupGloo), or store (through the rendezvous TCP store: slow, summed in rank order on every rank)",
    0, 0, {"auto", "nccl", "gloo", "store"});
  k("log_every", 'i', "10", "print and log metrics every N steps", 1, 1e9);
  k("eval_every", 'i', "100", "held-out evaluation every N steps (0 = only at the end; a fresh distillation with N > 0 also evaluates at step 0: the init-only student)", 0, 1e12);
  k("eval_batches", 'i', "8", "batches of the validation split per evaluation (0 = all)", 0, 1e9);
  k("checkpoint_every", 'i', "100", "checkpoint every N steps (and always at the end; 0 = only at the end)", 0, 1e12);
  k("keep_checkpoints", 'i', "2", "keep the newest K checkpoints", 1, 1e6);
  k("resume", 's', "auto", "auto (newest complete checkpoint), none, or a checkpoint directory");
}

std::vector<KeySpec> build_schema() {
  std::vector<KeySpec> s = {
      {"run_dir", 's', "runs/job", "directory of every output of the job (data, teacher, student, packed file, logs)"},
      {"seed", 'i', "0", "seeds model init, data order and the student's SVD sketch", 0, 9.2e18},
      {"device", 's', "cpu", "cpu or cuda", 0, 0, {"cpu", "cuda"}},
      {"threads", 'i', "0", "CPU threads for LibTorch (0 = all cores; CPU data-parallel ranks on one host share them out)", 0, 4096},
      {"data.dir", 's', "", "prepared dataset (manifest.json); empty = <run_dir>/data"},
      {"data.prepare", 's', "", "data config that `dfssm run` prepares into data.dir when it has no manifest"},
      {"data.seq_len", 'i', "256", "training window length in tokens", 2, 1e7},
      {"teacher.path", 's', "", "teacher checkpoint (dir or file); empty = <run_dir>/teacher, pretrained by `dfssm run`"},
      {"teacher.dtype", 's', "fp32", "teacher precision: fp32, fp16 or bf16 (bf16/fp16 need CUDA)", 0, 0,
       {"fp32", "fp16", "bf16"}},
      {"model.geometry", 's', "tiny", "geometry of a teacher pretrained from scratch (see `dfssm init --help`)"},
      {"eval.limit", 'i', "0", "`dfssm run`'s evaluation stage: first N held-out documents per task (0 = all)", 0, 1e9},
  };
  for (const char* f : {"d_model", "n_layer", "d_state", "headdim", "expand", "ngroups", "chunk_size"})
    s.push_back({std::string("model.") + f, 'i', "0", "override of the geometry's field (0 = keep)", 0, 1e9});
  const quant::QuantConfig q;
  const auto qj = nlohmann::json::parse(q.to_json());
  for (auto& [key, v] : qj.items()) {
    const char t = v.is_boolean() ? 'b' : v.is_number_integer() ? 'i' : v.is_number() ? 'f' : 's';
    std::vector<std::string> choices;
    if (key == "format")
      for (const auto& f : quant::formats()) choices.push_back(f.name);
    if (key == "ternary_scale") choices = {"per_row", "per_tensor"};
    if (key == "embedding") choices = {"int8", "fp16"};
    if (key == "small_dtype") choices = {"f16", "f32"};
    s.push_back({"student." + key, t, v.is_string() ? v.get<std::string>() : v.dump(), "quant option (docs/format.md)",
                 -1e300, 1e300, choices});
  }
  add_train_keys(s, "pretrain", false);
  add_train_keys(s, "distill", true);
  return s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> d(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) d[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = d[0];
    d[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cur = d[j];
      d[j] = std::min({d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1])});
      prev = cur;
    }
  }
  return d[b.size()];
}

std::string did_you_mean(const std::string& key) {
  std::string best;
  size_t bd = 1000;
  for (const auto& s : job_schema()) {
    const size_t d = edit_distance(key, s.key);
    if (d < bd) bd = d, best = s.key;
  }
  return bd <= std::max<size_t>(3, key.size() / 4) ? " (did you mean '" + best + "'?)" : "";
}

// Flattens a YAML map into dotted keys -> scalar text; non-scalars are errors.
void flatten(const YAML::Node& n, const std::string& prefix, const std::string& file,
             std::map<std::string, std::string>* out, std::vector<std::string>* errors) {
  for (auto it = n.begin(); it != n.end(); ++it) {
    const std::string key = prefix.empty() ? it->first.as<std::string>() : prefix + "." + it->first.as<std::string>();
    const YAML::Node v = it->second;
    if (v.IsMap()) flatten(v, key, file, out, errors);
    else if (v.IsScalar()) (*out)[key] = v.Scalar();
    else if (v.IsNull()) (*out)[key] = "";
    else errors->push_back(str(file, ": '", key, "' must be a single value, not a list"));
  }
}

void load_file(const std::string& path, std::map<std::string, std::string>* out, std::vector<std::string>* errors,
               std::set<std::string>* seen) {
  const std::string canon = fs::weakly_canonical(path).string();
  if (!seen->insert(canon).second) {
    errors->push_back(str(path, ": included twice (include cycle?)"));
    return;
  }
  if (!fs::exists(path)) {
    errors->push_back(str(path, ": job file not found"));
    return;
  }
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    errors->push_back(str(path, ": invalid YAML: ", e.what()));
    return;
  }
  if (root.IsNull()) return;
  if (!root.IsMap()) {
    errors->push_back(str(path, ": a job file must be a YAML mapping"));
    return;
  }
  for (const char* inc : {"include", "defaults"}) {
    if (!root[inc]) continue;
    std::vector<std::string> files;
    if (root[inc].IsSequence())
      for (const auto& f : root[inc]) files.push_back(f.as<std::string>());
    else files.push_back(root[inc].as<std::string>());
    for (const auto& f : files) {
      const fs::path p = fs::path(f).is_absolute() ? fs::path(f) : fs::path(path).parent_path() / f;
      load_file(p.string(), out, errors, seen);
    }
    root.remove(inc);
  }
  flatten(root, "", path, out, errors);
}

const KeySpec* find_key(const std::string& key) {
  for (const auto& s : job_schema())
    if (s.key == key) return &s;
  return nullptr;
}

// Checks one value against its spec; returns an error message or "".
std::string check_value(const KeySpec& s, const std::string& v) {
  YAML::Node n;
  try {
    n = YAML::Load(v.empty() ? "''" : v);
  } catch (...) {
    n = YAML::Node(v);
  }
  try {
    if (s.type == 'i') {
      const double d = double(n.as<int64_t>());
      if (d < s.min || d > s.max) return str("must be in [", s.min, ", ", s.max, "], got ", v);
    } else if (s.type == 'f') {
      const double d = n.as<double>();
      if (!(d >= s.min && d <= s.max)) return str("must be in [", s.min, ", ", s.max, "], got ", v);
    } else if (s.type == 'b') {
      (void)n.as<bool>();
    } else if (!s.choices.empty() && std::find(s.choices.begin(), s.choices.end(), v) == s.choices.end()) {
      std::string c;
      for (const auto& x : s.choices) c += (c.empty() ? "" : ", ") + x;
      return str("must be one of ", c, ", got '", v, "'");
    }
  } catch (const YAML::Exception&) {
    return str("must be ", s.type == 'i' ? "an integer" : s.type == 'f' ? "a number" : "true or false", ", got '", v, "'");
  }
  return "";
}

int64_t geti(const std::map<std::string, std::string>& m, const std::string& k) { return YAML::Load(m.at(k)).as<int64_t>(); }
double getf(const std::map<std::string, std::string>& m, const std::string& k) { return YAML::Load(m.at(k)).as<double>(); }

TrainConfig train_from(const std::map<std::string, std::string>& m, const std::string& sec, bool distill) {
  TrainConfig t;
  auto I = [&](const char* k) { return geti(m, sec + "." + k); };
  auto F = [&](const char* k) { return getf(m, sec + "." + k); };
  t.steps = I("steps");
  t.batch_size = I("batch_size");
  t.grad_accum = I("grad_accum");
  t.seq_len = geti(m, "data.seq_len");
  t.lr = F("lr");
  if (distill) {
    t.lr_scales = F("lr_scales"), t.lr_other = F("lr_other"), t.alpha = F("alpha"), t.temperature = F("temperature");
    t.hidden_mse = F("hidden_mse");
    t.hidden_mse_layers = m.at(sec + ".hidden_mse_layers");
    t.teacher_cache = m.at(sec + ".teacher_cache");
    t.teacher_cache_k = I("teacher_cache_k");
    t.teacher_cache_path = m.at(sec + ".teacher_cache_path");
  }
  t.min_lr_ratio = F("min_lr_ratio");
  t.warmup_steps = I("warmup_steps");
  t.schedule = m.at(sec + ".schedule");
  t.wsd_decay_frac = F("wsd_decay_frac");
  t.weight_decay = F("weight_decay");
  t.beta1 = F("beta1");
  t.beta2 = F("beta2");
  t.eps = F("eps");
  t.clip_grad_norm = F("clip_grad_norm");
  t.spike_factor = F("spike_factor");
  t.kl_chunk = I("kl_chunk");
  t.ssd_chunk = I("ssd_chunk");
  t.dp_bucket_mb = F("dp_bucket_mb");
  t.dp_backend = m.at(sec + ".dp_backend");
  t.activation_checkpointing = m.at(sec + ".activation_checkpointing");
  t.activation_checkpointing_keep = m.at(sec + ".activation_checkpointing_keep");
  t.activation_checkpointing_keep_in_proj = m.at(sec + ".activation_checkpointing_keep_in_proj");
  t.memory_budget_gib = F("memory_budget_gib");
  t.log_every = I("log_every");
  t.eval_every = I("eval_every");
  t.eval_batches = I("eval_batches");
  t.checkpoint_every = I("checkpoint_every");
  t.keep_checkpoints = I("keep_checkpoints");
  t.resume = m.at(sec + ".resume");
  return t;
}

}  // namespace

namespace {
// "none", "all" or a comma-separated list of layer indices -> one flag per layer.
std::vector<bool> parse_layers(const std::string& spec, int64_t n_layer, const char* what) {
  std::vector<bool> r(size_t(n_layer), spec == "all");
  if (spec == "none" || spec == "all") return r;
  std::stringstream ss(spec);
  for (std::string tok; std::getline(ss, tok, ',');) {
    if (tok.find_first_not_of(' ') == std::string::npos) continue;
    const long long i = std::stoll(tok);
    DFSSM_CHECK(i >= 0 && i < n_layer, what, ": layer ", i, " does not exist (the model has ", n_layer, " layers)");
    r[size_t(i)] = true;
  }
  return r;
}

bool is_layer_list(const std::string& s) {
  return s == "none" || s == "all" || s.find_first_not_of("0123456789, ") == std::string::npos;
}
}  // namespace

std::vector<bool> TrainConfig::recompute_layers(int64_t n_layer) const {
  return parse_layers(activation_checkpointing, n_layer, "activation_checkpointing");
}

std::vector<bool> TrainConfig::keep_in_proj_layers(int64_t n_layer) const {
  if (activation_checkpointing_keep_in_proj == "auto") return std::vector<bool>(size_t(n_layer), false);
  // Only recomputed layers keep anything.
  auto keep = parse_layers(activation_checkpointing_keep_in_proj, n_layer, "activation_checkpointing_keep_in_proj");
  const auto rec = recompute_layers(n_layer);
  for (size_t i = 0; i < keep.size(); ++i) keep[i] = keep[i] && i < rec.size() && rec[i];
  return keep;
}

std::vector<bool> TrainConfig::hidden_layers(int64_t n_layer) const {
  return parse_layers(hidden_mse_layers, n_layer, "hidden_mse_layers");
}

const std::vector<KeySpec>& job_schema() {
  static const std::vector<KeySpec> s = build_schema();
  return s;
}

std::string JobConfig::teacher_dir() const { return teacher_path.empty() ? run_dir + "/teacher" : teacher_path; }
std::string JobConfig::dataset_dir() const { return data_dir.empty() ? run_dir + "/data" : data_dir; }

std::string JobConfig::to_yaml() const {
  std::ostringstream os;
  for (const auto& s : job_schema()) os << s.key << ": " << (flat.at(s.key).empty() ? "''" : flat.at(s.key)) << "\n";
  return os.str();
}

JobConfig load_job(const std::string& path, const std::vector<std::pair<std::string, std::string>>& overrides,
                   std::vector<std::string>* errors) {
  std::map<std::string, std::string> given;
  std::set<std::string> seen;
  load_file(path, &given, errors, &seen);
  for (const auto& [k, v] : overrides) given[k] = v;
  std::map<std::string, std::string> m;
  for (const auto& s : job_schema()) m[s.key] = s.def;
  for (const auto& [k, v] : given) {
    const KeySpec* s = find_key(k);
    if (!s) {
      errors->push_back(str(path, ": unknown key '", k, "'", did_you_mean(k)));
      continue;
    }
    if (auto e = check_value(*s, v); !e.empty()) {
      errors->push_back(str(path, ": '", k, "' ", e));
      continue;
    }
    m[k] = v;
  }
  JobConfig j;
  j.source = path;
  j.flat = m;
  if (!errors->empty()) return j;
  j.run_dir = m["run_dir"];
  j.seed = uint64_t(geti(m, "seed"));
  j.device = m["device"];
  j.threads = geti(m, "threads");
  j.data_dir = m["data.dir"];
  j.data_prepare = m["data.prepare"];
  j.teacher_path = m["teacher.path"];
  j.teacher_dtype = m["teacher.dtype"];
  j.geometry = m["model.geometry"];
  j.eval_limit = geti(m, "eval.limit");
  for (const auto& s : job_schema())
    if (s.key.rfind("model.", 0) == 0 && s.type == 'i' && geti(m, s.key) != 0) j.model_overrides[s.key.substr(6)] = geti(m, s.key);
  for (const auto& s : job_schema()) {
    if (s.key.rfind("student.", 0) != 0) continue;
    try {
      j.quant.set(s.key.substr(8), m[s.key].empty() ? "''" : m[s.key]);
    } catch (const Error& e) {
      errors->push_back(str(path, ": ", e.what()));
    }
  }
  try {
    j.quant.validate(path + " (student)");
  } catch (const Error& e) {
    errors->push_back(e.what());
  }
  j.pretrain = train_from(m, "pretrain", false);
  j.distill = train_from(m, "distill", true);
  if (j.device == "cpu" && j.teacher_dtype != "fp32")
    errors->push_back(str(path, ": teacher.dtype ", j.teacher_dtype, " needs device: cuda (CPU runs the teacher in fp32)"));
  if (j.run_dir.empty()) errors->push_back(str(path, ": run_dir must not be empty"));
  for (const auto* t : {&j.pretrain, &j.distill}) {
    const std::string dp = Comm::backend_problem(t->dp_backend, j.device == "cuda");
    if (!dp.empty()) errors->push_back(str(path, ": ", t == &j.pretrain ? "pretrain." : "distill.", dp));
    if (!is_layer_list(t->activation_checkpointing))
      errors->push_back(str(path, ": activation_checkpointing must be none, all or a list of layer indices like 0,1,2 (got '",
                            t->activation_checkpointing, "')"));
    const bool kin_auto = t->activation_checkpointing_keep_in_proj == "auto";
    if (!kin_auto && !is_layer_list(t->activation_checkpointing_keep_in_proj))
      errors->push_back(str(path,
                            ": activation_checkpointing_keep_in_proj must be none, all, auto or a list of layer indices "
                            "like 0,1,2 (got '",
                            t->activation_checkpointing_keep_in_proj, "')"));
    if (kin_auto && !(t->memory_budget_gib > 0))
      errors->push_back(str(path, ": activation_checkpointing_keep_in_proj: auto needs a memory budget: set ",
                            t == &j.pretrain ? "pretrain" : "distill", ".memory_budget_gib (e.g. 60)"));
  }
  if (!is_layer_list(j.distill.hidden_mse_layers))
    errors->push_back(str(path, ": distill.hidden_mse_layers must be all or a list of layer indices like 0,11,23 (got '",
                          j.distill.hidden_mse_layers, "')"));
  return j;
}

void check_job_files(const JobConfig& job, const std::string& stage, std::vector<std::string>* errors) {
  const bool run = stage == "run";
  // Dataset: present (or preparable by `run`).
  const std::string data = job.dataset_dir();
  nlohmann::json manifest;
  const bool have_data = fs::exists(data + "/manifest.json");
  if (have_data) {
    try {
      manifest = nlohmann::json::parse(read_text_file(data + "/manifest.json"));
    } catch (const std::exception& e) {
      errors->push_back(str(data, "/manifest.json: unreadable (", e.what(), ")"));
    }
  } else if (!(run && !job.data_prepare.empty())) {
    errors->push_back(str("data: no prepared dataset at '", data, "' (run `dfssm data prepare` or set data.prepare for `dfssm run`)"));
  }
  if (!job.data_prepare.empty() && !fs::exists(job.data_prepare))
    errors->push_back(str("data.prepare: file '", job.data_prepare, "' not found"));
  // Teacher: must exist for distill; pretrain writes it; run pretrains it when missing.
  const std::string tdir = job.teacher_dir();
  const bool have_teacher = fs::exists(tdir) && (fs::is_regular_file(tdir) || fs::exists(tdir + "/config.json"));
  if (!have_teacher && !job.teacher_path.empty() && stage != "pretrain")
    errors->push_back(str("teacher.path: '", tdir, "' not found"));
  else if (!have_teacher && stage == "distill")
    errors->push_back(str("teacher: no teacher at '", tdir, "' (set teacher.path, or run `dfssm pretrain` / `dfssm run`)"));
  if (have_teacher && have_data && !manifest.is_null()) {
    try {
      const auto files = locate_checkpoint(tdir);
      const auto cfg = read_checkpoint_config(files);
      const int64_t vocab = manifest.at("vocab_size").get<int64_t>();
      if (vocab > cfg.padded_vocab())
        errors->push_back(str("vocab mismatch: the dataset's tokenizer has ", vocab, " tokens but the teacher's vocabulary holds ",
                              cfg.padded_vocab(), " (", tdir, ")"));
      if (files.format == CheckpointFiles::Format::Safetensors) {
        const auto f = SafeTensorsFile::open(files.weights);
        const auto it = f.metadata().find("tokenizer_sha256");
        const std::string dsha = manifest.at("tokenizer").value("sha256", "");
        if (it != f.metadata().end() && !it->second.empty() && !dsha.empty() && it->second != dsha)
          errors->push_back(str("tokenizer mismatch: the teacher was trained with tokenizer ", it->second.substr(0, 12),
                                "..., the dataset uses ", dsha.substr(0, 12), "..."));
      }
    } catch (const Error& e) {
      errors->push_back(str("teacher: ", e.what()));
    }
  }
  if (job.device == "cuda" && job.threads < 0) errors->push_back("threads must be >= 0");
}

JobConfig load_job_or_throw(const std::string& path, const std::vector<std::pair<std::string, std::string>>& overrides,
                            const std::string& stage) {
  std::vector<std::string> errors;
  auto job = load_job(path, overrides, &errors);
  if (errors.empty()) check_job_files(job, stage, &errors);
  if (errors.empty()) return job;
  std::string msg = str(errors.size(), " problem(s) in ", path, ":");
  for (const auto& e : errors) msg += "\n  - " + e;
  throw Error(msg);
}

std::string schema_markdown() {
  std::ostringstream os;
  os << "| key | type | default | meaning |\n| --- | --- | --- | --- |\n";
  for (const auto& s : job_schema()) {
    std::string type = s.type == 'i' ? "int" : s.type == 'f' ? "float" : s.type == 'b' ? "bool" : "string";
    if (!s.choices.empty()) {
      type.clear();
      for (const auto& c : s.choices) type += (type.empty() ? "" : " \\| ") + c;
    }
    os << "| `" << s.key << "` | " << type << " | `" << (s.def.empty() ? "\"\"" : s.def) << "` | " << s.doc << " |\n";
  }
  return os.str();
}

}  // namespace dfssm::distill
