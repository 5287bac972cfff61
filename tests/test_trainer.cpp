// The trainer: chunked KL/CE equals the full-logits loss (value and gradients), schedules, job
// config validation (all errors at once, includes, overrides, files, vocab), and exact resume:
// a `dfssm distill` / `dfssm pretrain` process killed with SIGKILL and resumed gives bit-identical
// losses to an uninterrupted run.
#include <ATen/CPUGeneratorImpl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "catch_compat.h"
#include "core/safetensors.h"
#include "distill/data/config.h"
#include "distill/data/prepare.h"
#include "distill/dist.h"
#include "distill/job_config.h"
#include "distill/loss.h"
#include "distill/optim.h"
#include "distill/teacher_cache.h"
#include "distill/trainer.h"
#include "model/checkpoint.h"
#include "model/recompute.h"
#include "quant/student.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace dfssm;
using namespace dfssm::distill;
using dfssm::test::contains;
namespace fs = std::filesystem;

namespace {
std::string tmp(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("dfssm_test_trainer_" + std::to_string(::getpid())) / name;
  fs::create_directories(d.parent_path());
  return d.string();
}

void write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

at::Tensor rnd(std::vector<int64_t> s, uint64_t seed, double scale = 1.0) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(s, g, at::kFloat) * scale;
}

// A pre-tokenized dataset (vocab 100, EOS 0) and a test-geometry teacher with that vocab.
struct Fixture {
  std::string root = tmp("fx");
  std::string data = root + "/data", teacher = root + "/teacher";
  Fixture() {
    if (fs::exists(data + "/manifest.json")) return;
    std::vector<uint16_t> ids;
    uint32_t x = 12345;
    for (int d = 0; d < 120; ++d) {
      for (int k = 0; k < 60 + d % 40; ++k) {
        x = x * 1103515245u + 12345u;
        // Some structure to learn: the next id depends on the previous one.
        ids.push_back(uint16_t(1 + ((ids.empty() ? 0 : ids.back()) * 7 + (x >> 16) % 5) % 99));
      }
      ids.push_back(0);
    }
    fs::create_directories(root);
    std::ofstream(root + "/tokens.bin", std::ios::binary).write(reinterpret_cast<const char*>(ids.data()), ids.size() * 2);
    data::DataConfig c;
    c.output = data;
    data::SourceSpec s;
    s.path = root + "/tokens.bin";
    s.dtype = "uint16";
    c.sources.push_back(s);
    c.tokenizer.type = "none";
    c.tokenizer.vocab_size = 100;
    c.tokenizer.eos_id = 0;
    c.val_fraction = 0.1;
    data::prepare_data(c);
    auto cfg = Mamba2Config::geometry("test");
    cfg.vocab_size = 100;
    save_model(dfssm::test::make_test_model(cfg, 3), teacher);
  }
  std::string job(const std::string& name, const std::string& extra = "") const {
    const std::string path = root + "/" + name + ".yaml";
    write(path, "run_dir: " + root + "/" + name + "\ndata:\n  dir: " + data + "\n  seq_len: 32\nteacher:\n  path: " + teacher +
                    "\nmodel:\n  geometry: test\nthreads: 1\n"
                    "pretrain:\n  steps: 6\n  batch_size: 4\n  log_every: 1\n  eval_every: 3\n  eval_batches: 2\n  checkpoint_every: 2\n"
                    "  warmup_steps: 2\n"
                    "distill:\n  steps: 6\n  batch_size: 4\n  log_every: 1\n  eval_every: 3\n  eval_batches: 2\n  checkpoint_every: 2\n"
                    "  warmup_steps: 2\n  alpha: 0.7\n  temperature: 2.0\n"
                    "student:\n  rank: 4\n" + extra);
    return path;
  }
};

int run_dfssm(const std::vector<std::string>& args, const std::string& kill_at = "",
              const std::vector<std::pair<std::string, std::string>>& env = {}) {
  std::fflush(stdout);  // or the child's freopen writes the parent's buffered output again
  const pid_t pid = fork();
  if (pid == 0) {
    if (!kill_at.empty()) setenv("DFSSM_DEBUG_KILL_AT_STEP", kill_at.c_str(), 1);
    else unsetenv("DFSSM_DEBUG_KILL_AT_STEP");
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::freopen("/dev/null", "w", stdout);
    std::vector<char*> argv;
    const std::string bin = std::string(DFSSM_BIN_DIR) + "/dfssm";
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

// The run's {"event": "start"} record from metrics.jsonl.
nlohmann::json start_event(const std::string& metrics) {
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("event", "") == "start") return j;
  }
  FAIL("no start event in " << metrics);
  return {};
}

// step -> the JSON text of its logged loss (exact digits), from metrics.jsonl.
std::map<int64_t, std::string> losses(const std::string& metrics) {
  std::map<int64_t, std::string> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j.at("step").get<int64_t>()] = j.at("loss").dump() + " " + j.at("grad_norm").dump();
  }
  return out;
}
}  // namespace

TEST_CASE("chunked LM-head KL/CE equals the full-logits loss, value and gradients", "[trainer][loss]") {
  const int64_t N = 37, d = 16, dt = 24, V = 53;
  const auto ht = rnd({N, dt}, 3), wt = rnd({V, dt}, 4, 0.5);
  const auto y = at::randint(V, {N}, at::make_generator<at::CPUGeneratorImpl>(5), at::kLong);
  for (double alpha : {0.0, 0.4, 1.0})
    for (double T : {1.0, 2.5})
      for (int64_t chunk : {int64_t(1), int64_t(8), int64_t(37), int64_t(100)}) {
        INFO("alpha " << alpha << " T " << T << " chunk " << chunk);
        auto hs = rnd({N, d}, 1).requires_grad_(true), ws = rnd({V, d}, 2, 0.5).requires_grad_(true);
        auto hs2 = hs.detach().clone().requires_grad_(true), ws2 = ws.detach().clone().requires_grad_(true);
        LmLossStats st;
        const auto l = lm_loss(hs, ws, ht, wt, y, {alpha, T, chunk, at::kFloat}, &st);
        const auto r = lm_loss_reference(hs2, ws2, ht, wt, y, alpha, T);
        l.backward();
        r.backward();
        REQUIRE(l.item<double>() == Approx(r.item<double>()).epsilon(1e-5));
        REQUIRE(dfssm::test::rel_err(hs.grad(), hs2.grad()) < 1e-5);
        REQUIRE(dfssm::test::rel_err(ws.grad(), ws2.grad()) < 1e-5);
        REQUIRE(st.tokens == N);
      }
}

