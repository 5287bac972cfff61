// LibTorch model commands: `dfssm init` (random checkpoint) and `dfssm bench` (timings).
#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "model/checkpoint.h"

namespace dfssm::cli {

const char* const kInitUsage =
    "usage: dfssm init -o <dir> [--geometry NAME] [--seed N] [--dtype fp32|fp16|bf16] [key=value ...]\n\n"
    "Writes <dir>/config.json and <dir>/model.safetensors with mamba_ssm's random initialisation.\n"
    "  --geometry  mamba2-130m, mamba2-370m, mamba2-780m, mamba2-1.3b, mamba2-2.7b, tiny, test (default tiny)\n"
    "  key=value   override config fields, e.g. d_model=256 n_layer=8 vocab_size=4096 ngroups=2\n";

namespace {

at::Device pick_device(const std::string& name) {
  if (name.empty()) return torch::cuda::is_available() ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  if (name == "cpu") return at::kCPU;
  if (name == "cuda") {
    DFSSM_CHECK(torch::cuda::is_available(), "--device cuda: no CUDA device is available to LibTorch");
    return at::kCUDA;
  }
  throw Error(str("--device must be cpu or cuda, got '", name, "'"));
}

void sync(at::Device d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int cmd_init(int argc, char** argv) {
  Args args(argc, argv);
  const std::string out = args.require("output");
  Mamba2Config cfg = Mamba2Config::geometry(args.get("geometry", "tiny"));
  for (const auto& [k, v] : args.overrides()) cfg.set(k, v);
  cfg.validate("dfssm init");
  const auto dtype = parse_dtype(args.get("dtype", "fp32"));
  const uint64_t seed = uint64_t(args.get_int("seed", 0));
  args.check_unused();
  DFSSM_CHECK(args.positionals().empty(), "unexpected argument '", args.positionals()[0], "'");
  Mamba2Model model(cfg, at::TensorOptions().dtype(dtype));
  model.init_random(seed);
  save_model(model, out, {{"dfssm_init_seed", std::to_string(seed)}});
  std::printf("wrote %s (%lld parameters)\n", out.c_str(), (long long)cfg.num_params());
  return 0;
}

int cmd_bench_torch(int argc, char** argv) {
  Args args(argc, argv);
  (void)args.get("engine", "torch");
  const at::Device device = pick_device(args.get("device", ""));
  const auto dtype = parse_dtype(args.get("dtype", device.is_cuda() ? "fp16" : "fp32"));
  const int64_t batch = args.get_int("batch", 1), len = args.get_int("prefill", 2048);
  const int steps = int(args.get_int("steps", 32)), warmup = int(args.get_int("warmup", 3)), reps = int(args.get_int("reps", 5));
  DFSSM_CHECK(batch > 0 && len > 0 && steps > 0 && reps > 0, "--batch, --prefill, --steps and --reps must be positive");
  std::unique_ptr<Mamba2Model> model;
  std::string what;
  if (args.has("checkpoint")) {
    what = args.get("checkpoint", "");
    model = load_model(what, dtype, device);
  } else {
    what = args.get("geometry", "mamba2-1.3b");
    Mamba2Config cfg = Mamba2Config::geometry(what);
    for (const auto& [k, v] : args.overrides()) cfg.set(k, v);
    model = std::make_unique<Mamba2Model>(cfg, at::TensorOptions().dtype(dtype).device(device));
    model->init_random(uint64_t(args.get_int("seed", 0)));
  }
  args.check_unused();
  at::NoGradGuard ng;
  const auto& cfg = model->config();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  const auto ids = at::randint(cfg.vocab_size, {batch, len}, gen, at::kLong).to(device);

  using clk = std::chrono::steady_clock;
  auto ms_since = [](clk::time_point t0) { return std::chrono::duration<double, std::milli>(clk::now() - t0).count(); };
  std::vector<double> prefill_ms, step_ms;
  for (int r = 0; r < warmup + reps; ++r) {
    auto state = model->new_state(batch);
    sync(device);
    auto t0 = clk::now();
    auto logits = model->forward(ids, &state);
    sync(device);
    if (r >= warmup) prefill_ms.push_back(ms_since(t0));
    auto next = logits.select(1, len - 1).argmax(-1);
    for (int s = 0; s < steps; ++s) {
      sync(device);
      t0 = clk::now();
      next = model->step(next, state).argmax(-1);
      sync(device);
      if (r >= warmup) step_ms.push_back(ms_since(t0));
    }
  }
  const double pm = median(prefill_ms), sm = median(step_ms);
  std::printf("engine torch  model %s  params %lld  device %s  dtype %s  batch %lld\n", what.c_str(),
              (long long)cfg.num_params(), device.str().c_str(), c10::toString(dtype), (long long)batch);
  std::printf("prefill %lldx%lld: %.2f ms median (%.0f tokens/s)\n", (long long)batch, (long long)len, pm,
              double(batch * len) / pm * 1e3);
  std::printf("decode step: %.3f ms/token median over %zu steps (%.1f tokens/s per sequence)\n", sm, step_ms.size(),
              1e3 / sm);
  return 0;
}

}  // namespace dfssm::cli
