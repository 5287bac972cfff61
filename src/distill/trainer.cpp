#include "distill/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#if __has_include(<c10/cuda/CUDACachingAllocator.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#define DFSSM_TORCH_CUDA 1
#endif
#include <ATen/core/grad_mode.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/io_util.h"
#include "dfssm_git_rev.h"
#include "core/safetensors.h"
#include "distill/data/loader.h"
#include "distill/teacher_cache.h"
#include "distill/grad_buckets.h"
#include "distill/data/manifest.h"
#include "distill/data/sha256.h"
#include "distill/dist.h"
#include "distill/evaluate.h"
#include "distill/loss.h"
#include "model/fused_util.h"
#include "distill/optim.h"
#include "distill/profile.h"
#include "model/checkpoint.h"
#include "model/checkpoint_files.h"
#include "quant/student.h"


namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace dfssm::distill {

namespace {

using Clock = std::chrono::steady_clock;

const char* kLossDefinition =
    "loss = mean over tokens of alpha*T^2*KL(softmax(z_t/T) || softmax(z_s/T)) + (1-alpha)*CE(softmax(z_s), y); "
    "KL summed over the (padded) vocabulary; plus hidden_mse * mean over the selected layers of "
    "mean((n(r_s) - n(r_t))^2), n(r) = r / rms(r) per token, r = residual stream after the block; pretrain: alpha = 0";

// ---- small helpers ------------------------------------------------------------------------------

void fsync_path(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

double peak_memory_gb(at::Device dev) {
#if __has_include(<c10/cuda/CUDACachingAllocator.h>)
  if (dev.is_cuda()) {  // what the caching allocator handed out at its peak
    const auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.has_index() ? dev.index() : 0);
    return double(st.allocated_bytes[0].peak) / double(1ull << 30);
  }
#endif
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss is KiB on Linux
}

// Copies every tensor of a safetensors file into `params` by name (strict both ways).
void load_params(const NamedTensors& params, const std::string& path) {
  const auto f = SafeTensorsFile::open(path);
  at::NoGradGuard ng;
  for (const auto& [k, p] : params) {
    const auto& ti = f.require(k, p.sizes().vec());
    const auto src = at::from_blob(const_cast<uint8_t*>(f.data(ti)), ti.shape, to_scalar_type(ti.dtype));
    p.copy_(src);
  }
  DFSSM_CHECK(f.tensors().size() == params.size(), path, ": holds ", f.tensors().size(), " tensors, the model has ",
              params.size(), " (a checkpoint of a different model?)");
}

void save_tensors(const NamedTensors& ts, const std::string& path) {
  std::vector<at::Tensor> keep;
  std::vector<TensorWrite> w;
  for (const auto& [k, t] : ts) {
    keep.push_back(t.detach().to(at::kCPU).contiguous());
    w.push_back({k, to_dtype(keep.back().scalar_type()), keep.back().sizes().vec(), keep.back().data_ptr(),
                 size_t(keep.back().nbytes())});
  }
  write_safetensors(path, w);
}

NamedTensors load_tensors(const std::string& path) {
  const auto f = SafeTensorsFile::open(path);
  NamedTensors out;
  for (const auto& ti : f.tensors())
    out.emplace_back(ti.name,
                     at::from_blob(const_cast<uint8_t*>(f.data(ti)), ti.shape, to_scalar_type(ti.dtype)).clone());
  return out;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string newest_checkpoint(const std::string& dir) {
  std::string best;
  if (!fs::exists(dir)) return best;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0 && !ends_with(name, ".tmp") && fs::exists(e.path() / "DONE") && name > best)
      best = name;
  }
  return best.empty() ? "" : (fs::path(dir) / best).string();
}

// ---- the run -----------------------------------------------------------------------------------

struct Run {
  const JobConfig& job;
  Mode mode;
  const TrainConfig& tc;
  at::Device device{at::kCPU};
  std::string out_dir, ckpt_dir, metrics_path;
  data::Manifest manifest;
  std::unique_ptr<Mamba2Model> teacher;         // distill only
  std::unique_ptr<quant::Student> student;      // distill only
  std::unique_ptr<Mamba2Model> model;           // pretrain only
  Mamba2Model* trained = nullptr;               // the model being trained
  std::unique_ptr<AdamW> opt;
  std::unique_ptr<Comm> comm;  // data parallelism (a world of one without RANK/WORLD_SIZE)
  std::unique_ptr<data::TokenLoader> loader;
  int64_t step = 0, tokens = 0, skipped = 0;
  double gn_ema = 0;
  std::string teacher_sha;
  std::ofstream metrics;
  std::unique_ptr<GradBuckets> buckets;  // data parallel with dp_bucket_mb > 0 (grad_buckets.h)
  std::unique_ptr<TeacherCache> tcache;  // distill.teacher_cache (teacher_cache.h)
  bool tcache_read = false;              // true: the teacher's side comes from the cache alone

  Run(const JobConfig& j, Mode m) : job(j), mode(m), tc(m == Mode::Pretrain ? j.pretrain : j.distill) {}

  bool distill() const { return mode == Mode::Distill; }

  void setup();
  void build_model();
  void build_optimizer();
  void resume();
  void open_teacher_cache();
  void loop();
  double train_step(const data::Batch* batches, int64_t n, LmLossStats* st, double* gn, bool* skip);
  double train_step_device(const data::Batch* batches, int64_t n, LmLossStats* st, double* gn, bool* skip);
  at::Tensor micro_step(const data::Batch& batch, int64_t i, int64_t n, const LmLossOptions& lo, LmLossStats* s,
                        at::Tensor* hidden);
  void evaluate();
  void checkpoint();
  void finish();
  void log(const json& j) {
    if (!comm->is_root()) return;
    metrics << j.dump() << "\n";
    metrics.flush();
  }
  at::Tensor to_ids(const data::Batch& b, bool inputs) const;
};

void Run::setup() {
  comm = Comm::from_env(job.device == "cuda", tc.dp_backend);
  device = job.device == "cuda" ? at::Device(at::kCUDA, c10::DeviceIndex(comm->local_rank())) : at::Device(at::kCPU);
#ifdef DFSSM_TORCH_CUDA
  if (device.is_cuda()) c10::cuda::set_device(device.index());
#endif
  if (job.threads > 0) {
    at::set_num_threads(int(job.threads));
  } else if (!device.is_cuda() && comm->local_world() > 1) {
    // CPU ranks on one host share its cores: each taking all of them oversubscribes the cores
    // (and OpenMP's waits spin), so each takes its share.
    at::set_num_threads(std::max(1, at::get_num_threads() / comm->local_world()));
  }
  out_dir = stage_dir(job, mode);
  ckpt_dir = out_dir + "/checkpoints";
  metrics_path = out_dir + "/metrics.jsonl";
  fs::create_directories(ckpt_dir);
  manifest = data::read_manifest(job.dataset_dir());
  data::LoaderOptions lo;
  lo.dir = job.dataset_dir();
  lo.seq_len = tc.seq_len;
  lo.batch_size = tc.batch_size;
  lo.seed = job.seed;
  lo.prefetch = 2;
  lo.rank = comm->rank();  // each rank reads its own block of every global batch
  lo.world_size = comm->world();
  loader = std::make_unique<data::TokenLoader>(lo);
  if (comm->world() > 1 && comm->is_root())
    std::printf("data parallel: %d processes (%s), global batch %lld x %lld\n", comm->world(), comm->backend().c_str(),
                (long long)(tc.batch_size * comm->world()), (long long)tc.seq_len);
}

void Run::build_model() {
  at::manual_seed(job.seed);
  if (!distill()) {
    auto cfg = Mamba2Config::geometry(job.geometry);
    for (const auto& [k, v] : job.model_overrides) cfg.set(k, std::to_string(v));
    cfg.vocab_size = manifest.vocab_size;
    cfg.validate("model config of " + job.source);
    model = std::make_unique<Mamba2Model>(cfg, at::TensorOptions().dtype(at::kFloat).device(device));
    model->init_random(job.seed);
    trained = model.get();
    if (tc.ssd_chunk > 0) model->set_chunk_size(tc.ssd_chunk);
    return;
  }
  const auto tdtype = parse_dtype(job.teacher_dtype);
  teacher = load_model(job.teacher_dir(), tdtype, device);
  teacher_sha = data::sha256_file(locate_checkpoint(job.teacher_dir()).weights);
  DFSSM_CHECK(manifest.vocab_size <= teacher->config().padded_vocab(), "the dataset's vocabulary (",
              manifest.vocab_size, ") does not fit the teacher's (", teacher->config().padded_vocab(), ")");
  // The student starts from the fp32 teacher weights (a half-precision teacher is only for speed).
  const auto t32 = tdtype == at::kFloat ? nullptr : load_model(job.teacher_dir(), at::kFloat, device);
  student = quant::make_student(t32 ? *t32 : *teacher, job.quant, job.seed, device);
  trained = student->model.get();
  if (tc.ssd_chunk > 0) teacher->set_chunk_size(tc.ssd_chunk), trained->set_chunk_size(tc.ssd_chunk);
}

void Run::build_optimizer() {
  std::vector<ParamGroup> groups;
  if (!distill()) {
    ParamGroup mats{"matrices", {}, tc.lr, tc.weight_decay, false}, vecs{"vectors", {}, tc.lr, 0.0, false};
    for (auto& [n, p] : trained->named_parameters()) (p.dim() >= 2 ? mats : vecs).params.emplace_back(n, p);
    groups = {mats, vecs};
  } else {
    ParamGroup lat{"latents", {}, tc.lr, tc.weight_decay, false}, q{"field_lowrank", {}, tc.lr_scales, 0.0, true},
        other{"other", {}, tc.lr_other, 0.0, true};
    for (auto& [n, p] : trained->named_parameters()) {
      if (ends_with(n, ".w_lat")) lat.params.emplace_back(n, p);
      else if (n.find("_proj.field_") != std::string::npos || n.find("_proj.lr_") != std::string::npos)
        q.params.emplace_back(n, p);
      else other.params.emplace_back(n, p);
    }
    groups = {lat, q, other};
  }
  for (auto& g : groups)
    for (auto& [n, p] : g.params) p.requires_grad_(true);
  trained->recompute_layers = tc.recompute_layers(trained->config().n_layer);
  trained->keep_ssd_output = tc.activation_checkpointing_keep == "ssd_output";
  if (device.is_cuda()) {
    trained->keep_in_proj_layers = keep_in_proj_for(job, mode, trained->config());
    if (tc.activation_checkpointing_keep_in_proj == "auto" && comm->is_root()) {
      const auto& k = trained->keep_in_proj_layers;
      std::printf("activation_checkpointing_keep_in_proj auto: %lld layers keep their in_proj output (budget %g GiB)\n",
                  (long long)std::count(k.begin(), k.end(), true), tc.memory_budget_gib);
    }
  }
  opt = std::make_unique<AdamW>(groups, tc.beta1, tc.beta2, tc.eps);
  if (comm->world() > 1 && tc.dp_bucket_mb > 0) {
    std::vector<at::Tensor> params;  // registration order (forward order)
    for (auto& [n, p] : trained->named_parameters())
      if (p.requires_grad()) params.push_back(p);
    buckets = std::make_unique<GradBuckets>(*comm, params, int64_t(tc.dp_bucket_mb * 1e6));
    if (comm->is_root())
      std::printf("data parallel: gradients in %zu buckets of ~%.3g MB, all-reduced during backward\n",
                  buckets->buckets(), tc.dp_bucket_mb);
  }
}

void Run::resume() {
  std::string from;
  if (tc.resume == "auto") from = newest_checkpoint(ckpt_dir);
  else if (tc.resume != "none") from = tc.resume;
  // Metrics of steps after the checkpoint are rewritten by this run: drop them.
  std::vector<std::string> keep;
  if (!from.empty()) {
    DFSSM_CHECK(fs::exists(fs::path(from) / "DONE"), "resume: '", from, "' is not a complete checkpoint (no DONE)");
    const auto state = json::parse(read_text_file(from + "/state.json"));
    step = state.at("step").get<int64_t>();
    tokens = state.at("tokens").get<int64_t>();
    skipped = state.at("skipped").get<int64_t>();
    gn_ema = state.at("gn_ema").get<double>();
    load_params(trained->named_parameters(), from + (distill() ? "/student.safetensors" : "/model.safetensors"));
    opt->load_state(load_tensors(from + "/optim.safetensors"));
    loader->restore(data::Cursor::from_json(state.at("cursor").dump()));
    const auto rng = base64_decode(state.at("rng_cpu").get<std::string>());
    auto t = at::empty({int64_t(rng.size())}, at::kByte);
    std::memcpy(t.data_ptr(), rng.data(), rng.size());
    auto gen = at::detail::getDefaultCPUGenerator();  // a handle sharing the global generator
    gen.set_state(t);
    std::ifstream in(metrics_path);
    for (std::string line; std::getline(in, line);) {
      try {
        const auto j = json::parse(line);
        if (!j.contains("step") || j.at("step").get<int64_t>() <= step) keep.push_back(line);
      } catch (...) {  // a line cut by the kill
      }
    }
    std::printf("resumed from %s (step %lld)\n", from.c_str(), (long long)step);
  }
  if (comm->is_root()) {
    metrics.open(metrics_path, std::ios::trunc);
    for (const auto& l : keep) metrics << l << "\n";
  }
  if (from.empty())
    log({{"event", "start"}, {"mode", distill() ? "distill" : "pretrain"}, {"loss_definition", kLossDefinition},
         {"config", job.flat}, {"git", DFSSM_GIT_REV}, {"world", comm->world()}, {"dp_backend", comm->backend()},
         {"threads", at::get_num_threads()}});
}

at::Tensor Run::to_ids(const data::Batch& b, bool inputs) const {
  auto all = at::from_blob(const_cast<int32_t*>(b.tokens.data()), {b.rows, b.cols}, at::kInt).to(at::kLong);
  auto ids = (inputs ? all.narrow(1, 0, b.cols - 1) : all.narrow(1, 1, b.cols - 1)).contiguous();
  if (!device.is_cuda()) return ids;
  // On CUDA: the range check on the host (embed's own check would synchronise, see
  // TokenIdsChecked), then an asynchronous copy from pinned memory (a pageable copy waits for the
  // stream: the whole previous step).
  if (inputs && ids.numel() > 0) {
    int64_t vocab = trained->config().padded_vocab();
    if (teacher) vocab = std::min(vocab, teacher->config().padded_vocab());
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    DFSSM_CHECK(lo >= 0 && hi < vocab, "token id ", (lo < 0 ? lo : hi), " in the training data is outside the model's vocabulary [0, ",
                vocab, ")");
  }
  return ids.pin_memory().to(device, /*non_blocking=*/true);
}

// One micro-batch (of n per step): the teacher's side, the student's forward and loss, and the
// backward of loss / n. Returns the loss (detached); *hidden is the hidden-state term (undefined
// when off). `lo.defer_stats` decides whether `s` gets doubles or device sums.
at::Tensor Run::micro_step(const data::Batch& batch, int64_t i, int64_t n, const LmLossOptions& lo, LmLossStats* s,
                           at::Tensor* hidden) {
  const TokenIdsChecked checked;  // to_ids checked the ids on the host
  const auto x = to_ids(batch, true), y = to_ids(batch, false).view({-1});
  at::Tensor ht, wt;
  const bool hid = distill() && tc.hidden_mse > 0;
  std::vector<at::Tensor> rt, rs;
  TeacherTopK tk;  // with a teacher cache: the teacher's side of the KL, read or captured here
  const int64_t mb = step * tc.grad_accum + i;
  if (distill() && tcache_read) {
    tk = tcache->read(mb, device);
  } else if (distill()) {
    at::NoGradGuard ng;
    ht = teacher->forward_hidden(x, nullptr, hid ? &rt : nullptr);
    ht = ht.reshape({-1, ht.size(-1)});
    wt = teacher->lm_weight();
    if (tcache) {
      tk = teacher_topk(ht, wt, y, tc.temperature, tc.teacher_cache_k, tc.kl_chunk, lo.matmul_dtype);
      tcache->append(mb, tk);
    }
  }
  at::Tensor loss;
  {
    AutocastGuard ac(device.is_cuda());
    auto hs = trained->forward_hidden(x, nullptr, hid ? &rs : nullptr);
    const auto h2 = hs.reshape({-1, hs.size(-1)});
    // Capturing and replaying runs both use the top-k KL, so they give the same losses.
    loss = tk.defined() ? lm_loss(h2, trained->lm_weight(), tk, y, lo, s)
                        : lm_loss(h2, trained->lm_weight(), ht, wt, y, lo, s);
    if (hid) {
      *hidden = hidden_mse(rs, rt, tc.hidden_layers(trained->config().n_layer));
      loss = loss + *hidden * tc.hidden_mse;
    }
  }
  if (buckets && i + 1 == n) buckets->arm();  // the last micro-batch's gradients are the step's
  (loss / double(n)).backward();
  return loss.detach();
}

namespace {
// DFSSM_STEP_SYNC=1 (debug): the CUDA step reads the loss, its statistics and the gradient norm on
// the host as soon as each exists (the CPU path always does), instead of once at its end.
fused::Switch& step_sync_switch() {
  static fused::Switch s("DFSSM_STEP_SYNC", false);
  return s;
}
}  // namespace

double Run::train_step(const data::Batch* batches, int64_t n, LmLossStats* st, double* gn, bool* skip) {
  if (device.is_cuda() && comm->world() == 1 && !step_sync_switch().on() && opt->can_step_on_device())
    return train_step_device(batches, n, st, gn, skip);
  LmLossOptions lo{distill() ? tc.alpha : 0.0, tc.temperature, tc.kl_chunk,
                   device.is_cuda() ? at::kBFloat16 : at::kFloat};
  double loss_sum = 0;
  LmLossStats acc;
  for (int64_t i = 0; i < n; ++i) {
    LmLossStats s;
    at::Tensor h;
    const auto loss = micro_step(batches[i], i, n, lo, &s, &h);
    if (h.defined()) acc.hidden += h.item<double>() / double(n);
    acc.kl += s.kl / double(n), acc.ce += s.ce / double(n), acc.top1 += s.top1 / double(n);
    acc.teacher_ce += s.teacher_ce / double(n);
    loss_sum += loss.item<double>() / double(n);
  }
  if (comm->world() > 1) {  // average gradients and the logged statistics over the ranks
    std::vector<at::Tensor> grads;
    if (buckets) {
      buckets->finish();  // most buckets were all-reduced while backward ran
    } else {
      for (const auto& g : opt->groups())
        for (const auto& [name, p] : g.params) {
          if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
          grads.push_back(p.grad());
        }
    }
    auto stats = at::tensor({loss_sum, acc.kl, acc.ce, acc.top1, acc.teacher_ce, acc.hidden}, at::kDouble).to(at::kFloat);
    grads.push_back(stats);
    comm->allreduce_mean(grads);
    loss_sum = stats[0].item<double>(), acc.kl = stats[1].item<double>(), acc.ce = stats[2].item<double>();
    acc.top1 = stats[3].item<double>(), acc.teacher_ce = stats[4].item<double>(), acc.hidden = stats[5].item<double>();
  }
  *st = acc;
  *gn = opt->clip_grad_norm(tc.clip_grad_norm);
  const bool spike = tc.spike_factor > 0 && step >= 10 && *gn > tc.spike_factor * gn_ema;
  *skip = !std::isfinite(loss_sum) || !std::isfinite(*gn) || spike;
  if (!*skip) {
    opt->step(lr_at(tc, step));
    gn_ema = step == 0 ? *gn : 0.9 * gn_ema + 0.1 * *gn;
  }
  opt->zero_grad();
  return loss_sum;
}

// The same step on one GPU with one host synchronisation, at its end: the loss and its statistics
// accumulate on the device, the clip coefficient and the skip decision are computed there and
// handed to the update kernels (AdamW::step(lr, gscale, run)), and one copy brings everything to
// the host. Each synchronisation inside the step left the GPU idle while the host caught up
// (launching the next kernels), which at small batches was a large part of the step.
double Run::train_step_device(const data::Batch* batches, int64_t n, LmLossStats* st, double* gn, bool* skip) {
  LmLossOptions lo{distill() ? tc.alpha : 0.0, tc.temperature, tc.kl_chunk, at::kBFloat16, /*defer_stats=*/true};
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  auto sums = at::zeros({6}, f64);  // loss, kl, ce, top1, teacher_ce, hidden: means over the micro-batches
  for (int64_t i = 0; i < n; ++i) {
    LmLossStats s;
    at::Tensor h;
    const auto loss = micro_step(batches[i], i, n, lo, &s, &h);
    const auto hv = h.defined() ? h.detach().to(at::kDouble).view({1}) : at::zeros({1}, f64);
    sums += at::cat({loss.to(at::kDouble).view({1}), s.sums, hv}) / double(n);
  }
  // The host path's decisions, in the same fp64 arithmetic: clip to clip_grad_norm, skip on a
  // non-finite loss or norm or a norm spike (gn > spike_factor x its running mean).
  const auto norm = opt->grad_norm_device().to(at::kDouble);
  const bool spike_on = tc.spike_factor > 0 && step >= 10;
  const double limit = spike_on ? tc.spike_factor * gn_ema : std::numeric_limits<double>::infinity();
  const auto run = at::isfinite(sums[0]) & at::isfinite(norm) & (norm <= limit);
  auto gscale = at::ones({}, f64);
  if (tc.clip_grad_norm > 0)
    gscale = at::where(norm > tc.clip_grad_norm, tc.clip_grad_norm / (norm + 1e-6), gscale);
  opt->step(lr_at(tc, step), gscale.to(at::kFloat), run.to(at::kFloat));
  opt->zero_grad();
  const auto host = at::cat({sums, norm.view({1}), run.to(at::kDouble).view({1})}).cpu();  // the one synchronisation
  const double* v = host.data_ptr<double>();
  st->kl = v[1], st->ce = v[2], st->top1 = v[3], st->teacher_ce = v[4], st->hidden = v[5];
  *gn = v[6];
  *skip = v[7] == 0;
  if (*skip) {
    opt->unstep();
  } else {
    gn_ema = step == 0 ? *gn : 0.9 * gn_ema + 0.1 * *gn;
  }
  return v[0];
}

void Run::evaluate() {
  data::LoaderOptions vo = data::validation_options(loader->options());
  vo.rank = 0;  // the root evaluates the whole held-out sample alone
  vo.world_size = 1;
  const auto r = evaluate_lm(distill() ? teacher.get() : nullptr, *trained, vo, tc.eval_batches, tc.kl_chunk,
                             device.is_cuda());
  if (r.tokens == 0) return;
  json e = {{"step", step}, {"event", "eval"}, {"tokens", r.tokens}, {"student_ce", r.student_ce}};
  if (distill()) e["teacher_ce"] = r.teacher_ce, e["kl"] = r.kl, e["top1"] = r.top1;
  log(e);
  std::printf("eval @ %lld: %s\n", (long long)step, e.dump().c_str());
}

void Run::checkpoint() {
  const auto name = str("step-", std::string(8 - std::min<size_t>(8, std::to_string(step).size()), '0'), step);
  const fs::path final_dir = fs::path(ckpt_dir) / name, tmp = fs::path(ckpt_dir) / (name + ".tmp");
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  if (distill()) {
    student->meta["tokens_seen"] = std::to_string(tokens);
    student->meta["steps"] = std::to_string(step);
    quant::save_student(*student, tmp.string());
  } else {
    save_model(*model, tmp.string(), {{"tokenizer_sha256", manifest.tokenizer_sha256}});
  }
  save_tensors(opt->state(), (tmp / "optim.safetensors").string());
  const auto rng = at::detail::getDefaultCPUGenerator().get_state();
  json st = {{"step", step},     {"tokens", tokens},
             {"skipped", skipped}, {"gn_ema", gn_ema},
             {"cursor", json::parse(loader->cursor().to_json())},
             {"rng_cpu", base64_encode(rng.data_ptr<uint8_t>(), size_t(rng.numel()))},
             {"schedule", tc.schedule}, {"lr_factor", lr_at(tc, step)},
             {"config", job.flat},     {"git", DFSSM_GIT_REV}};
  write_file_atomic((tmp / "state.json").string(), st.dump(2));
  write_file_atomic((tmp / "DONE").string(), "");
  fsync_path(tmp);
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  fsync_path(ckpt_dir);
  // Keep the newest K complete checkpoints.
  std::vector<std::string> all;
  for (const auto& e : fs::directory_iterator(ckpt_dir))
    if (e.path().filename().string().rfind("step-", 0) == 0) all.push_back(e.path().string());
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + size_t(tc.keep_checkpoints) < all.size(); ++i) fs::remove_all(all[i]);
}