TEST_CASE("learning-rate schedules", "[trainer][optim]") {
  TrainConfig c;
  c.steps = 100;
  c.warmup_steps = 10;
  c.min_lr_ratio = 0.1;
  REQUIRE(lr_at(c, 0) == Approx(1.0 / 11));
  REQUIRE(lr_at(c, 10) == Approx(1.0));
  REQUIRE(lr_at(c, 55) == Approx(0.1 + 0.9 * 0.5));  // cosine midpoint
  REQUIRE(lr_at(c, 100) == Approx(0.1));
  c.schedule = "wsd";
  c.wsd_decay_frac = 0.2;
  REQUIRE(lr_at(c, 50) == Approx(1.0));
  REQUIRE(lr_at(c, 100) == Approx(0.1));
  c.schedule = "constant";
  REQUIRE(lr_at(c, 90) == Approx(1.0));
}

TEST_CASE("job config: every error at once, includes, overrides", "[trainer][config]") {
  const auto base = tmp("cfg/base.yaml"), job = tmp("cfg/job.yaml");
  write(base, "run_dir: runs/x\ndistill:\n  steps: 50\n  lr: 1.0e-3\n");
  write(job, "include: base.yaml\ndistill:\n  steps: 70\n  alpah: 0.5\n  batch_size: many\npretrain:\n  lr: -1\n"
             "student:\n  format: binary7\ndevice: tpu\n");
  std::vector<std::string> errors;
  load_job(job, {{"distill.warmup_steps", "x"}}, &errors);
  std::string all;
  for (const auto& e : errors) all += e + "\n";
  INFO(all);
  REQUIRE(errors.size() == 6);
  REQUIRE(contains(all, "unknown key 'distill.alpah' (did you mean 'distill.alpha'?)"));
  REQUIRE(contains(all, "'distill.batch_size' must be an integer"));
  REQUIRE(contains(all, "'pretrain.lr' must be in [0, 10]"));
  REQUIRE(contains(all, "'student.format' must be one of binary, binary_lowrank, ternary, int4, got 'binary7'"));
  REQUIRE(contains(all, "'device' must be one of cpu, cuda"));
  REQUIRE(contains(all, "'distill.warmup_steps' must be an integer"));
  // Composition: the including file and then overrides win; the base fills the rest.
  write(job, "include: base.yaml\ndistill:\n  steps: 70\n");
  errors.clear();
  const auto j = load_job(job, {{"distill.batch_size", "3"}}, &errors);
  REQUIRE(errors.empty());
  REQUIRE(j.distill.steps == 70);
  REQUIRE(j.distill.lr == Approx(1e-3));
  REQUIRE(j.distill.batch_size == 3);
  REQUIRE(j.run_dir == "runs/x");
  errors.clear();
  write(job, "include: missing.yaml\n");
  load_job(job, {}, &errors);
  REQUIRE(errors.size() == 1);
  REQUIRE(contains(errors[0], "missing.yaml: job file not found"));
  // dp_backend: a known name the device or the build cannot run.
  write(job, "include: base.yaml\ndistill:\n  dp_backend: nccl\n");
  errors.clear();
  load_job(job, {}, &errors);
  REQUIRE(errors.size() == 1);
  REQUIRE(contains(errors[0], "distill.dp_backend nccl needs device: cuda"));
  errors.clear();
  load_job(job, {{"distill.dp_backend", "mpi"}}, &errors);
  REQUIRE(errors.size() == 1);
  REQUIRE(contains(errors[0], "'distill.dp_backend' must be one of auto, nccl, gloo, store, got 'mpi'"));
}

TEST_CASE("job files: missing dataset and teacher, vocab mismatch", "[trainer][config]") {
  Fixture fx;
  std::vector<std::string> errors;
  auto job = load_job(fx.job("files"), {{"data.dir", fx.root + "/nope"}, {"teacher.path", fx.root + "/noteacher"}}, &errors);
  REQUIRE(errors.empty());
  check_job_files(job, "distill", &errors);
  REQUIRE(errors.size() == 2);
  REQUIRE(contains(errors[0] + errors[1], "no prepared dataset"));
  REQUIRE(contains(errors[0] + errors[1], "teacher.path"));
  // A teacher whose vocabulary is smaller than the dataset's.
  auto cfg = Mamba2Config::geometry("test");
  cfg.vocab_size = 40;
  cfg.pad_vocab_size_multiple = 8;
  save_model(dfssm::test::make_test_model(cfg, 1), fx.root + "/small_teacher");
  errors.clear();
  job = load_job(fx.job("files"), {{"teacher.path", fx.root + "/small_teacher"}}, &errors);
  check_job_files(job, "distill", &errors);
  REQUIRE(errors.size() == 1);
  REQUIRE(contains(errors[0], "vocab mismatch: the dataset's tokenizer has 100 tokens but the teacher's vocabulary holds 40"));
}

TEST_CASE("distill resume after SIGKILL is bit-exact", "[trainer][resume]") {
  Fixture fx;
  const auto a = fx.job("dA"), b = fx.job("dB");
  REQUIRE(run_dfssm({"distill", a}) == 0);
  REQUIRE(run_dfssm({"distill", b}, "3") == 128 + SIGKILL);  // killed after step 3 (last checkpoint: 2)
  REQUIRE(!fs::exists(fx.root + "/dB/student/DONE"));
  REQUIRE(run_dfssm({"distill", b}) == 0);  // resume: auto
  const auto la = losses(fx.root + "/dA/student/metrics.jsonl"), lb = losses(fx.root + "/dB/student/metrics.jsonl");
  REQUIRE(la.size() == 6);
  REQUIRE(la == lb);
  // Only the newest keep_checkpoints (2) complete checkpoints remain.
  int n = 0;
  for (const auto& e : fs::directory_iterator(fx.root + "/dB/student/checkpoints")) n += e.is_directory();
  REQUIRE(n == 2);
  // The final student equals the uninterrupted run's.
  const auto fa = SafeTensorsFile::open(fx.root + "/dA/student/final/student.safetensors");
  const auto fb = SafeTensorsFile::open(fx.root + "/dB/student/final/student.safetensors");
  REQUIRE(fa.tensors().size() == fb.tensors().size());
  for (const auto& t : fa.tensors()) REQUIRE(std::memcmp(fa.data(t), fb.data(fb.get(t.name)), t.nbytes()) == 0);
}

