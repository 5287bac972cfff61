// Bucketed gradient all-reduce overlapping backward: see grad_buckets.h.
#include "distill/grad_buckets.h"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "core/error.h"

namespace dfssm::distill {

struct GradBuckets::Hooked {
  std::shared_ptr<torch::autograd::Node> acc;
  uintptr_t key = 0;
};

GradBuckets::GradBuckets(Comm& comm, const std::vector<at::Tensor>& params, int64_t bucket_bytes) : comm_(comm) {
  DFSSM_ASSERT(bucket_bytes > 0, "GradBuckets: bucket_bytes ", bucket_bytes);
  // Reverse registration order: backward reaches the last layers first.
  params_.assign(params.rbegin(), params.rend());
  bucket_of_.resize(params_.size());
  seen_.assign(params_.size(), false);
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    DFSSM_ASSERT(p.requires_grad() && p.is_leaf(), "GradBuckets: parameter ", i, " is not a trainable leaf");
    if (buckets_.empty() || buckets_.back().numel * 4 >= bucket_bytes) buckets_.emplace_back();
    buckets_.back().params.push_back(i);
    buckets_.back().numel += p.numel();
    bucket_of_[i] = buckets_.size() - 1;
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[i]);
    DFSSM_ASSERT(acc, "GradBuckets: parameter ", i, " has no gradient accumulator");
    auto h = std::make_unique<Hooked>();
    h->key = acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          on_grad(i);
          return outputs;
        }));
    h->acc = std::move(acc);
    hooks_.push_back(std::move(h));
  }
}

GradBuckets::~GradBuckets() {
  for (auto& h : hooks_) h->acc->del_post_hook(h->key);  // the hooks point at this object
}

void GradBuckets::arm() {
  std::lock_guard<std::mutex> lk(mu_);
  DFSSM_ASSERT(!armed_, "GradBuckets: armed twice without finish()");
  for (auto& b : buckets_) b.ready = 0, b.started = false, b.work.reset();
  seen_.assign(params_.size(), false);
  next_ = 0;
  armed_ = true;
}

// Runs on the autograd engine's thread once parameter i's gradient has been accumulated.
void GradBuckets::on_grad(size_t i) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!armed_ || seen_[i]) return;
  seen_[i] = true;
  ++buckets_[bucket_of_[i]].ready;
  start_in_order();
}

void GradBuckets::start_in_order() {
  while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].params.size()) start(buckets_[next_++]);
}

void GradBuckets::start(Bucket& b) {
  const auto& p0 = params_[b.params.front()];
  if (!b.flat.defined()) b.flat = at::empty({b.numel}, p0.options().dtype(at::kFloat));
  int64_t off = 0;
  for (size_t i : b.params) {
    const auto& p = params_[i];
    const auto g = p.grad();
    auto dst = b.flat.narrow(0, off, p.numel());
    if (g.defined()) dst.copy_(g.detach().reshape({-1}));
    else dst.zero_();
    off += p.numel();
  }
  b.started = true;
  b.work = comm_.allreduce_mean_async(b.flat);
}

void GradBuckets::finish() {
  std::lock_guard<std::mutex> lk(mu_);
  DFSSM_ASSERT(armed_, "GradBuckets: finish() without arm()");
  // Buckets with a parameter that got no gradient never became ready: start them now, in order.
  for (; next_ < buckets_.size(); ++next_) start(buckets_[next_]);
  for (auto& b : buckets_) {
    b.work->wait();
    int64_t off = 0;
    for (size_t i : b.params) {
      auto& p = params_[i];
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      p.mutable_grad().detach().copy_(b.flat.narrow(0, off, p.numel()).view(p.sizes()));
      off += p.numel();
    }
    b.work.reset();
  }
  armed_ = false;
}

}  // namespace dfssm::distill