void Run::open_teacher_cache() {
  if (!distill() || tc.teacher_cache == "none") return;
  DFSSM_CHECK(tc.alpha > 0, "distill.teacher_cache needs alpha > 0 (the cache holds the KL's teacher side)");
  DFSSM_CHECK(tc.hidden_mse == 0, "distill.teacher_cache holds no hidden states: set distill.hidden_mse=0 or "
                                  "distill.teacher_cache=none");
  const int64_t V = trained->config().padded_vocab(), k = tc.teacher_cache_k;
  DFSSM_CHECK(k <= V, "distill.teacher_cache_k = ", k, " exceeds the padded vocabulary (", V, ")");
  std::string path = tc.teacher_cache_path.empty() ? job.run_dir + "/teacher_topk.h5" : tc.teacher_cache_path;
  if (comm->world() > 1) path += str(".rank", comm->rank(), "-of-", comm->world());
  const int64_t rows = tc.batch_size * tc.seq_len;
  // Everything that fixes the cached values and their order (checked when the file is read).
  const nlohmann::json settings = {
      {"teacher_sha256", teacher_sha},
      {"teacher_dtype", job.teacher_dtype},
      {"matmul_dtype", device.is_cuda() ? "bf16" : "fp32"},
      {"temperature", tc.temperature},
      {"k", k},
      {"vocab", V},
      {"dataset_manifest_sha256", data::sha256_file(job.dataset_dir() + "/manifest.json")},
      {"seq_len", tc.seq_len},
      {"batch_size", tc.batch_size},
      {"grad_accum", tc.grad_accum},
      {"seed", job.seed},
      {"rank", comm->rank()},
      {"world", comm->world()},
      {"kl_chunk", tc.kl_chunk},
      {"rows_per_microbatch", rows}};
  const int64_t need = tc.steps * tc.grad_accum, at_mb = step * tc.grad_accum;
  std::string mode = tc.teacher_cache;
  if (mode == "auto") {
    std::string why;
    const int64_t have = TeacherCache::complete_microbatches(path, settings, &why);
    if (have >= need) {
      mode = "read";
    } else if (have >= at_mb || at_mb == 0) {
      mode = "write";
    } else {
      std::printf("teacher cache: off for this run (%s; it cannot continue at micro-batch %lld)\n", why.c_str(),
                  (long long)at_mb);
      return;
    }
  }
  if (mode == "read") {
    tcache = TeacherCache::for_reading(path, settings, need);
    tcache_read = true;
  } else {
    tcache = TeacherCache::for_writing(path, settings, k, rows, at_mb);
  }
  std::printf("teacher cache: %s %s (top %lld, %lld micro-batches complete)\n", tcache_read ? "reading" : "writing",
              path.c_str(), (long long)k, (long long)tcache->complete());
  log({{"event", "teacher_cache"}, {"mode", tcache_read ? "read" : "write"}, {"path", path}, {"k", k}});
}