TEST_CASE("pretrain resume after SIGKILL is bit-exact, and the loss falls", "[trainer][resume]") {
  Fixture fx;
  const auto ja = fx.job("pA2"), jb = fx.job("pB2");
  REQUIRE(run_dfssm({"pretrain", ja, "teacher.path=" + fx.root + "/pA2/teacher"}) == 0);
  REQUIRE(run_dfssm({"pretrain", jb, "teacher.path=" + fx.root + "/pB2/teacher"}, "5") == 128 + SIGKILL);
  REQUIRE(run_dfssm({"pretrain", jb, "teacher.path=" + fx.root + "/pB2/teacher"}) == 0);
  const auto la = losses(fx.root + "/pA2/teacher/metrics.jsonl"), lb = losses(fx.root + "/pB2/teacher/metrics.jsonl");
  REQUIRE(la.size() == 6);
  REQUIRE(la == lb);
  REQUIRE(fs::exists(fx.root + "/pB2/teacher/DONE"));
  const auto first = std::stod(la.begin()->second), last = std::stod(la.rbegin()->second);
  REQUIRE(last < first);
}

TEST_CASE("docs/config.md holds the parser's key table", "[trainer][config][docs]") {
  std::ifstream in(dfssm::test::source_dir() + "/docs/config.md");
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  INFO("regenerate the table with: build/bin/dfssm validate --schema");
  REQUIRE(contains(doc, schema_markdown()));
}

TEST_CASE("activation checkpointing gives the same loss and gradients", "[trainer][recompute]") {
  auto cfg = Mamba2Config::geometry("test");
  cfg.n_layer = 3;
  const auto teacher = dfssm::test::make_test_model(cfg, 8);
  // The binary student, and a plain one (dense projections: the recomputation's out_proj then
  // records its backward without its product, linear_graph_only).
  for (const bool binary : {true, false}) {
    INFO((binary ? "binary student" : "plain student"));
    auto qc = quant::QuantConfig();
    qc.quantize_in_proj = qc.quantize_out_proj = binary;
    auto s = quant::make_student(teacher, qc, 1);
    auto& m = *s->model;
    REQUIRE((dynamic_cast<const DenseLinear*>(m.layers[0].mixer.out_proj.get()) == nullptr) == binary);
    for (auto& [n, p] : m.named_parameters()) p.requires_grad_(true);
    const auto ids = at::arange(0, 40, at::kLong).remainder(cfg.vocab_size).view({2, 20});
    auto grads = [&](std::vector<bool> rec, std::vector<bool> keep_in = {}) {
      m.recompute_layers = rec;
      m.keep_in_proj_layers = keep_in;
      for (auto& [n, p] : m.named_parameters())
        if (p.grad().defined()) p.mutable_grad().zero_();
      auto h = m.forward_hidden(ids);
      const auto loss = (h * h).mean() + at::matmul(h, m.lm_weight().t()).logsumexp(-1).mean();
      loss.backward();
      std::vector<at::Tensor> g;
      for (auto& [n, p] : m.named_parameters()) g.push_back(p.grad().clone());
      return std::make_pair(loss.item<double>(), g);
    };
    const auto [l0, g0] = grads({});
    const auto [l1, g1] = grads({true, false, true});
    // Layers 0 and 2 keeping their in_proj output too (the plain student's recomputation then
    // skips in_proj's product; the binary one's CPU projection is not one product, so it reruns).
    const auto [l2, g2] = grads({true, false, true}, {true, false, true});
    REQUIRE(l0 == l1);
    REQUIRE(l0 == l2);
    const auto names = m.named_parameters();
    for (size_t i = 0; i < g0.size(); ++i) {
      INFO(names[i].first);
      // Same ops; only the order in which autograd accumulates a parameter's gradient differs.
      REQUIRE(dfssm::test::rel_err(g1[i], g0[i]) < 1e-5);
      REQUIRE(dfssm::test::rel_err(g2[i], g0[i]) < 1e-5);
    }
    m.keep_in_proj_layers = {};
  }
}

TEST_CASE("--dry-run memory estimate counts kept SSD and in_proj outputs", "[trainer][config]") {
  // The 1.3B benchmark job (docs/benchmarks.md): no teacher on disk, so the geometry's config.
  // (The estimate prints GiB to 6 digits: differences are compared to 2e-3 GiB.)
  const auto job = tmp("mem/job.yaml");
  write(job, "run_dir: " + tmp("mem/run") + "\ndevice: cuda\nmodel: {geometry: mamba2-1.3b}\n"
             "data: {seq_len: 2048}\ndistill: {batch_size: 16, activation_checkpointing: all}\n");
  auto activations = [&](const std::vector<std::pair<std::string, std::string>>& ov) {
    std::vector<std::string> errors;
    const auto j = load_job(job, ov, &errors);
    INFO((errors.empty() ? std::string() : errors[0]));
    REQUIRE(errors.empty());
    const auto est = memory_estimate(j, Mode::Distill);
    const auto at = est.find("activations");
    REQUIRE(at != std::string::npos);
    return std::stod(est.substr(at + std::string("activations").size()));
  };
  const double base = activations({}), none = activations({{"distill.activation_checkpointing_keep", "none"}});
  const double kin = activations({{"distill.activation_checkpointing_keep_in_proj", "0,1,2,3,4,5,6,7,8,9,10,11"}});
  const double gib = double(1ull << 30), tok = 16.0 * 2048;
  CHECK(base - none == Approx(48 * tok * 4096 * 2 / gib).margin(2e-3));  // 48 kept SSD outputs, bf16
  CHECK(kin - base == Approx(12 * tok * 8512 * 2 / gib).margin(2e-3));   // 12 kept in_proj outputs, bf16
  // Only recomputed layers keep anything.
  const double kin_rec = activations({{"distill.activation_checkpointing", "0,1"},
                                      {"distill.activation_checkpointing_keep_in_proj", "0,5"}});
  const double rec = activations({{"distill.activation_checkpointing", "0,1"}});
  CHECK(kin_rec - rec == Approx(tok * 8512 * 2 / gib).margin(2e-3));
  std::vector<std::string> errors;
  load_job(job, {{"distill.activation_checkpointing_keep_in_proj", "some"}}, &errors);
  REQUIRE(errors.size() == 1);
  CHECK(contains(errors[0], "activation_checkpointing_keep_in_proj must be none, all, auto or a list of layer indices"));
}

