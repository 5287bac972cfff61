// CUDA kernels against their CPU references on fresh random inputs at Mamba-2 1.3B shapes.
// Label gpu: runs on the device only.
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "catch_compat.h"
#include "core/dtype.h"
#include "kernels/cpu/rmsnorm_ref.h"
#include "kernels/cuda/rmsnorm.h"

using namespace dfssm;

#define CUDA_OK(x) REQUIRE((x) == cudaSuccess)

namespace {
template <class T>
T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  CUDA_OK(cudaMalloc(&d, h.size() * sizeof(T)));
  CUDA_OK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <class T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  CUDA_OK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
}  // namespace

TEST_CASE("add_rmsnorm CUDA matches the reference", "[gpu][kernels]") {
  std::mt19937 rng(std::random_device{}());  // fresh inputs every run
  std::normal_distribution<float> nd;
  for (int64_t rows : {1, 8, 2048}) {
    const int64_t d = 2048;  // Mamba-2 1.3B d_model
    std::vector<uint16_t> x(static_cast<size_t>(rows * d)), w(static_cast<size_t>(d));
    std::vector<float> res(static_cast<size_t>(rows * d));
    for (auto& v : x) v = float_to_half(nd(rng));
    for (auto& v : w) v = float_to_half(1.f + 0.1f * nd(rng));
    for (auto& v : res) v = 3.f * nd(rng);
    auto* dx = to_device(x);
    auto* dw = to_device(w);
    auto* dr = to_device(res);
    std::vector<uint16_t> poison(x.size(), 0x7e00);  // NaN: every element must be written
    auto* dout = to_device(poison);
    CUDA_OK(dfssm::kernels::add_rmsnorm_cuda(dx, dr, dw, dout, rows, d, 1e-5f, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<uint16_t> ref_out(x.size());
    dfssm::kernels::add_rmsnorm_ref(x.data(), res.data(), w.data(), ref_out.data(), rows, d, 1e-5f);
    const auto out = to_host(dout, x.size());
    const auto res_gpu = to_host(dr, res.size());
    double num = 0, den = 0, rnum = 0, rden = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double a = half_to_float(out[i]), b = half_to_float(ref_out[i]);
      REQUIRE(std::isfinite(a));
      num += (a - b) * (a - b);
      den += b * b;
      rnum += double(res_gpu[i] - res[i]) * (res_gpu[i] - res[i]);
      rden += double(res[i]) * res[i];
    }
    INFO("rows " << rows);
    // fp16 output: both round the same fp32 value, differing by at most one ulp (~1e-3 rel).
    REQUIRE(std::sqrt(num / den) < 1e-3);
    REQUIRE(std::sqrt(rnum / rden) < 1e-7);  // fp32 adds are exact-order identical
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(dr);
    cudaFree(dout);
  }
}