void Run::loop() {
  const int64_t per_step = tc.batch_size * tc.seq_len * tc.grad_accum * comm->world();  // global
  const bool tty = ::isatty(1);
  const auto t0 = Clock::now();
  const int64_t start = step;
  const char* kill_env = std::getenv("DFSSM_DEBUG_KILL_AT_STEP");  // test hook: simulate a crash
  const int64_t kill_at = kill_env ? std::atoll(kill_env) : -1;
  std::vector<data::Batch> mb(size_t(tc.grad_accum));
  StepProfiler prof(out_dir);  // DFSSM_PROFILE_STEP=k (debug): a kernel profile of the k-th step
  // A fresh distillation first evaluates the init-only student (binarized from the teacher,
  // untrained): the baseline of every later eval, and in the metrics even if the run is cut short.
  if (distill() && start == 0 && tc.eval_every > 0 && comm->is_root()) evaluate();
  while (step < tc.steps) {
    for (auto& b : mb) DFSSM_CHECK(loader->next(&b), "the training loader ran dry");
    LmLossStats st;
    double gn = 0;
    bool skip = false;
    const auto ts = Clock::now();
    prof.start(step - start, device.is_cuda());
    const double loss = train_step(mb.data(), tc.grad_accum, &st, &gn, &skip);
    const double dt = std::chrono::duration<double>(Clock::now() - ts).count();
    prof.stop(step - start, device.is_cuda(), dt);
    const double lr = tc.lr * lr_at(tc, step);
    ++step;
    tokens += per_step;
    skipped += skip;
    if (comm->is_root() && (step % tc.log_every == 0 || step == tc.steps || skip)) {
      json j = {{"step", step},          {"loss", loss}, {"ce", st.ce},   {"lr", lr}, {"grad_norm", gn},
                {"skipped", skip},       {"tokens", tokens}, {"tokens_per_s", double(per_step) / dt},
                {"peak_mem_gb", peak_memory_gb(device)}};
      if (distill()) j["kl"] = st.kl, j["top1"] = st.top1, j["teacher_ce"] = st.teacher_ce;
      if (distill() && tc.hidden_mse > 0) j["hidden_mse"] = st.hidden;
      const double flops = 6.0 * double(trained->config().num_params()) * double(per_step) / dt;
      j["tflops"] = flops / 1e12;
      if (device.is_cuda()) j["mfu"] = flops / 989e12;  // H100 dense bf16 peak
      log(j);
      const double el = std::chrono::duration<double>(Clock::now() - t0).count();
      const double eta = el / double(step - start) * double(tc.steps - step);
      std::printf("%s[%s %lld/%lld] loss %.4f ce %.4f%s lr %.2e gn %.3f %.0f tok/s eta %.0fs%s%s",
                  tty ? "\r" : "", distill() ? "distill" : "pretrain", (long long)step, (long long)tc.steps, loss, st.ce,
                  distill() ? str(" kl ", st.kl).c_str() : "", lr, gn, double(per_step) / dt, eta,
                  skip ? " (update skipped)" : "", tty ? "   " : "\n");
      std::fflush(stdout);
    }
    const bool last = step == tc.steps;
    if (comm->is_root() && ((tc.eval_every > 0 && step % tc.eval_every == 0) || last)) {
      if (tty) std::printf("\n");
      evaluate();
    }
    if (comm->is_root() && ((tc.checkpoint_every > 0 && step % tc.checkpoint_every == 0) || last)) checkpoint();
    if (step == kill_at) std::raise(SIGKILL);
  }
  if (tty) std::printf("\n");
}