TEST_CASE("--dry-run memory estimate under DFSSM_CKPT_STREAM_PAIRS: half a stream less per operand-saving block",
          "[trainer][config]") {
  const auto job = tmp("mempairs/job.yaml");
  write(job, "run_dir: " + tmp("mempairs/run") + "\ndevice: cuda\nmodel: {geometry: mamba2-1.3b}\n"
             "data: {seq_len: 2048}\ndistill: {batch_size: 16, activation_checkpointing: all}\n");
  auto load = [&](const std::vector<std::pair<std::string, std::string>>& ov) {
    std::vector<std::string> errors;
    auto j = load_job(job, ov, &errors);
    INFO((errors.empty() ? std::string() : errors[0]));
    REQUIRE(errors.empty());
    return j;
  };
  auto activations = [&](const dfssm::distill::JobConfig& j) {
    const auto est = memory_estimate(j, Mode::Distill);
    const auto at = est.find("activations");
    REQUIRE(at != std::string::npos);
    return std::stod(est.substr(at + std::string("activations").size()));
  };
  const double gib = double(1ull << 30), half = 16.0 * 2048 * 2048 * 2 / gib;  // block i-1's bf16 output
  const auto all = load({}), three = load({{"distill.activation_checkpointing", "0,1,2"}}),
             gaps = load({{"distill.activation_checkpointing", "0,2,3,4,5"}}), mse = load({{"distill.hidden_mse", "0.5"}});
  const double a0 = activations(all), t0 = activations(three), g0 = activations(gaps), m0 = activations(mse);
  dfssm::Mamba2Model::set_stream_pairs(1);
  const double a1 = activations(all), t1 = activations(three), g1 = activations(gaps), m1 = activations(mse);
  const auto cfg = dfssm::Mamba2Config::geometry("mamba2-1.3b");
  const auto budget = load({{"distill.activation_checkpointing_keep_in_proj", "auto"}, {"distill.memory_budget_gib", "59"}});
  const auto kin1 = keep_in_proj_for(budget, Mode::Distill, cfg);
  dfssm::Mamba2Model::set_stream_pairs(-1);
  const auto kin0 = keep_in_proj_for(budget, Mode::Distill, cfg);
  CHECK(a0 - a1 == Approx(24 * half).margin(2e-3));  // blocks 1, 3, ..., 47
  CHECK(t0 - t1 == Approx(half).margin(2e-3));       // block 1 (block 2 follows one that saved operands)
  CHECK(g0 - g1 == Approx(2 * half).margin(2e-3));   // blocks 3 and 5 (block 2 follows an unsaved stream)
  CHECK(m1 == Approx(m0).margin(1e-6));              // hidden_mse keeps every stream anyway
  // The budget left over goes to kept in_proj outputs: 3 GiB is 5 more of them (0.52 GiB each).
  // (This job's settings, not distill_1.3b.yaml's, hence 7 at 59 GiB.)
  CHECK(std::count(kin0.begin(), kin0.end(), true) == 7);
  CHECK(std::count(kin1.begin(), kin1.end(), true) == 12);
}

TEST_CASE("the shipped job configs parse, and the 1.3B one keeps 12 in_proj outputs within its budget",
          "[trainer][config]") {
  const std::string root = dfssm::test::source_dir() + "/configs/";
  for (const char* name : {"quickstart.yaml", "quality_100m.yaml", "distill_1.3b.yaml"}) {
    std::vector<std::string> errors;
    const auto j = load_job(root + name, {}, &errors);
    INFO(name << ": " << (errors.empty() ? std::string() : errors[0]));
    CHECK(errors.empty());
  }
  std::vector<std::string> errors;
  const auto j = load_job(root + "distill_1.3b.yaml", {}, &errors);
  REQUIRE(errors.empty());
  CHECK(j.distill.batch_size == 16);
  CHECK(j.distill.seq_len == 2048);
  const auto keep = keep_in_proj_for(j, Mode::Distill, dfssm::Mamba2Config::geometry("mamba2-1.3b"));
  CHECK(std::count(keep.begin(), keep.end(), true) == 12);  // the measured setting (docs/benchmarks.md)
}

