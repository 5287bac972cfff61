// The runtime's fork-join pool (src/runtime/thread_pool.h): every item of a run executes exactly
// once, and none runs after run() has returned, over many back-to-back runs of varying sizes
// with more threads than cores (so workers are preempted and arrive late for runs: the case
// that once let a late worker execute an item of the next run with its new function, which
// made the 16-core runtime's logits wrong now and then).
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "catch_compat.h"
#include "runtime/thread_pool.h"

using dfssm::runtime::ThreadPool;

TEST_CASE("thread pool: each item exactly once, none after run() returns", "[runtime][pool]") {
  for (int threads : {2, 5, 16}) {
    ThreadPool pool(threads);
    constexpr int kMax = 48;
    std::vector<std::atomic<int>> count(kMax);
    std::atomic<int> bad_run{0};
    int failures = 0;
    for (int run = 0; run < 20000; ++run) {
      const int n = 1 + (run * 7919) % kMax;
      for (auto& c : count) c.store(0, std::memory_order_relaxed);
      pool.run(n, [&, run](int i) {
        if (i < 0 || i >= n) bad_run.store(run + 1);
        count[size_t(i)].fetch_add(1, std::memory_order_relaxed);
      });
      for (int i = 0; i < kMax; ++i)
        if (count[size_t(i)].load() != (i < n ? 1 : 0)) ++failures;
    }
    INFO("threads " << threads);
    CHECK(failures == 0);
    CHECK(bad_run.load() == 0);
  }
}

TEST_CASE("thread pool: parallel_ranges covers [0, total) once with aligned bounds", "[runtime][pool]") {
  ThreadPool pool(7);
  for (int64_t total : {1, 5, 63, 64, 65, 1000, 8512}) {
    for (int64_t align : {1, 16, 64}) {
      std::vector<std::atomic<int>> hit(static_cast<size_t>(total));
      std::atomic<int> misaligned{0};
      pool.parallel_ranges(total, align, [&](int64_t b, int64_t e) {
        if (b % align != 0 || (e != total && e % align != 0)) misaligned.fetch_add(1);
        for (int64_t i = b; i < e; ++i) hit[size_t(i)].fetch_add(1);
      });
      int wrong = 0;
      for (auto& h : hit) wrong += h.load() != 1;
      INFO("total " << total << " align " << align);
      CHECK(wrong == 0);
      CHECK(misaligned.load() == 0);
    }
  }
}
