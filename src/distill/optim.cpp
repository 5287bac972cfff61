#include "distill/optim.h"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/adamw.h"
#define DFSSM_ADAMW_FUSED_BUILT 1
#endif

namespace dfssm::distill {

AdamW::AdamW(std::vector<ParamGroup> groups, double beta1, double beta2, double eps)
    : groups_(std::move(groups)), b1_(beta1), b2_(beta2), eps_(eps) {
  at::NoGradGuard ng;
  for (const auto& g : groups_) {
    m_.emplace_back();
    v_.emplace_back();
    scale_.emplace_back();
    for (const auto& [n, p] : g.params) {
      m_.back().push_back(at::zeros_like(p, p.options().dtype(at::kFloat)));
      v_.back().push_back(at::zeros_like(p, p.options().dtype(at::kFloat)));
      // Relative groups: step size proportional to the parameter's initial RMS.
      scale_.back().push_back(g.relative ? p.detach().to(at::kFloat).pow(2).mean().sqrt().clamp_min(1e-8)
                                         : at::ones({}, p.options().dtype(at::kFloat)));
    }
  }
}

namespace {
// DFSSM_ADAMW_FUSED=0: the ATen ops on CUDA too (the CPU always uses them: exact resume there is
// defined by those ops).
fused::Switch& fused_switch() {
  static fused::Switch s("DFSSM_ADAMW_FUSED");
  return s;
}

bool all_cuda_fp32(const std::vector<at::Tensor>& ts) {
  for (const auto& t : ts)
    if (!t.is_cuda() || t.scalar_type() != at::kFloat) return false;
  return !ts.empty();
}

// One fused CUDA update of p (kernels/cuda/adamw.h) when every operand is a contiguous fp32 CUDA
// tensor; false (nothing done) otherwise.
#ifdef DFSSM_ADAMW_FUSED_BUILT
bool fused_step(at::Tensor& p, const at::Tensor& g, at::Tensor& m, at::Tensor& v, const at::Tensor& scale, double b1,
                double b2, double eps, double bc1, double bc2, double glr, double wd,
                const at::Tensor& gscale = at::Tensor(), const at::Tensor& run = at::Tensor()) {
  if (!fused_switch().on() || !all_cuda_fp32({p, g, m, v, scale}) || !p.is_contiguous() || !g.is_contiguous() ||
      !m.is_contiguous() || !v.is_contiguous() || g.numel() != p.numel() || scale.numel() != 1)
    return false;
  kernels::AdamWCoef c;
  c.b1 = float(b1), c.b2 = float(b2), c.omb1 = float(1.0 - b1), c.omb2 = float(1.0 - b2);
  c.bc1 = float(bc1), c.bc2 = float(bc2), c.eps = float(eps);
  c.decay = wd > 0 ? float(1.0 - glr * wd) : 1.f, c.lr = float(glr);
  const c10::cuda::CUDAGuard guard(p.device());
  fused::check_cuda(kernels::adamw_step_cuda(p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(),
                                             v.data_ptr<float>(), scale.data_ptr<float>(), p.numel(), c,
                                             c10::cuda::getCurrentCUDAStream(),
                                             gscale.defined() ? gscale.data_ptr<float>() : nullptr,
                                             run.defined() ? run.data_ptr<float>() : nullptr),
                    "adamw_step_cuda");
  return true;
}
#else
bool fused_step(at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&, double, double, double,
                double, double, double, double, const at::Tensor& = at::Tensor(), const at::Tensor& = at::Tensor()) {
  return false;
}
#endif
}  // namespace

void set_adamw_fused_enabled(bool on) { fused_switch().set(on); }

void AdamW::zero_grad() {
  // One multi-tensor launch on CUDA where ~1000 zero_ calls each cost a launch (exact zeros either way).
  std::vector<at::Tensor> grads;
  for (auto& g : groups_)
    for (auto& [n, p] : g.params)
      if (p.grad().defined()) grads.push_back(p.mutable_grad());
  if (!grads.empty()) at::_foreach_zero_(grads);
}

bool AdamW::can_step_on_device() const {
#ifdef DFSSM_ADAMW_FUSED_BUILT
  if (!fused_switch().on()) return false;
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      const auto& p = groups_[gi].params[i].second;
      if (!all_cuda_fp32({p, m_[gi][i], v_[gi][i], scale_[gi][i]}) || !p.is_contiguous() || scale_[gi][i].numel() != 1)
        return false;
    }
  return !groups_.empty();
#else
  return false;
#endif
}

at::Tensor AdamW::grad_norm_device() const {
  at::NoGradGuard ng;
  std::vector<at::Tensor> grads;
  for (const auto& g : groups_)
    for (const auto& [n, p] : g.params)
      if (p.grad().defined()) grads.push_back(p.grad());
  DFSSM_ASSERT(!grads.empty() && all_cuda_fp32(grads), "grad_norm_device: needs fp32 CUDA gradients");
  return at::linalg_vector_norm(at::stack(at::_foreach_norm(grads, 2)), 2);
}


