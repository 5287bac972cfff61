#include "distill/profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>
#if __has_include(<c10/cuda/CUDAFunctions.h>)
#include <c10/cuda/CUDAFunctions.h>
#define DFSSM_PROFILE_HAVE_CUDA 1
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>

namespace dfssm {
namespace kp = torch::profiler::impl;
namespace ap = torch::autograd::profiler;

namespace {
void sync(bool cuda) {
#ifdef DFSSM_PROFILE_HAVE_CUDA
  if (cuda) c10::cuda::device_synchronize();
#else
  (void)cuda;
#endif
}

// A coarse kind for a kernel name, so the table says "elementwise" rather than 300 template names.
std::string kind_of(const std::string& n) {
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  if (has("gemm") || has("Gemm") || has("xmma") || has("cutlass") || has("gemv") || has("sm90_") || has("nvjet"))
    return "matmul";
  if (has("nccl")) return "nccl";
  if (has("Memcpy") || has("Memset") || has("memcpy") || has("memset")) return "memcpy/memset";
  if (has("reduce") || has("Reduce")) return "reduction";
  if (has("scan") || has("cumsum")) return "scan";
  if (has("conv") || has("Conv")) return "conv";
  if (has("cat") || has("Cat") || has("index") || has("Index") || has("gather") || has("scatter")) return "copy/index";
  if (has("elementwise") || has("Elementwise") || has("unrolled") || has("vectorized")) return "elementwise";
  return "other";
}

// libkineto::ActivityType values (kineto/ActivityType.h, not on every include path).
constexpr uint8_t kCpuAnnotation = 1, kGpuAnnotation = 2, kMemcpy = 3, kMemset = 4, kKernel = 5;

struct Agg {
  double us = 0;
  int64_t n = 0;
};

void print_table(const char* title, std::map<std::string, Agg>& m, double total_us, size_t top) {
  std::vector<std::pair<std::string, Agg>> v(m.begin(), m.end());
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second.us > b.second.us; });
  std::printf("-- %s\n", title);
  for (size_t i = 0; i < v.size() && i < top; ++i) {
    auto name = v[i].first;
    if (name.size() > 110) name = name.substr(0, 107) + "...";
    std::printf("%10.2f ms %5.1f%% %6lld x  %s\n", v[i].second.us / 1e3, 100.0 * v[i].second.us / std::max(total_us, 1.0),
                (long long)v[i].second.n, name.c_str());
  }
}
}  // namespace

StepProfiler::StepProfiler(std::string out_dir) : dir_(std::move(out_dir)) {
  if (const char* e = std::getenv("DFSSM_PROFILE_STEP")) at_ = std::atoll(e);
}

void StepProfiler::start(int64_t step, bool cuda) {
  if (!active(step)) return;
  std::set<kp::ActivityType> acts{kp::ActivityType::CPU};
  if (cuda) acts.insert(kp::ActivityType::CUDA);
  const kp::ProfilerConfig cfg(kp::ProfilerState::KINETO);
  ap::prepareProfiler(cfg, acts);
  sync(cuda);
  ap::enableProfiler(cfg, acts, {at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION, at::RecordScope::USER_SCOPE});
}

void StepProfiler::stop(int64_t step, bool cuda, double wall_s) {
  if (!active(step)) return;
  sync(cuda);
  auto res = ap::disableProfiler();
  std::map<std::string, Agg> kernels, kinds, scopes;
  double gpu_us = 0;
  for (const auto& e : res->events()) {
    const double us = double(e.durationNs()) / 1e3;
    const auto name = e.name();
    const auto act = e.activityType();
    // The model scopes: their GPU-side spans on CUDA, their CPU ranges on the CPU.
    if (act == (cuda ? kGpuAnnotation : kCpuAnnotation) && name.rfind("dfssm::", 0) == 0) {
      auto& a = scopes[name];
      a.us += us, ++a.n;
    } else if (act == kKernel || act == kMemcpy || act == kMemset) {
      gpu_us += us;
      auto& k = kernels[name];
      k.us += us, ++k.n;
      auto& c = kinds[kind_of(name)];
      c.us += us, ++c.n;
    }
  }
  std::printf("\n== profile of step %lld: wall %.1f ms, GPU kernel time %.1f ms (%.0f%% busy)\n", (long long)step,
              wall_s * 1e3, gpu_us / 1e3, 100.0 * gpu_us / std::max(wall_s * 1e6, 1.0));
  print_table("GPU time by kind", kinds, gpu_us, 20);
  print_table(cuda ? "GPU time of the forward scopes (spans; backward not included)" : "forward scopes (CPU ranges)", scopes, cuda ? gpu_us : wall_s * 1e6, 20);
  print_table("top kernels", kernels, gpu_us, 40);
  const auto path = dir_ + "/profile-step" + std::to_string(step) + ".json";
  res->save(path);
  std::printf("== trace: %s\n\n", path.c_str());
  std::fflush(stdout);
}

}  // namespace dfssm