TEST_CASE("activation_checkpointing_keep_in_proj: auto fills memory_budget_gib by the estimate", "[trainer][config]") {
  const auto job = tmp("memauto/job.yaml");
  write(job, "run_dir: " + tmp("memauto/run") + "\ndevice: cuda\nmodel: {geometry: mamba2-1.3b}\n"
             "data: {seq_len: 2048}\ndistill: {batch_size: 16, activation_checkpointing: all}\n");
  auto load = [&](const std::vector<std::pair<std::string, std::string>>& ov) {
    std::vector<std::string> errors;
    auto j = load_job(job, ov, &errors);
    INFO((errors.empty() ? std::string() : errors[0]));
    REQUIRE(errors.empty());
    return j;
  };
  auto total = [](const std::string& est) {
    const auto at = est.find("total");
    REQUIRE(at != std::string::npos);
    return std::stod(est.substr(at + 5));
  };
  const auto cfg = dfssm::Mamba2Config::geometry("mamba2-1.3b");
  const double base = total(memory_estimate(load({}), Mode::Distill));  // ~52.7 GiB
  const double per = 16.0 * 2048 * 8512 * 2 / double(1ull << 30);         // one kept in_proj output
  for (const double budget : {60.0, 55.0, 52.0}) {
    const auto j = load({{"distill.activation_checkpointing_keep_in_proj", "auto"},
                         {"distill.memory_budget_gib", std::to_string(budget)}});
    const auto keep = keep_in_proj_for(j, Mode::Distill, cfg);
    const auto n = std::count(keep.begin(), keep.end(), true);
    INFO("budget " << budget << ": " << n << " layers");
    // The most layers within the budget, and the first ones.
    const int64_t want = budget > base ? int64_t((budget - base) / per) : 0;
    CHECK(n == want);
    for (int64_t i = 0; i < n; ++i) CHECK(keep[size_t(i)]);
    const auto est = memory_estimate(j, Mode::Distill);
    CHECK(contains(est, "activation_checkpointing_keep_in_proj auto: "));
    CHECK(total(est) <= std::max(budget, base) + 1e-3);
    CHECK(contains(est, "over the memory budget") == (base > budget));
  }
  // Only recomputed layers keep anything; none on the CPU.
  const auto j2 = load({{"distill.activation_checkpointing", "3,4"},
                        {"distill.activation_checkpointing_keep_in_proj", "auto"},
                        {"distill.memory_budget_gib", "1000"}});
  const auto k2 = keep_in_proj_for(j2, Mode::Distill, cfg);
  CHECK(std::count(k2.begin(), k2.end(), true) == 2);
  CHECK((k2[3] && k2[4]));
  const auto j3 = load({{"device", "cpu"}, {"distill.activation_checkpointing_keep_in_proj", "auto"},
                        {"distill.memory_budget_gib", "1000"}});
  const auto k3 = keep_in_proj_for(j3, Mode::Distill, cfg);
  CHECK(std::count(k3.begin(), k3.end(), true) == 0);
  // auto without a budget is a config error that says what to set.
  std::vector<std::string> errors;
  load_job(job, {{"distill.activation_checkpointing_keep_in_proj", "auto"}}, &errors);
  REQUIRE(errors.size() == 1);
  CHECK(contains(errors[0], "distill.memory_budget_gib"));
}

TEST_CASE("linear_graph_only: at::matmul's gradients without its product", "[trainer][recompute]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(21);
  const auto x0 = at::randn({3, 7, 16}, g), W0 = at::randn({12, 16}, g), dout = at::randn({3, 7, 12}, g);
  auto grads = [&](bool graph_only) {
    const auto x = x0.clone().requires_grad_(true), W = W0.clone().requires_grad_(true);
    const auto out = graph_only ? linear_graph_only(x, W) : at::matmul(x, W.t());
    CHECK(out.sizes() == at::IntArrayRef({3, 7, 12}));
    if (graph_only) CHECK(out.abs().max().item<double>() == 0.0);  // never computed
    out.backward(dout);
    return std::make_pair(x.grad(), W.grad());
  };
  const auto [dx, dW] = grads(true);
  const auto [dx_ref, dW_ref] = grads(false);
  CHECK(dfssm::test::rel_err(dx, dx_ref) < 1e-6);  // the same two products
  CHECK(dfssm::test::rel_err(dW, dW_ref) < 1e-6);
  CHECK(dfssm::test::rel_err(dW, dout.reshape({-1, 12}).t().mm(x0.reshape({-1, 16}))) < 1e-6);
  REQUIRE_THROWS(linear_graph_only(x0, W0.t()));  // shapes checked
  // With the product's values given (a kept output): those values, the same gradients.
  const auto vals = at::matmul(x0, W0.t());
  const auto x = x0.clone().requires_grad_(true), W = W0.clone().requires_grad_(true);
  const auto out = linear_graph_only(x, W, vals);
  CHECK(at::equal(out.detach(), vals));
  out.backward(dout);
  CHECK(dfssm::test::rel_err(x.grad(), dx_ref) < 1e-6);
  CHECK(dfssm::test::rel_err(W.grad(), dW_ref) < 1e-6);
  REQUIRE_THROWS(linear_graph_only(x0, W0, vals.narrow(2, 0, 5)));  // the values' shape checked
}

