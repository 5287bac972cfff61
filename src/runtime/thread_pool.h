// A small fork-join pool for the runtime's kernels. A decode step runs ~150 parallel regions
// (two projections and the SSM per layer, then the LM head), each a few tens of microseconds, so
// the pool's wake-up cost matters more than anything else here: workers spin on an atomic
// generation counter for a while before they sleep on a condition variable, and the caller
// takes part in the work. run(n, fn) calls fn(i) for i in [0, n) across the threads and returns
// when all are done. Not reentrant: one run() at a time, from one thread.
//
// Items are claimed with a compare-and-swap on one 64-bit word holding (generation, next item),
// so a worker that is late for a run can never claim an item of the next one: every item runs
// exactly once, and run() returns only after all of its items have finished.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dfssm::runtime {

class ThreadPool {
 public:
  // threads <= 0: one per hardware thread. threads == 1: no workers, run() is a plain loop.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }
  void run(int n, const std::function<void(int)>& fn);

  // Splits [0, total) into at most size() contiguous ranges whose boundaries are multiples of
  // `align` (except the end) and calls fn(begin, end) for each, in parallel.
  void parallel_ranges(int64_t total, int64_t align, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker();
  void work_items(uint32_t gen);

  std::vector<std::thread> workers_;
  std::atomic<uint32_t> generation_{0};
  std::atomic<uint64_t> ticket_{0};  // (generation << 32) | next item
  std::atomic<int> n_{0};
  std::atomic<const std::function<void(int)>*> fn_{nullptr};
  std::atomic<int> done_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

}  // namespace dfssm::runtime
