#pragma once
// Debug switch DFSSM_PROFILE_STEP=k: records training step k (0-based, counted from the start of
// this process's loop) with LibTorch's Kineto profiler (CUPTI on CUDA) and prints where the GPU
// time went: the kernels by name and by kind, and the model's forward scopes (in_proj, conv,
// ssd, gate_norm, out_proj: RECORD_USER_SCOPE in src/model/mamba2.cpp). Also writes the Chrome
// trace to <run_dir>/profile-step<k>.json. Off (and free) unless the variable is set.
#include <cstdint>
#include <string>

namespace dfssm {

class StepProfiler {
 public:
  explicit StepProfiler(std::string out_dir);
  bool active(int64_t step) const { return step == at_; }
  void start(int64_t step, bool cuda);
  void stop(int64_t step, bool cuda, double wall_s);

 private:
  std::string dir_;
  int64_t at_ = -1;
};

}  // namespace dfssm