TEST_CASE("data parallel: 2 processes equal 1 process with the same global batch", "[trainer][dp]") {
  Fixture fx;
  const auto one = fx.job("dp1"), two = fx.job("dp2");
  REQUIRE(run_dfssm({"distill", one, "distill.batch_size=4", "distill.steps=4"}) == 0);
  REQUIRE(run_dfssm({"distill", two, "distill.batch_size=2", "distill.steps=4", "--nproc", "2"}) == 0);
  const auto a = losses(fx.root + "/dp1/student/metrics.jsonl"), b = losses(fx.root + "/dp2/student/metrics.jsonl");
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  for (const auto& [step, la] : a) {
    INFO("step " << step << ": " << la << " vs " << b.at(step));
    // Same windows, same math; only the summation order of the gradient mean differs.
    REQUIRE(std::stod(b.at(step)) == Approx(std::stod(la)).epsilon(1e-4));
  }
  // Gradients all-reduced in many small buckets during backward (2 KB each), and in one shot
  // after it: every element is the same sum over ranks, so the runs are bit-identical.
  REQUIRE(run_dfssm({"distill", fx.job("dp3"), "distill.batch_size=2", "distill.steps=4", "distill.dp_bucket_mb=0.002",
                     "--nproc", "2"}) == 0);
  REQUIRE(run_dfssm({"distill", fx.job("dp4"), "distill.batch_size=2", "distill.steps=4", "distill.dp_bucket_mb=0",
                     "--nproc", "2"}) == 0);
  CHECK(losses(fx.root + "/dp3/student/metrics.jsonl") == b);
  CHECK(losses(fx.root + "/dp4/student/metrics.jsonl") == b);
  // auto is c10d's Gloo where built; the TCP-store all-reduce sums in rank order. With 2 ranks
  // both compute a + b for every element: bit-identical.
  const bool gloo = (" " + Comm::backends_built() + " ").find(" gloo ") != std::string::npos;
  CHECK(start_event(fx.root + "/dp2/student/metrics.jsonl").at("dp_backend") == (gloo ? "gloo" : "store"));
  CHECK(start_event(fx.root + "/dp2/student/metrics.jsonl").at("world") == 2);
  // With threads: 0, two CPU ranks on one host share its cores.
  REQUIRE(run_dfssm({"distill", fx.job("dpt1"), "threads=0", "distill.steps=1"}) == 0);
  REQUIRE(run_dfssm({"distill", fx.job("dpt2"), "threads=0", "distill.steps=1", "--nproc", "2"}) == 0);
  const int all_threads = start_event(fx.root + "/dpt1/student/metrics.jsonl").at("threads");
  CHECK(start_event(fx.root + "/dpt2/student/metrics.jsonl").at("threads") == std::max(1, all_threads / 2));
  CHECK(start_event(fx.root + "/dp2/student/metrics.jsonl").at("threads") == 1);  // the job's threads: 1
  REQUIRE(run_dfssm({"distill", fx.job("dps"), "distill.batch_size=2", "distill.steps=4", "distill.dp_backend=store",
                     "--nproc", "2"}) == 0);
  CHECK(start_event(fx.root + "/dps/student/metrics.jsonl").at("dp_backend") == "store");
  CHECK(losses(fx.root + "/dps/student/metrics.jsonl") == b);
  // Resume is exact under data parallelism too: both ranks killed after step 3 (last checkpoint 2),
  // then resumed, give the uninterrupted run's losses bit for bit.
  const std::vector<std::string> dpk = {"distill", fx.job("dpk"), "distill.batch_size=2", "distill.steps=4",
                                        "distill.checkpoint_every=2", "--nproc", "2"};
  REQUIRE(run_dfssm(dpk, "3") == 128 + SIGKILL);
  REQUIRE(run_dfssm(dpk) == 0);
  CHECK(losses(fx.root + "/dpk/student/metrics.jsonl") == b);
  // With gradient accumulation only the last micro-batch's backward is bucketed.
  for (const char* mb : {"0.002", "0"})
    REQUIRE(run_dfssm({"distill", fx.job(std::string("dpa") + mb), "distill.batch_size=1", "distill.grad_accum=2",
                       "distill.steps=4", std::string("distill.dp_bucket_mb=") + mb, "--nproc", "2"}) == 0);
  const auto ga = losses(fx.root + "/dpa0.002/student/metrics.jsonl");
  REQUIRE(ga.size() == 4);
  CHECK(ga == losses(fx.root + "/dpa0/student/metrics.jsonl"));
  for (const auto& [step, l] : ga) CHECK(std::stod(l) == Approx(std::stod(a.at(step))).epsilon(1e-4));
  // The trained students agree to float rounding.
  const auto fa = SafeTensorsFile::open(fx.root + "/dp1/student/final/student.safetensors");
  const auto fb = SafeTensorsFile::open(fx.root + "/dp2/student/final/student.safetensors");
  double num = 0, den = 0;
  for (const auto& t : fa.tensors()) {
    const auto* x = reinterpret_cast<const float*>(fa.data(t));
    const auto* y = reinterpret_cast<const float*>(fb.data(fb.get(t.name)));
    for (int64_t i = 0; i < t.numel(); ++i) num += double(x[i] - y[i]) * (x[i] - y[i]), den += double(x[i]) * x[i];
  }
  REQUIRE(std::sqrt(num / den) < 1e-4);
}

TEST_CASE("dfssm run: every stage, a re-run after a crash continues, a finished run skips all", "[trainer][pipeline]") {
  Fixture fx;
  // No teacher: the pipeline pretrains one into <run_dir>/teacher first.
  const std::vector<std::string> run = {"run", fx.job("pl"), "teacher.path=", "eval.limit=4"};
  const std::string dir = fx.root + "/pl";
  REQUIRE(run_dfssm(run, "3") == 128 + SIGKILL);  // killed in the pretrain stage after step 3
  REQUIRE(fs::exists(dir + "/teacher/checkpoints"));
  REQUIRE(!fs::exists(dir + "/teacher/DONE"));
  REQUIRE(run_dfssm(run) == 0);  // continues: pretrain resumes from step 2, then the later stages
  for (const char* f : {"/teacher/DONE", "/student/DONE", "/student/final", "/eval.json"}) {
    INFO(f);
    CHECK(fs::exists(dir + f));
  }
  JobConfig job;
  {
    std::vector<std::string> errors;
    job = load_job(fx.job("pl"), {{"teacher.path", ""}}, &errors);
    REQUIRE(errors.empty());
  }
  REQUIRE(fs::exists(job.packed_path()));
  // The resumed pretraining logged every step once, with the uninterrupted run's losses.
  REQUIRE(run_dfssm({"pretrain", fx.job("plref"), "teacher.path="}) == 0);
  CHECK(losses(dir + "/teacher/metrics.jsonl") == losses(fx.root + "/plref/teacher/metrics.jsonl"));
  // A finished run: every stage skipped, nothing rewritten.
  const auto packed_time = fs::last_write_time(job.packed_path());
  const auto teacher_metrics = losses(dir + "/teacher/metrics.jsonl");
  const auto student_metrics = losses(dir + "/student/metrics.jsonl");
  REQUIRE(run_dfssm(run) == 0);
  CHECK(fs::last_write_time(job.packed_path()) == packed_time);
  CHECK(losses(dir + "/teacher/metrics.jsonl") == teacher_metrics);
  CHECK(losses(dir + "/student/metrics.jsonl") == student_metrics);
  // --nproc 2: the training stages as two data-parallel processes each.
  REQUIRE(run_dfssm({"run", fx.job("pl2"), "teacher.path=", "eval.limit=4", "pretrain.batch_size=2",
                     "distill.batch_size=2", "--nproc", "2"}) == 0);
  CHECK(start_event(fx.root + "/pl2/teacher/metrics.jsonl").at("world") == 2);
  CHECK(start_event(fx.root + "/pl2/student/metrics.jsonl").at("world") == 2);
  CHECK(fs::exists(fx.root + "/pl2/eval.json"));
  // run under a launcher's WORLD_SIZE would run the pipeline in every rank: refused.
  CHECK(run_dfssm(run, "", {{"WORLD_SIZE", "2"}, {"RANK", "0"}}) == 1);
}

