// Gradient all-reduce in buckets, overlapping the backward pass (data parallelism, `dp_bucket_mb`).
//
// The parameters are grouped, in reverse registration order (roughly the order in which backward
// produces their gradients: last layer first), into buckets of about `bucket_bytes` of fp32
// gradients. A post hook on each parameter's gradient accumulator counts the gradients of the
// armed backward pass; when every gradient of a bucket is in, its gradients are copied into the
// bucket's flat buffer and its all-reduce starts (Comm::allreduce_mean_async: with NCCL on a
// communication stream, so it runs while backward computes the earlier layers). Buckets start in
// index order on every rank (a bucket waits for the ones before it), as collectives must.
// finish() starts what is left (a parameter without a gradient counts as zero), waits, and
// writes the averaged gradients back.
//
// Only the last micro-batch's backward is armed (gradient accumulation sums the others locally).
// The averaged values do not depend on the bucketing: every element is the same sum over ranks
// (tests/test_trainer.cpp: bucketed and one-shot runs give bit-identical losses).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <vector>

#include "distill/dist.h"

namespace dfssm::distill {

class GradBuckets {
 public:
  GradBuckets(Comm& comm, const std::vector<at::Tensor>& params, int64_t bucket_bytes);
  ~GradBuckets();
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  void arm();     // the next backward pass is the one whose gradients are all-reduced
  void finish();  // after it: start what is left, wait for all, write the means into .grad
  size_t buckets() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::vector<size_t> params;
    int64_t numel = 0;
    size_t ready = 0;
    bool started = false;
    at::Tensor flat;
    std::unique_ptr<CommWork> work;
  };
  void on_grad(size_t i);
  void start_in_order();  // under mu_
  void start(Bucket& b);

  Comm& comm_;
  std::vector<at::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<bool> seen_;
  std::vector<Bucket> buckets_;
  struct Hooked;
  std::vector<std::unique_ptr<Hooked>> hooks_;  // the hooked gradient accumulators (kept alive), hook keys
  size_t next_ = 0;                                  // first bucket not started
  bool armed_ = false;
  std::mutex mu_;
};

}  // namespace dfssm::distill
