// A STREAM-like memory bandwidth measurement (copy, triad and a read-only sum) over arrays far
// larger than the last-level cache, on the runtime's thread pool. `dfssm bench` divides the
// bytes a decode step must stream by this bandwidth to get the floor the decode is held to.
#pragma once

#include <cstdint>

namespace dfssm::runtime {

class ThreadPool;

struct Bandwidth {
  double copy_gbs = 0;   // a[i] = b[i]            (8 bytes moved per element, 4 read + 4 written)
  double triad_gbs = 0;  // a[i] = b[i] + s * c[i] (12 bytes per element)
  double read_gbs = 0;   // sum += a[i]            (4 bytes read per element): what a GEMV does
  double best() const;
};

// Arrays of `mib` MiB each (three of them), best of `reps` repetitions per kernel.
Bandwidth measure_bandwidth(ThreadPool& pool, int64_t mib = 256, int reps = 5);

}  // namespace dfssm::runtime