double AdamW::clip_grad_norm(double max_norm) {
  at::NoGradGuard ng;
  std::vector<at::Tensor> grads;
  for (auto& g : groups_)
    for (auto& [n, p] : g.params)
      if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;
  // On CUDA the multi-tensor kernels (a few launches for ~1000 tensors); on the CPU the per-tensor
  // ops, whose rounding the exact-resume test pins down.
  const bool multi = fused_switch().on() && all_cuda_fp32(grads);
  double norm = 0;
  if (multi) {
    norm = at::linalg_vector_norm(at::stack(at::_foreach_norm(grads, 2)), 2).item<double>();
  } else {
    std::vector<at::Tensor> sq;
    for (const auto& gr : grads) sq.push_back(gr.to(at::kFloat).pow(2).sum());
    norm = std::sqrt(at::stack(sq).sum().item<double>());
  }
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
    const double c = max_norm / (norm + 1e-6);
    if (multi) {
      at::_foreach_mul_(grads, c);
    } else {
      for (auto& gr : grads) gr.mul_(c);
    }
  }
  return norm;
}

void AdamW::step(double lr) { step(lr, at::Tensor(), at::Tensor()); }

void AdamW::step(double lr, const at::Tensor& gscale, const at::Tensor& run) {
  at::NoGradGuard ng;
  const bool on_device = gscale.defined();
  ++t_;
  const double bc1 = 1.0 - std::pow(b1_, double(t_)), bc2 = 1.0 - std::pow(b2_, double(t_));
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const auto& g = groups_[gi];
    const double glr = lr * g.lr_mult;
    for (size_t i = 0; i < g.params.size(); ++i) {
      auto p = g.params[i].second;
      if (!p.grad().defined()) continue;
      auto& m = m_[gi][i];
      auto& v = v_[gi][i];
      if (fused_step(p, on_device ? p.grad().contiguous() : p.grad(), m, v, scale_[gi][i], b1_, b2_, eps_, bc1, bc2,
                     glr, g.weight_decay, gscale, run))
        continue;
      DFSSM_ASSERT(!on_device, "AdamW::step on the device: parameter '", g.params[i].first,
                   "' is not a fused-kernel operand");
      const auto grad = p.grad().to(at::kFloat);
      m.mul_(b1_).add_(grad, 1.0 - b1_);
      v.mul_(b2_).addcmul_(grad, grad, 1.0 - b2_);
      const auto step_lr = scale_[gi][i] * glr;  // 0-dim
      if (g.weight_decay > 0) p.mul_(1.0 - glr * g.weight_decay);
      const auto denom = (v / bc2).sqrt_().add_(eps_);
      p.sub_((m / bc1) / denom * step_lr);
    }
  }
}

NamedTensors AdamW::state() const {
  NamedTensors s;
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      const auto& n = groups_[gi].params[i].first;
      s.emplace_back("m/" + n, m_[gi][i]);
      s.emplace_back("v/" + n, v_[gi][i]);
      s.emplace_back("scale/" + n, scale_[gi][i]);
    }
  s.emplace_back("step", at::full({}, double(t_), at::kDouble));
  return s;
}

void AdamW::load_state(const NamedTensors& state) {
  std::map<std::string, at::Tensor> m(state.begin(), state.end());
  at::NoGradGuard ng;
  auto take = [&](const std::string& k, at::Tensor& dst) {
    auto it = m.find(k);
    DFSSM_CHECK(it != m.end(), "optimizer state has no '", k, "' (a checkpoint of a different model?)");
    DFSSM_CHECK(it->second.sizes() == dst.sizes(), "optimizer state '", k, "' has shape ", it->second.sizes(),
                ", expected ", dst.sizes());
    dst.copy_(it->second);
  };
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      const auto& n = groups_[gi].params[i].first;
      take("m/" + n, m_[gi][i]);
      take("v/" + n, v_[gi][i]);
      take("scale/" + n, scale_[gi][i]);
    }
  DFSSM_CHECK(m.count("step"), "optimizer state has no 'step'");
  t_ = int64_t(m.at("step").item<double>());
}

double lr_at(const TrainConfig& c, int64_t step) {
  const double peak = 1.0, floor = c.min_lr_ratio;
  if (step < c.warmup_steps) return peak * double(step + 1) / double(c.warmup_steps + 1);
  const double total = double(std::max<int64_t>(1, c.steps - c.warmup_steps));
  const double p = std::min(1.0, double(step - c.warmup_steps) / total);
  if (c.schedule == "constant") return peak;
  if (c.schedule == "wsd") {
    const double start = 1.0 - c.wsd_decay_frac;
    if (p < start) return peak;
    return peak - (peak - floor) * (p - start) / std::max(1e-12, c.wsd_decay_frac);
  }
  return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * p));  // cosine
}

}  // namespace dfssm::distill