void Run::finish() {
  if (distill()) {
    student->meta["teacher_sha256"] = teacher_sha;
    student->meta["tokens_seen"] = std::to_string(tokens);
    student->meta["steps"] = std::to_string(step);
    student->meta["tokenizer_sha256"] = manifest.tokenizer_sha256;
    if (!manifest.tokenizer_file.empty())
      student->meta["tokenizer_path"] = fs::absolute(fs::path(job.dataset_dir()) / manifest.tokenizer_file).string();
    quant::save_student(*student, out_dir + "/final");
  } else {
    save_model(*model, out_dir, {{"tokenizer_sha256", manifest.tokenizer_sha256}, {"tokens_seen", std::to_string(tokens)},
                                 {"steps", std::to_string(step)}});
  }
  write_file_atomic(out_dir + "/DONE", str("steps ", step, "\n"));
}

}  // namespace

std::string stage_dir(const JobConfig& job, Mode mode) {
  return mode == Mode::Pretrain ? job.teacher_dir() : job.student_dir();
}

bool stage_done(const JobConfig& job, Mode mode) { return fs::exists(stage_dir(job, mode) + "/DONE"); }

TrainSummary train(const JobConfig& job, Mode mode) {
  const auto t0 = Clock::now();
  Run r(job, mode);
  r.setup();
  r.build_model();
  r.build_optimizer();
  r.resume();
  r.open_teacher_cache();
  r.loop();
  if (r.comm->is_root()) r.finish();
  r.comm->barrier();  // no rank exits (tearing down the store) before the root has saved
  TrainSummary s;
  s.steps = r.step;
  s.tokens = r.tokens;
  s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  s.output = mode == Mode::Distill ? r.out_dir + "/final" : r.out_dir;
  return s;
}

