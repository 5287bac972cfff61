#include "model/split_grad.h"

#include <torch/csrc/autograd/custom_function.h>

#include <atomic>

#include "core/error.h"
#include "model/fused_util.h"

namespace dfssm {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<int64_t> g_in_place{0};

fused::Switch& slab_switch() {
  static fused::Switch s("DFSSM_SPLIT_GRAD_SLAB");
  return s;
}

// The buffer behind a handle, allocated on first use: every holder shares the handle's
// TensorImpl, so the resize is seen by all of them.
at::Tensor slab_of(const GradInto& into) {
  auto s = into.slab;
  if (s.size(2) != into.total) s.resize_({s.size(0), s.size(1), into.total});
  return s;
}

struct SplitColumnsFn : public torch::autograd::Function<SplitColumnsFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::vector<int64_t>& sizes,
                               const at::Tensor& handle) {
    ctx->saved_data["slab"] = handle;
    ctx->saved_data["like"] = at::empty_like(handle);  // (b, l, 0): no storage; a retained graph's next backward
    ctx->saved_data["sizes"] = sizes;
    auto parts = x.split_with_sizes(sizes, -1);
    return variable_list(parts.begin(), parts.end());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The shared buffer, allocated here if no consumer wrote into it. A second backward through a
    // retained graph gets a fresh one (the consumers then write their own gradients).
    const auto handle = ctx->saved_data.count("slab") ? ctx->saved_data["slab"].toTensor()
                                                      : at::empty_like(ctx->saved_data["like"].toTensor());
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    ctx->saved_data.erase("slab");  // saved_data outlives the backward: no reference may stay here
    int64_t total = 0;
    for (const auto s : sizes) total += s;
    const auto slab = slab_of(GradInto{handle, 0, total});
    int64_t col = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto view = slab.narrow(2, col, sizes[i]);
      const auto& g = grads[i];
      if (!g.defined())
        view.zero_();
      else if (!(g.data_ptr() == view.data_ptr() && g.strides() == view.strides() &&
                 g.scalar_type() == view.scalar_type()))
        view.copy_(g);  // not written in place (dt's gradient, or a consumer without the buffer)
      else
        ++g_in_place;
      col += sizes[i];
    }
    return {slab, at::Tensor(), at::Tensor()};
  }
};
}  // namespace

void set_split_grad_slab_enabled(bool on) { slab_switch().set(on); }
int64_t split_grad_parts_in_place() { return g_in_place.load(); }

SplitColumns split_columns(const at::Tensor& x, const std::vector<int64_t>& sizes, bool any_device) {
  SplitColumns r;
  if (!(slab_switch().on() && (x.is_cuda() || any_device) && x.requires_grad() && x.dim() == 3 &&
        at::GradMode::is_enabled())) {
    const auto parts = x.split_with_sizes(sizes, -1);
    r.parts.assign(parts.begin(), parts.end());
    r.into.resize(sizes.size());
    return r;
  }
  const auto handle = at::empty({x.size(0), x.size(1), 0}, x.options().requires_grad(false));
  r.parts = SplitColumnsFn::apply(x, sizes, handle);
  int64_t col = 0;
  for (const auto s : sizes) r.into.push_back(GradInto{handle, col, x.size(2)}), col += s;
  return r;
}

void save_grad_into(AutogradContext* ctx, const GradInto& into) {
  if (!into.defined()) return;
  ctx->saved_data["grad_into_slab"] = into.slab;
  ctx->saved_data["grad_into_col"] = into.col;
  ctx->saved_data["grad_into_total"] = into.total;
}

at::Tensor take_grad_columns(AutogradContext* ctx, int64_t width, at::ScalarType dtype) {
  if (!ctx->saved_data.count("grad_into_slab")) return {};
  const GradInto into{ctx->saved_data["grad_into_slab"].toTensor(), ctx->saved_data["grad_into_col"].toInt(),
                      ctx->saved_data["grad_into_total"].toInt()};
  ctx->saved_data.erase("grad_into_slab");
  if (into.slab.scalar_type() != dtype) return {};
  const int64_t es = int64_t(at::elementSize(dtype));
  if ((into.col * es) % 16 != 0 || (into.total * es) % 16 != 0) return {};
  DFSSM_ASSERT(into.col + width <= into.total, "take_grad_columns: columns past the buffer");
  const auto v = slab_of(into).narrow(2, into.col, width);
  return reinterpret_cast<uintptr_t>(v.data_ptr()) % 16 == 0 ? v : at::Tensor();
}

}  // namespace dfssm
