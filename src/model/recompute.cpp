#include "model/recompute.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace dfssm {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct AutocastState {
  bool cuda = false;
  at::ScalarType dtype = at::kBFloat16;
};

struct RecomputeFn : public torch::autograd::Function<RecomputeFn> {
  // inputs = {residual, layer parameters...}; the parameters are inputs only so that autograd
  // routes their gradients through this node.
  static at::Tensor forward(AutogradContext* ctx, int64_t model_addr, int64_t layer, at::TensorList inputs) {
    const auto* model = reinterpret_cast<const Mamba2Model*>(model_addr);
    ctx->saved_data["model"] = model_addr;
    ctx->saved_data["layer"] = layer;
    ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(at::kCUDA);
    ctx->saved_data["autocast_dtype"] = int64_t(at::autocast::get_autocast_dtype(at::kCUDA));
    at::NoGradGuard ng;
    SsdOutputKeep keep;  // the SSD's output, when the model keeps it (and the fused kernels run)
    keep.capture = model->keep_ssd_output;
    if (at::autocast::is_autocast_enabled(at::kCUDA)) keep.dtype = at::autocast::get_autocast_dtype(at::kCUDA);
    auto out = model->block(size_t(layer), inputs[0], keep.capture ? &keep : nullptr);
    ctx->save_for_backward({inputs[0], keep.y});  // keep.y stays undefined when nothing was kept
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto* model = reinterpret_cast<const Mamba2Model*>(ctx->saved_data["model"].toInt());
    const auto layer = size_t(ctx->saved_data["layer"].toInt());
    const bool ac = ctx->saved_data["autocast"].toBool();
    const auto ac_dtype = at::ScalarType(ctx->saved_data["autocast_dtype"].toInt());
    const auto saved = ctx->get_saved_variables();
    const auto x = saved[0].detach().requires_grad_(true);
    SsdOutputKeep keep;
    keep.y = saved[1];
    auto params = model->layer_parameters(layer);
    // The backward pass runs on autograd's own thread: re-enter the forward pass's autocast state.
    const bool prev = at::autocast::is_autocast_enabled(at::kCUDA);
    const auto prev_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_enabled(at::kCUDA, ac);
    at::autocast::set_autocast_dtype(at::kCUDA, ac_dtype);
    at::Tensor out;
    {
      at::AutoGradMode g(true);
      out = model->block(layer, x, keep.y.defined() ? &keep : nullptr);
    }
    at::autocast::set_autocast_enabled(at::kCUDA, prev);
    at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype);
    if (ac) at::autocast::clear_cache();
    variable_list wrt = {x};
    for (auto& p : params) wrt.push_back(p);
    const auto grads = torch::autograd::grad({out}, wrt, {grad_out[0]}, /*retain_graph=*/false,
                                             /*create_graph=*/false, /*allow_unused=*/true);
    variable_list result = {at::Tensor(), at::Tensor()};  // model_addr, layer
    for (const auto& g : grads) result.push_back(g);
    return result;
  }
};

}  // namespace

at::Tensor recomputed_block(const Mamba2Model& model, size_t i, const at::Tensor& residual) {
  variable_list inputs = {residual};
  for (auto& p : model.layer_parameters(i)) inputs.push_back(p);
  // As a TensorList (not a std::vector): only then does autograd treat the elements as inputs.
  return RecomputeFn::apply(int64_t(reinterpret_cast<intptr_t>(&model)), int64_t(i), at::TensorList(inputs));
}

}  // namespace dfssm
