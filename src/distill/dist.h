// Data parallelism: one process per device, gradients averaged across processes after the
// backward pass. Processes find each other through torchrun-style environment variables (RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); `dfssm distill --nproc N` sets them and
// launches the N processes itself (launch_local).
//
// Backends (`dp_backend`; auto picks the first that applies):
//   * nccl: CUDA, NCCL all-reduce (ncclUniqueId exchanged through a c10d TCPStore), when dfssm was
//     built with NCCL (DFSSM_HAVE_NCCL);
//   * gloo: CPU, LibTorch's c10d::ProcessGroupGloo (ring all-reduce on Gloo's own threads, so a
//     bucket's all-reduce overlaps the rest of the backward pass), when dfssm was built with the
//     Gloo headers (DFSSM_HAVE_GLOO; Debian's libgloo-dev, the torch wheel ships the library);
//   * store: an all-reduce through the TCPStore itself. Every rank publishes its flattened
//     gradients and sums all ranks' buffers in rank order, so every rank computes bit-identical
//     sums for any world size. For correctness checks and machines without Gloo, not speed.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

namespace dfssm::distill {

// An all-reduce in flight (Comm::allreduce_mean_async).
class CommWork {
 public:
  virtual ~CommWork() = default;
  // Returns once the result may be used: on CUDA, the caller's current stream waits for it.
  virtual void wait() = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }
  // Ranks on this host (LOCAL_WORLD_SIZE as torchrun and --nproc set it; else the world).
  int local_world() const { return local_world_; }
  bool is_root() const { return rank_ == 0; }
  virtual std::string backend() const = 0;
  // Replaces every tensor by the mean of that tensor over all ranks (same shapes and dtypes on
  // every rank). The tensors are flattened into one fp32 buffer per call.
  virtual void allreduce_mean(const std::vector<at::Tensor>& ts) = 0;
  // The mean over all ranks of one contiguous fp32 tensor, in place, started now and finished by
  // the returned work's wait(). Every rank must start its collectives in the same order. NCCL runs
  // it on a communication stream after the work already queued on the current stream (so it
  // overlaps what is queued later, e.g. the rest of a backward pass); the store backend finishes
  // it before returning.
  virtual std::unique_ptr<CommWork> allreduce_mean_async(const at::Tensor& flat);
  virtual void barrier() = 0;

  // World of one when RANK/WORLD_SIZE are unset; otherwise connects to MASTER_ADDR:MASTER_PORT.
  // `backend`: auto, nccl, gloo or store (see above); one this build or device cannot run is an
  // error that says why.
  static std::unique_ptr<Comm> from_env(bool cuda, const std::string& backend = "auto");
  // The backends this build has, in auto's order of preference ("nccl gloo store").
  static std::string backends_built();
  // Why `backend` cannot run in this build on this device ("" when it can): the one check that
  // both `dfssm validate` and from_env apply.
  static std::string backend_problem(const std::string& backend, bool cuda);

 protected:
  int rank_ = 0, world_ = 1, local_rank_ = 0, local_world_ = 1;
};

// `--nproc N`: re-executes this program N times with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* set
// (a free local port), waits for all, and returns the first non-zero exit code. When one rank
// fails, the others are stopped.
// `args` is the full command line to run in each process (argv[0] onwards, without --nproc).
int launch_local(int nproc, const std::vector<std::string>& args);

namespace detail {
// `ts` (any devices/dtypes) flattened into one contiguous fp32 CPU buffer, and back.
at::Tensor flatten_fp32_cpu(const std::vector<at::Tensor>& ts);
void unflatten_into(const at::Tensor& flat, const std::vector<at::Tensor>& ts);
}  // namespace detail

}  // namespace dfssm::distill