TEST_CASE("hidden-state MSE: value, layer selection, no gradient into the teacher", "[trainer][loss]") {
  const auto s0 = rnd({2, 5, 8}, 1).requires_grad_(true), s1 = rnd({2, 5, 8}, 2).requires_grad_(true);
  const auto t0 = rnd({2, 5, 8}, 3, 4.0), t1 = rnd({2, 5, 8}, 4).requires_grad_(true);
  auto n = [](const at::Tensor& r) { return r / (r.pow(2).mean(-1, true) + 1e-6).sqrt(); };
  const auto both = hidden_mse({s0, s1}, {t0, t1}, {true, true});
  const double want = 0.5 * ((n(s0) - n(t0)).pow(2).mean().item<double>() + (n(s1) - n(t1)).pow(2).mean().item<double>());
  REQUIRE(both.item<double>() == Approx(want).epsilon(1e-6));
  const auto second = hidden_mse({s0, s1}, {t0, t1}, {false, true});
  REQUIRE(second.item<double>() == Approx((n(s1) - n(t1)).pow(2).mean().item<double>()).epsilon(1e-6));
  // Scale-free: scaling the teacher stream changes nothing.
  REQUIRE(hidden_mse({s0}, {t0 * 10.0}, {true}).item<double>() == Approx(hidden_mse({s0}, {t0}, {true}).item<double>()).epsilon(1e-5));
  both.backward();
  REQUIRE(s0.grad().defined());
  REQUIRE(!t1.grad().defined());
}

TEST_CASE("distill with the hidden-state term logs it and trains", "[trainer][loss]") {
  Fixture fx;
  const auto job = fx.job("hid");
  REQUIRE(run_dfssm({"distill", job, "distill.hidden_mse=0.5", "distill.hidden_mse_layers=0,1", "distill.steps=3"}) == 0);
  std::ifstream in(fx.root + "/hid/student/metrics.jsonl");
  int n = 0, init_evals = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("event", "") == "eval" && j.at("step").get<int64_t>() == 0) {  // the init-only student
      REQUIRE(j.at("student_ce").get<double>() > 0);
      REQUIRE(j.at("teacher_ce").get<double>() > 0);
      ++init_evals;
    }
    if (!j.contains("loss")) continue;
    REQUIRE(j.contains("hidden_mse"));
    REQUIRE(j.at("hidden_mse").get<double>() > 0);
    REQUIRE(j.at("loss").get<double>() > j.at("kl").get<double>() * 0.7 * 4.0);  // alpha T² KL + 0.5 MSE + CE part
    ++n;
  }
  REQUIRE(n == 3);
  REQUIRE(init_evals == 1);
}

TEST_CASE("top-k KL: k = V is the full KL; k < V is the renormalised top-k, value and gradients", "[trainer][loss]") {
  const int64_t N = 29, d = 16, dt = 24, V = 40;
  const auto ht = rnd({N, dt}, 13), wt = rnd({V, dt}, 14, 0.5);
  const auto y = at::randint(V, {N}, at::make_generator<at::CPUGeneratorImpl>(15), at::kLong);
  for (double T : {1.0, 2.0})
    for (int64_t k : {V, int64_t(7)})
      for (int64_t chunk : {int64_t(5), int64_t(64)}) {
        INFO("T " << T << " k " << k << " chunk " << chunk);
        const double alpha = 0.6;
        const auto tk = teacher_topk(ht, wt, y, T, k, chunk, at::kFloat);
        REQUIRE(tk.idx.sizes() == at::IntArrayRef({N, k}));
        auto hs = rnd({N, d}, 11).requires_grad_(true), ws = rnd({V, d}, 12, 0.5).requires_grad_(true);
        auto hs2 = hs.detach().clone().requires_grad_(true), ws2 = ws.detach().clone().requires_grad_(true);
        LmLossStats st, st_full;
        const auto l = lm_loss(hs, ws, tk, y, {alpha, T, chunk, at::kFloat}, &st);
        at::Tensor r;
        if (k == V) {  // the full KL, by the chunked loss with the live teacher
          r = lm_loss(hs2, ws2, ht, wt, y, {alpha, T, chunk, at::kFloat}, &st_full);
          CHECK(st.teacher_ce == Approx(st_full.teacher_ce).epsilon(1e-5));
          CHECK(st.top1 == Approx(st_full.top1));
        } else {  // autograd over the renormalised top-k distribution
          const auto zs = at::matmul(hs2, ws2.t());
          const auto lq = at::log_softmax(tk.logp, 1);
          const auto kl = (lq.exp() * (lq - at::log_softmax(zs / T, 1).gather(1, tk.idx))).sum(1).mean();
          r = at::nll_loss(at::log_softmax(zs, 1), y) * (1 - alpha) + kl * (alpha * T * T);
        }
        l.backward();
        r.backward();
        REQUIRE(l.item<double>() == Approx(r.item<double>()).epsilon(1e-5));
        REQUIRE(dfssm::test::rel_err(hs.grad(), hs2.grad()) < 1e-5);
        REQUIRE(dfssm::test::rel_err(ws.grad(), ws2.grad()) < 1e-5);
      }
}