namespace {
// The --dry-run estimate's parts, in bytes.
struct MemoryParts {
  double teacher = 0, weights = 0, optim = 0, act = 0, head = 0;
  double total() const { return teacher + weights + optim + act + head; }
};

// The model the estimate is for: the teacher's checkpoint where distillation has one, else the
// job's geometry.
Mamba2Config estimate_config(const JobConfig& job, Mode mode) {
  Mamba2Config cfg;
  if (mode == Mode::Distill && fs::exists(job.teacher_dir())) {
    cfg = read_checkpoint_config(locate_checkpoint(job.teacher_dir()));
  } else {
    cfg = Mamba2Config::geometry(job.geometry);
    for (const auto& [k, v] : job.model_overrides) cfg.set(k, std::to_string(v));
  }
  return cfg;
}

// How many recomputed layers save the add's operands under Mamba2Model::stream_pairs (its
// forward_hidden's rule: layer 0 saves its stream; a later recomputed layer saves operands when
// the previous one saved its stream, and then passes on an unsaved one).
int64_t operand_layers(const std::vector<bool>& rec) {
  int64_t n = 0;
  bool saved = false;
  for (size_t i = 0; i < rec.size(); ++i) {
    const bool operands = rec[i] && i > 0 && saved;
    n += operands;
    saved = rec[i] && !operands;
  }
  return n;
}

// kept_in: the recomputed layers that keep their in_proj output.
MemoryParts estimate_parts(const JobConfig& job, Mode mode, const Mamba2Config& cfg, const std::vector<bool>& kept_in_layers) {
  const auto& tc = mode == Mode::Pretrain ? job.pretrain : job.distill;
  const double P = double(cfg.num_params());
  const double tok = double(tc.batch_size * tc.seq_len);
  const double tbytes = job.teacher_dtype == "fp32" ? 4 : 2;
  // Per token and layer the autograd graph keeps about alpha x (2*d_in_proj + 6*d_inner) floats
  // (in_proj output, conv and chunked-SSD intermediates, gated norm). alpha was calibrated on
  // measured peaks: 3 for the ATen model (the CPU path; H100, 1.3B, batch 1 x 2048: 70.9 GiB
  // without checkpointing), 0.9 with the fused CUDA kernels (H200: 130m at 32 x 1024 without
  // checkpointing, 43.6 GiB distilling and 41.6 GiB pretraining; 1.3B at 16 x 2048 with every
  // layer checkpointed, 42.8 GiB; this formula gives 45.3, 45.1 and 40.8). A recomputed layer
  // keeps only its fp32 input; one layer's full graph and two residual-stream gradients exist
  // at a time during its backward.
  const double alpha = job.device == "cuda" ? 0.9 : 3.0;
  const double per_layer = tok * alpha * double(2 * cfg.d_in_proj() + 6 * cfg.d_inner()) * 4;
  const double stream = tok * double(cfg.d_model) * 4;  // one fp32 residual stream
  const auto rec = tc.recompute_layers(cfg.n_layer);
  const double n_rec = double(std::count(rec.begin(), rec.end(), true));
  // A recomputed layer that keeps its SSD output (bf16 under the CUDA autocast) holds that too.
  const double kept_y = job.device == "cuda" && tc.activation_checkpointing_keep == "ssd_output"
                            ? tok * double(cfg.d_inner()) * 2
                            : 0.0;
  // Recomputed layers that keep their in_proj output hold it too (bf16 under the CUDA autocast).
  const auto& kp = kept_in_layers;
  const double kept_in = job.device == "cuda" ? double(std::count(kp.begin(), kp.end(), true)) * tok *
                                                    double(cfg.d_in_proj()) * 2
                                              : 0.0;
  // DFSSM_CKPT_STREAM_PAIRS=1 (Mamba2Model::stream_pairs): a recomputed layer after one that saved
  // its stream holds block i-1's bf16 output instead (half a stream) under the CUDA autocast.
  const bool pairs = job.device == "cuda" && Mamba2Model::stream_pairs() && !(mode == Mode::Distill && tc.hidden_mse > 0);
  const double half_streams = pairs ? double(operand_layers(rec)) : 0.0;
  const double act =
      (double(cfg.n_layer) - n_rec) * per_layer +
      (n_rec > 0 ? n_rec * (stream + kept_y) - half_streams * stream / 2 + kept_in + per_layer + 2 * stream : 0.0);
  const double head = double(std::min<int64_t>(tc.kl_chunk, int64_t(tok))) * double(cfg.padded_vocab()) * 4 * 6;
  MemoryParts m;
  m.act = act, m.head = head;
  if (mode == Mode::Distill) {
    m.teacher = P * tbytes;
    m.weights = P * 4 * 2;  // fp32 masters + their grads
    m.optim = P * 4 * 2;    // Adam m, v
  } else {
    m.weights = P * 8;
    m.optim = P * 8;
  }
  return m;
}
}  // namespace

