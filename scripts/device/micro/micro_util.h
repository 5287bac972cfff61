// Host helpers shared by the torch-free device micro benchmarks (scripts/device/micro/*.cu):
// deterministic normal samples, device buffers, copies both ways.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace micro {

// Box-Muller on xorshift64: the same sequence on every machine.
inline float normal() {
  static uint64_t rng = 0x9E3779B97F4A7C15ull;
  auto u = [] {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double(rng >> 11) + 0.5) / 9007199254740992.0;
  };
  return float(std::sqrt(-2.0 * std::log(u())) * std::cos(6.283185307179586 * u()));
}
// n zeroed elements on the device.
template <typename T = float>
T* zeros(size_t n) {
  T* d = nullptr;
  cudaMalloc(&d, n * sizeof(T));
  cudaMemset(d, 0, n * sizeof(T));
  return d;
}
template <typename T>
T* upload(const std::vector<T>& h) {
  T* d = zeros<T>(h.size());
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
template <typename T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

}  // namespace micro
