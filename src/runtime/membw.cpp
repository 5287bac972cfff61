#include "runtime/membw.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "runtime/thread_pool.h"

namespace dfssm::runtime {

double Bandwidth::best() const { return std::max({copy_gbs, triad_gbs, read_gbs}); }

Bandwidth measure_bandwidth(ThreadPool& pool, int64_t mib, int reps) {
  const int64_t n = mib * (1 << 20) / 4;
  const size_t un = static_cast<size_t>(n);
  std::vector<float> a(un), b(un), c(un);
  // First touch from the pool's threads, as the kernels will use the memory.
  pool.parallel_ranges(n, 1024, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) a[size_t(i)] = 1.f, b[size_t(i)] = 2.f, c[size_t(i)] = 0.5f;
  });
  using clk = std::chrono::steady_clock;
  auto best_seconds = [&](const std::function<void(int64_t, int64_t)>& body) {
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = clk::now();
      pool.parallel_ranges(n, 1024, body);
      best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
    }
    return best;
  };
  float* pa = a.data();
  const float* pb = b.data();
  const float* pc = c.data();
  Bandwidth bw;
  bw.copy_gbs = 8.0 * double(n) / best_seconds([&](int64_t i0, int64_t i1) {
                  for (int64_t i = i0; i < i1; ++i) pa[i] = pb[i];
                }) / 1e9;
  bw.triad_gbs = 12.0 * double(n) / best_seconds([&](int64_t i0, int64_t i1) {
                   for (int64_t i = i0; i < i1; ++i) pa[i] = pb[i] + 3.f * pc[i];
                 }) / 1e9;
  // Read-only: XOR-reduce 64-bit words with 4 independent chains (no FP latency limits).
  std::vector<uint64_t> sums(64);
  bw.read_gbs = 4.0 * double(n) / best_seconds([&](int64_t i0, int64_t i1) {
                  const auto* w = reinterpret_cast<const uint64_t*>(pa);
                  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                  int64_t i = i0 / 2;
                  const int64_t e = i1 / 2;
                  for (; i + 4 <= e; i += 4) s0 ^= w[i], s1 ^= w[i + 1], s2 ^= w[i + 2], s3 ^= w[i + 3];
                  for (; i < e; ++i) s0 ^= w[i];
                  sums[size_t(i0 * 63 / n)] ^= s0 ^ s1 ^ s2 ^ s3;  // keep it live
                }) / 1e9;
  volatile uint64_t sink = sums[0];
  (void)sink;
  return bw;
}

}  // namespace dfssm::runtime
