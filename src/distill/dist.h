// Data parallelism: one process per device, gradients averaged across processes after the
// backward pass. Processes find each other through torchrun-style environment variables (RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); `dfssm distill --nproc N` sets them and
// launches the N processes itself (launch_local).
//
// Backends:
//   * CUDA: NCCL all-reduce (ncclUniqueId exchanged through a c10d TCPStore), when dfssm was
//     built with NCCL (DFSSM_HAVE_NCCL);
//   * CPU (and CUDA without NCCL): an all-reduce through the TCPStore itself. Every rank
//     publishes its flattened gradients and sums all ranks' buffers in rank order, so every rank
//     computes bit-identical sums. This is for correctness tests and small models, not speed.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

namespace dfssm::distill {

class Comm {
 public:
  virtual ~Comm() = default;
  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }
  bool is_root() const { return rank_ == 0; }
  virtual std::string backend() const = 0;
  // Replaces every tensor by the mean of that tensor over all ranks (same shapes and dtypes on
  // every rank). The tensors are flattened into one fp32 buffer per call.
  virtual void allreduce_mean(const std::vector<at::Tensor>& ts) = 0;
  virtual void barrier() = 0;

  // World of one when RANK/WORLD_SIZE are unset; otherwise connects to MASTER_ADDR:MASTER_PORT.
  static std::unique_ptr<Comm> from_env(bool cuda);

 protected:
  int rank_ = 0, world_ = 1, local_rank_ = 0;
};

// `--nproc N`: re-executes this program N times with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set
// (a free local port), waits for all, and returns the first non-zero exit code. When one rank
// fails, the others are stopped.
// `args` is the full command line to run in each process (argv[0] onwards, without --nproc).
int launch_local(int nproc, const std::vector<std::string>& args);

}  // namespace dfssm::distill
