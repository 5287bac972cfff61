#include "runtime/thread_pool.h"

#include <algorithm>

#include "core/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define DFSSM_PAUSE() _mm_pause()
#else
#define DFSSM_PAUSE() std::this_thread::yield()
#endif

namespace dfssm::runtime {

namespace {
// Spin iterations before a worker sleeps: ~50-100 us on current CPUs, longer than the gap
// between two kernels of a decode step, so workers stay awake for the whole step.
constexpr int kSpinIters = 20000;
constexpr uint32_t kClosed = 0x7fffffffu;  // a ticket's item index that no run has
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

// Claims items of generation `gen` until none is left. The CAS succeeds only while the ticket
// still belongs to `gen`, so fn_/n_ read after it are that run's (the caller changes them only
// after every item of the run is done).
void ThreadPool::work_items(uint32_t gen) {
  for (;;) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    if (uint32_t(t >> 32) != gen || uint32_t(t) >= kClosed ||
        int(uint32_t(t)) >= n_.load(std::memory_order_acquire))
      return;
    if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
    (*fn_.load(std::memory_order_acquire))(int(uint32_t(t)));
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::worker() {
  uint32_t seen = 0;
  for (;;) {
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      if (++spins < kSpinIters) {
        DFSSM_PAUSE();
        continue;
      }
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      sleepers_.fetch_sub(1);
      break;
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_) return;
    work_items(seen);
  }
}

void ThreadPool::run(int n, const std::function<void(int)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  const uint32_t gen = generation_.load(std::memory_order_relaxed) + 1;
  // Close the previous run's ticket BEFORE n_/fn_/done_ change: a worker late for that run may
  // hold its ticket value and would otherwise pass the item check against the new n_, win its
  // CAS on the old ticket and run an item of this run with the new fn_ (a duplicated item and
  // a done_ count that lets run() return while an item still runs). With the closed ticket
  // (new generation, item index kClosed) that CAS fails, and nobody can claim until the ticket
  // opens below.
  ticket_.store((uint64_t(gen) << 32) | kClosed, std::memory_order_seq_cst);
  fn_.store(&fn, std::memory_order_release);
  n_.store(n, std::memory_order_release);
  done_.store(0, std::memory_order_release);
  ticket_.store(uint64_t(gen) << 32, std::memory_order_seq_cst);
  if (sleepers_.load() > 0) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.store(gen, std::memory_order_release);
    }
    cv_.notify_all();
  } else {
    generation_.store(gen, std::memory_order_release);
  }
  work_items(gen);
  // A worker that claimed an item may have been preempted (a busy or oversubscribed machine):
  // after a short spin, yield so it can run instead of burning its core.
  for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins) {
    if (spins < 4096) DFSSM_PAUSE();
    else std::this_thread::yield();
  }
}

void ThreadPool::parallel_ranges(int64_t total, int64_t align, const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  DFSSM_ASSERT(align >= 1, "align ", align);
  const int64_t units = (total + align - 1) / align;
  const int parts = int(std::min<int64_t>(size(), units));
  run(parts, [&](int p) {
    const int64_t b = units * p / parts * align, e = std::min(total, units * (p + 1) / parts * align);
    if (b < e) fn(b, e);
  });
}

}  // namespace dfssm::runtime
