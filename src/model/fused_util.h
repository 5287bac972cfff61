#pragma once
// Shared by the autograd wrappers over the CUDA training kernels (ssd_fused.cpp, conv_fused.cpp,
// norm_fused.cpp): their on/off switch, the CUDA status check, and the strided row view
// that lets a kernel read a column slice of in_proj's output in place.
#include <ATen/ATen.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/error.h"

#ifdef DFSSM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace dfssm::fused {

// `env` "0" turns it off, "1" on; unset, it is `default_on`. Read at the first use; tests flip it
// with set().
class Switch {
 public:
  explicit Switch(const char* env, bool default_on = true)
      : on_(std::getenv(env) ? std::string(std::getenv(env)) != "0" : default_on) {}
  bool on() const { return on_; }
  void set(bool on) { on_ = on; }

 private:
  std::atomic<bool> on_;
};

// x (b, l, c) as rows of a (b*l, ld) matrix: a slice with unit channel stride and rows at a fixed
// stride is used in place; anything else is made contiguous first. Returns the tensor to read.
inline at::Tensor rows_view(const at::Tensor& x, int64_t* ld) {
  const bool ok = x.stride(2) == 1 && x.stride(0) == x.size(1) * x.stride(1) && x.stride(1) >= x.size(2);
  const auto r = ok ? x : x.contiguous();
  *ld = r.stride(1);
  return r;
}

#ifdef DFSSM_HAVE_CUDA
// A kernel launcher's status: anything but success is an internal error (the wrappers check the
// shapes the kernels take before they call them).
inline void check_cuda(cudaError_t e, const char* what) {
  DFSSM_ASSERT(e == cudaSuccess, std::string(what) + ": " + cudaGetErrorString(e));
}
#endif

}  // namespace dfssm::fused