TEST_CASE("teacher cache file: round trip, settings checked, resume cuts it back", "[trainer][cache]") {
  const std::string path = tmp("cache/unit.h5");
  const nlohmann::json settings = {{"teacher_sha256", "abc"}, {"temperature", 2.0}, {"k", 3}, {"seq_len", 4}};
  const int64_t rows = 5, k = 3;
  auto make = [&](int64_t mb) {
    TeacherTopK t;
    t.idx = at::arange(rows * k, at::kLong).view({rows, k}) + 100 * mb;
    t.logp = -at::arange(rows * k, at::kFloat).view({rows, k}) / 7.0 - double(mb);
    t.ce = at::full({rows}, 1.5 + double(mb));
    return t;
  };
  {
    auto w = TeacherCache::for_writing(path, settings, k, rows, 0);
    for (int64_t mb = 0; mb < 3; ++mb) w->append(mb, make(mb));
  }
  {
    auto r = TeacherCache::for_reading(path, settings, 3);
    REQUIRE(r->complete() == 3);
    REQUIRE(r->k() == k);
    for (int64_t mb = 0; mb < 3; ++mb) {
      const auto a = r->read(mb, at::kCPU), b = make(mb);
      REQUIRE(at::equal(a.idx, b.idx));
      REQUIRE(at::equal(a.logp, b.logp));
      REQUIRE(at::equal(a.ce, b.ce));
    }
    REQUIRE_THROWS(r->read(3, at::kCPU));
  }
  // Other settings: refused, naming the key and both values.
  auto other = settings;
  other["temperature"] = 1.0;
  const auto e = dfssm::test::error_of([&] { TeacherCache::for_reading(path, other, 1); });
  CHECK(contains(e, "temperature"));
  CHECK(contains(e, "2.0"));
  CHECK(contains(e, "1.0"));
  CHECK(contains(dfssm::test::error_of([&] { TeacherCache::for_reading(path, settings, 4); }), "holds 3 complete"));
  // A resumed writer at micro-batch 2 cuts the file back to 2 and continues.
  {
    auto w = TeacherCache::for_writing(path, settings, k, rows, 2);
    REQUIRE(w->complete() == 2);
    w->append(2, make(7));
  }
  auto r = TeacherCache::for_reading(path, settings, 3);
  REQUIRE(at::equal(r->read(2, at::kCPU).idx, make(7).idx));
  REQUIRE(at::equal(r->read(1, at::kCPU).logp, make(1).logp));
  // Not a cache / truncated.
  write(tmp("cache/junk.h5"), "not hdf5");
  CHECK(contains(dfssm::test::error_of([&] { TeacherCache::for_reading(tmp("cache/junk.h5"), settings, 1); }),
                 "not an HDF5 file"));
}

TEST_CASE("distill with a teacher cache: capture and replay give bit-identical losses; resume continues it",
          "[trainer][cache]") {
  Fixture fx;
  const std::string cache = fx.root + "/topk.h5";
  const std::vector<std::string> w = {"distill.teacher_cache=write", "distill.teacher_cache_k=16",
                                      "distill.teacher_cache_path=" + cache};
  auto args = [&](const std::string& job, std::vector<std::string> extra) {
    std::vector<std::string> a = {"distill", job};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  REQUIRE(run_dfssm(args(fx.job("cw"), w)) == 0);
  const auto la = losses(fx.root + "/cw/student/metrics.jsonl");
  REQUIRE(la.size() == 6);
  // Replay: no teacher forward in the training steps, the same losses to the last digit.
  auto rd = w;
  rd[0] = "distill.teacher_cache=read";
  REQUIRE(run_dfssm(args(fx.job("cr"), rd)) == 0);
  REQUIRE(losses(fx.root + "/cr/student/metrics.jsonl") == la);
  // Other capture settings: refused with a non-zero exit.
  auto bad = rd;
  bad.push_back("distill.temperature=1.5");
  REQUIRE(run_dfssm(args(fx.job("cbad"), bad)) != 0);
  // A capturing run killed after step 3 and resumed leaves the same cache: replaying it gives the
  // same losses again.
  const std::string cache2 = fx.root + "/topk2.h5";
  auto w2 = w;
  w2[2] = "distill.teacher_cache_path=" + cache2;
  REQUIRE(run_dfssm(args(fx.job("ck"), w2), "3") == 128 + SIGKILL);
  REQUIRE(run_dfssm(args(fx.job("ck"), w2)) == 0);
  REQUIRE(losses(fx.root + "/ck/student/metrics.jsonl") == la);
  auto rd2 = rd;
  rd2[2] = "distill.teacher_cache_path=" + cache2;
  REQUIRE(run_dfssm(args(fx.job("cr2"), rd2)) == 0);
  REQUIRE(losses(fx.root + "/cr2/student/metrics.jsonl") == la);
  // auto: a complete matching cache is read.
  auto au = w;
  au[0] = "distill.teacher_cache=auto";
  REQUIRE(run_dfssm(args(fx.job("ca"), au)) == 0);
  REQUIRE(losses(fx.root + "/ca/student/metrics.jsonl") == la);
}

TEST_CASE("DFSSM_PROFILE_STEP writes the step's trace; ssd_chunk changes rounding, not the losses", "[trainer][profile]") {
  Fixture fx;
  const auto job = fx.job("prof");
  REQUIRE(run_dfssm({"distill", job, "distill.steps=3", "distill.eval_every=0", "distill.checkpoint_every=0"}, "",
                    {{"DFSSM_PROFILE_STEP", "1"}}) == 0);
  const std::string trace = fx.root + "/prof/student/profile-step1.json";
  REQUIRE(fs::exists(trace));
  std::ifstream in(trace);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(text.find("dfssm::ssd") != std::string::npos);  // the model's named scopes are in it
  REQUIRE(text.find("dfssm::in_proj") != std::string::npos);
  REQUIRE(!fs::exists(fx.root + "/prof/student/profile-step0.json"));
  // The SSD's chunk length is a compute choice: another one gives the same losses up to rounding.
  const auto job2 = fx.job("chunk");
  REQUIRE(run_dfssm({"distill", job2, "distill.steps=3", "distill.eval_every=0", "distill.checkpoint_every=0",
                     "distill.ssd_chunk=4"}) == 0);
  std::map<int64_t, double> a, b;
  for (auto [path, out] : {std::pair{fx.root + "/prof/student/metrics.jsonl", &a}, std::pair{fx.root + "/chunk/student/metrics.jsonl", &b}}) {
    std::ifstream m(path);
    for (std::string line; std::getline(m, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) (*out)[j.at("step").get<int64_t>()] = j.at("loss").get<double>();
    }
  }
  REQUIRE(a.size() == 3);
  REQUIRE(b.size() == 3);
  for (const auto& [step, loss] : a) {
    INFO("step " << step << ": " << loss << " vs " << b.at(step));
    REQUIRE(std::abs(loss - b.at(step)) <= 1e-4 * std::abs(loss));
  }
}