std::vector<bool> keep_in_proj_for(const JobConfig& job, Mode mode, const Mamba2Config& cfg) {
  const auto& tc = mode == Mode::Pretrain ? job.pretrain : job.distill;
  if (tc.activation_checkpointing_keep_in_proj != "auto") return tc.keep_in_proj_layers(cfg.n_layer);
  std::vector<bool> keep(size_t(cfg.n_layer), false);
  if (job.device != "cuda") return keep;  // kept in_proj outputs are a CUDA path
  // The first recomputed layers, one more while the estimate stays within the budget (which
  // layers does not change the peak: every kept tensor is alive when the backward starts).
  const auto rec = tc.recompute_layers(cfg.n_layer);
  const double budget = tc.memory_budget_gib * double(1ull << 30);
  for (size_t i = 0; i < keep.size(); ++i) {
    if (!rec[i]) continue;
    keep[i] = true;
    if (estimate_parts(job, mode, cfg, keep).total() > budget) {
      keep[i] = false;
      break;
    }
  }
  return keep;
}

std::string memory_estimate(const JobConfig& job, Mode mode) {
  const auto& tc = mode == Mode::Pretrain ? job.pretrain : job.distill;
  const auto cfg = estimate_config(job, mode);
  const auto kin = keep_in_proj_for(job, mode, cfg);
  const auto m = estimate_parts(job, mode, cfg, kin);
  auto gib = [](double b) { return b / double(1ull << 30); };
  std::string r = str("memory estimate (", mode == Mode::Distill ? "distill" : "pretrain", ", ", cfg.num_params(),
                      " parameters, batch ", tc.batch_size, "x", tc.seq_len, "):\n", "  teacher      ", gib(m.teacher),
                      " GiB\n", "  student/model weights+grads ", gib(m.weights), " GiB\n", "  optimizer    ",
                      gib(m.optim), " GiB\n", "  activations  ", gib(m.act), " GiB\n", "  LM head chunks ", gib(m.head),
                      " GiB\n", "  total        ", gib(m.total()), " GiB\n");
  if (mode == Mode::Distill && !fs::exists(job.teacher_dir()))
    r += str("  (no teacher on disk yet: sized as model.geometry ", job.geometry, ")\n");
  if (tc.activation_checkpointing_keep_in_proj == "auto") {
    std::string layers;
    for (size_t i = 0; i < kin.size(); ++i)
      if (kin[i]) layers += (layers.empty() ? "" : ",") + std::to_string(i);
    r += str("  activation_checkpointing_keep_in_proj auto: ", layers.empty() ? std::string("none") : layers,
             job.device == "cuda" ? "" : " (CUDA only)", "\n");
  }
  if (tc.memory_budget_gib > 0 && gib(m.total()) > tc.memory_budget_gib)
    r += str("  over the memory budget of ", tc.memory_budget_gib, " GiB (memory_budget_gib)\n");
  return r;
}

}  // namespace dfssm::distill
