// Helpers shared by the CUDA tests (test_cuda_runtime.cpp, test_cuda_prefill.cpp): the printed,
// replayable seed, a device buffer, random inputs, and the relative error that treats an
// unwritten (NaN-poisoned) output as a failure.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "catch_compat.h"

namespace dfssm::test {

// The run's seed (DFSSM_TEST_SEED replays one), printed once with the test binary's name.
inline uint64_t cuda_test_seed(const char* binary) {
  static const uint64_t s = [binary] {
    const char* e = std::getenv("DFSSM_TEST_SEED");
    const uint64_t v = e ? std::strtoull(e, nullptr, 10) : std::random_device{}();
    std::printf("%s seed %llu (DFSSM_TEST_SEED to replay)\n", binary, (unsigned long long)v);
    return v;
  }();
  return s;
}

template <class T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t n_) : n(n_) { REQUIRE(cudaMalloc(&p, std::max<size_t>(n * sizeof(T), 16)) == cudaSuccess); }
  explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size()) { put(h); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void put(const std::vector<T>& h) {
    REQUIRE(h.size() <= n);
    REQUIRE(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  std::vector<T> get() const {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
  void poison() { REQUIRE(cudaMemset(p, 0xff, n * sizeof(T)) == cudaSuccess); }  // NaN in fp32 / fp16
};

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t s) : g(s) {}
  float normal() { return std::normal_distribution<float>()(g); }
  float uniform(float a, float b) { return std::uniform_real_distribution<float>(a, b)(g); }
  std::vector<float> normal(size_t n, float sd = 1.f, float mean = 0.f) {
    std::vector<float> v(n);
    for (auto& x : v) x = mean + sd * normal();
    return v;
  }
  std::vector<int8_t> i8(size_t n) {
    std::vector<int8_t> v(n);
    for (auto& x : v) x = int8_t(int(g() % 255) - 127);
    return v;
  }
  std::vector<uint8_t> bits(int64_t R, int64_t C, int64_t row_bytes) {
    std::vector<uint8_t> v(size_t(R * row_bytes), 0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c)
        if (g() & 1) v[size_t(r * row_bytes + c / 8)] |= uint8_t(1u << (c % 8));
    return v;
  }
};

// ‖a − b‖ / ‖b‖ over [0, n); every a must be finite (NaN = an unwritten output).
inline double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  return rel_err(a.data(), b.data(), a.size());
}

}  // namespace dfssm::test
