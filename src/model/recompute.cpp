#include "model/recompute.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <functional>

#include "core/error.h"
#include "model/fused_util.h"

namespace dfssm {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The backward pass runs on autograd's own thread: the recomputation re-enters the forward
// pass's autocast state, then restores the thread's.
class AutocastScope {
 public:
  AutocastScope(bool on, at::ScalarType dtype)
      : prev_(at::autocast::is_autocast_enabled(at::kCUDA)), prev_dtype_(at::autocast::get_autocast_dtype(at::kCUDA)),
        on_(on) {
    at::autocast::set_autocast_enabled(at::kCUDA, on);
    at::autocast::set_autocast_dtype(at::kCUDA, dtype);
  }
  void restore() {
    if (done_) return;
    done_ = true;
    at::autocast::set_autocast_enabled(at::kCUDA, prev_);
    at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype_);
    if (on_) at::autocast::clear_cache();
  }
  ~AutocastScope() { restore(); }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool prev_;
  at::ScalarType prev_dtype_;
  bool on_, done_ = false;
};

// DFSSM_RECOMPUTE_OUT_GRAPH=0 (A/B switch): the recomputation runs out_proj's product as well.
fused::Switch& graph_only_switch() {
  static fused::Switch s("DFSSM_RECOMPUTE_OUT_GRAPH");
  return s;
}

// What both forms save first, and the first (no-grad) pass's SsdOutputKeep: the SSD's output is
// kept when the model keeps it (and the fused kernels run), in the autocast dtype.
SsdOutputKeep begin_first_pass(AutogradContext* ctx, int64_t model_addr, int64_t layer) {
  ctx->saved_data["model"] = model_addr;
  ctx->saved_data["layer"] = layer;
  ctx->saved_data["autocast"] = at::autocast::is_autocast_enabled(at::kCUDA);
  ctx->saved_data["autocast_dtype"] = int64_t(at::autocast::get_autocast_dtype(at::kCUDA));
  SsdOutputKeep keep;
  const auto* model = reinterpret_cast<const Mamba2Model*>(model_addr);
  keep.capture = model->keep_ssd_output;
  keep.capture_in_proj = size_t(layer) < model->keep_in_proj_layers.size() && model->keep_in_proj_layers[size_t(layer)];
  if (at::autocast::is_autocast_enabled(at::kCUDA)) keep.dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  return keep;
}

// The recomputation: block(model, layer, x, keep) on the saved {x, kept y, kept in_proj output}
// under the forward pass's autocast state, then the gradients of its output (times dout) with respect to x and the
// layer's parameters, in that order.
using BlockFn = std::function<at::Tensor(const Mamba2Model&, size_t, const at::Tensor&, SsdOutputKeep*)>;
// x_value (optional): x's values where saved[0] is not x itself (RecomputeAddFn's saved operands).
variable_list recompute_grads(AutogradContext* ctx, const BlockFn& block, const at::Tensor& dout,
                              const at::Tensor& x_value = at::Tensor()) {
  const auto* model = reinterpret_cast<const Mamba2Model*>(ctx->saved_data["model"].toInt());
  const auto layer = size_t(ctx->saved_data["layer"].toInt());
  const auto saved = ctx->get_saved_variables();
  const auto x = (x_value.defined() ? x_value : saved[0]).detach().requires_grad_(true);
  SsdOutputKeep keep;
  keep.y = saved[1];        // undefined when nothing was kept
  keep.zxbcdt = saved[2];   // likewise
  keep.output_graph_only = graph_only_switch().on();  // `out` is differentiated below, never read
  AutocastScope scope(ctx->saved_data["autocast"].toBool(),
                      at::ScalarType(ctx->saved_data["autocast_dtype"].toInt()));
  at::Tensor out;
  {
    at::AutoGradMode g(true);
    out = block(*model, layer, x, &keep);
  }
  scope.restore();
  variable_list wrt = {x};
  for (auto& p : model->layer_parameters(layer)) wrt.push_back(p);
  return torch::autograd::grad({out}, wrt, {dout.defined() ? dout : at::zeros_like(out)}, /*retain_graph=*/false,
                               /*create_graph=*/false, /*allow_unused=*/true);
}

// x · Wᵀ's backward without its forward (linear_graph_only): the output is a zero-stride zero
// tensor of the product's shape and dtype; the backward makes at::matmul's two products on the
// flattened x (MmBackward with mat2 = Wᵀ, a column-major operand: dW = gᵀ·x, dx = g·W).
struct LinearGraphOnlyFn : public torch::autograd::Function<LinearGraphOnlyFn> {
  // values: empty, or the product's values to return (autograd returns an input as a view of it).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& W, const at::Tensor& values) {
    ctx->save_for_backward({x, W});
    if (values.numel() > 0) return values;
    auto sizes = x.sizes().vec();
    sizes.back() = W.size(0);
    return at::zeros({1}, x.options()).expand(sizes);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &x = s[0], &W = s[1];
    const auto g = grad_out[0].to(x.scalar_type()).reshape({-1, W.size(0)});
    at::Tensor dx, dW;
    if (ctx->needs_input_grad(0)) dx = g.mm(W).view(x.sizes());
    if (ctx->needs_input_grad(1)) dW = g.t().mm(x.reshape({-1, W.size(1)}));
    return {dx, dW, at::Tensor()};
  }
};

struct RecomputeFn : public torch::autograd::Function<RecomputeFn> {
  // inputs = {residual, layer parameters...}; the parameters are inputs only so that autograd
  // routes their gradients through this node.
  static at::Tensor forward(AutogradContext* ctx, int64_t model_addr, int64_t layer, at::TensorList inputs) {
    auto keep = begin_first_pass(ctx, model_addr, layer);
    at::NoGradGuard ng;
    const auto* model = reinterpret_cast<const Mamba2Model*>(model_addr);
    auto out = model->block(size_t(layer), inputs[0], keep.capture || keep.capture_in_proj ? &keep : nullptr);
    ctx->save_for_backward({inputs[0], keep.y, keep.zxbcdt});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto grads = recompute_grads(
        ctx,
        [](const Mamba2Model& m, size_t i, const at::Tensor& x, SsdOutputKeep* keep) { return m.block(i, x, keep); },
        grad_out[0]);
    variable_list result = {at::Tensor(), at::Tensor()};  // model_addr, layer
    for (const auto& g : grads) result.push_back(g);
    return result;
  }
};

// A checkpointed block with the residual add before it (Mamba2Model::add_norm_fused): inputs =
// {the stream before block i-1's output is added, block i-1's output, layer parameters...};
// outputs {the stream, block i's output}. It saves its own first output, the stream, as the
// plain form saves its input. Its backward gets both outputs' gradients at once, so the stream's
// gradient from above is added inside the recomputed norm's backward kernel, which also writes
// the previous block output's gradient in its dtype (rms_norm_fused_add_grad): no separate add,
// accumulation or cast.
// save_operands (Mamba2Model::stream_pairs): it saves {the stream before, block i-1's output}
// instead of their sum (the stream before is the previous block's saved stream: the same storage),
// and its backward adds them again. The fused forward's add is one fp32 add per element (stream +
// float(output)), so ATen's add gives the same stream bit for bit.
struct RecomputeAddFn : public torch::autograd::Function<RecomputeAddFn> {
  static variable_list forward(AutogradContext* ctx, int64_t model_addr, int64_t layer, bool save_operands,
                               at::TensorList inputs) {
    auto keep = begin_first_pass(ctx, model_addr, layer);
    ctx->saved_data["hidden_dtype"] = int64_t(inputs[1].scalar_type());
    ctx->saved_data["operands"] = save_operands;
    at::NoGradGuard ng;
    const auto* model = reinterpret_cast<const Mamba2Model*>(model_addr);
    auto [residual, normed] = model->add_norm(size_t(layer), inputs[0], inputs[1]);
    auto out = model->block_on_normed(size_t(layer), normed, keep.capture || keep.capture_in_proj ? &keep : nullptr);
    if (save_operands)
      ctx->save_for_backward({inputs[0], keep.y, keep.zxbcdt, inputs[1]});
    else
      ctx->save_for_backward({residual, keep.y, keep.zxbcdt});
    return {residual, out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto& like = saved[0];  // the stream, or the stream before it: the same shape and dtype
    // With saved operands, the stream after the add again: the forward's fp32 add (ATen promotes
    // the bf16 operand element by element; no fp32 copy of it).
    const auto stream = ctx->saved_data["operands"].toBool() ? saved[0] + saved[3] : at::Tensor();
    const auto dres = grad_out[0].defined() ? grad_out[0] : at::zeros(like.sizes(), like.options());
    auto dh = at::empty(like.sizes(), like.options().dtype(at::ScalarType(ctx->saved_data["hidden_dtype"].toInt())));
    const auto grads = recompute_grads(
        ctx,
        [&](const Mamba2Model& m, size_t i, const at::Tensor& x, SsdOutputKeep* keep) {
          return m.block_on_normed(i, m.block_norm_add_grad(i, x, dres, dh), keep);
        },
        grad_out[1], stream);
    variable_list result = {at::Tensor(), at::Tensor(), at::Tensor()};  // model_addr, layer, save_operands
    result.push_back(grads[0]);  // the stream before: x's gradient, dres included
    result.push_back(dh);        // block i-1's output: the same, in its dtype (written by the norm's backward)
    for (size_t j = 1; j < grads.size(); ++j) result.push_back(grads[j]);
    return result;
  }
};

}  // namespace

at::Tensor linear_graph_only(const at::Tensor& x_in, const at::Tensor& W_in, const at::Tensor& values) {
  DFSSM_CHECK(x_in.dim() >= 1 && W_in.dim() == 2 && x_in.size(-1) == W_in.size(1),
              "linear_graph_only: x (..., in) and W (out, in), got ", x_in.sizes(), " and ", W_in.sizes());
  // As at::matmul under CUDA autocast: both operands in the autocast dtype.
  auto x = x_in, W = W_in;
  if (x.is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA)) {
    const auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
    auto cast = [dt](const at::Tensor& t) {
      return t.is_floating_point() && t.scalar_type() != at::kDouble && t.scalar_type() != dt ? t.to(dt) : t;
    };
    x = cast(x), W = cast(W);
  }
  DFSSM_CHECK(x.scalar_type() == W.scalar_type(), "linear_graph_only: x is ", x.scalar_type(), ", W is ",
              W.scalar_type());
  if (values.defined()) {
    auto sizes = x.sizes().vec();
    sizes.back() = W.size(0);
    DFSSM_CHECK(values.sizes() == at::IntArrayRef(sizes) && values.scalar_type() == x.scalar_type() &&
                    !values.requires_grad(),
                "linear_graph_only: values ", values.sizes(), " ", values.scalar_type(), ", expected ",
                at::IntArrayRef(sizes), " ", x.scalar_type(), " without a gradient");
  }
  // (Absent values travel as an empty tensor: custom functions record every tensor argument's device.)
  return LinearGraphOnlyFn::apply(x, W, values.defined() ? values : at::empty({0}, x.options()));
}

at::Tensor recomputed_block(const Mamba2Model& model, size_t i, const at::Tensor& residual) {
  variable_list inputs = {residual};
  for (auto& p : model.layer_parameters(i)) inputs.push_back(p);
  // As a TensorList (not a std::vector): only then does autograd treat the elements as inputs.
  return RecomputeFn::apply(int64_t(reinterpret_cast<intptr_t>(&model)), int64_t(i), at::TensorList(inputs));
}

std::pair<at::Tensor, at::Tensor> recomputed_add_block(const Mamba2Model& model, size_t i, const at::Tensor& residual,
                                                       const at::Tensor& hidden, bool save_operands) {
  variable_list inputs = {residual, hidden};
  for (auto& p : model.layer_parameters(i)) inputs.push_back(p);
  const auto r = RecomputeAddFn::apply(int64_t(reinterpret_cast<intptr_t>(&model)), int64_t(i), save_operands,
                                       at::TensorList(inputs));
  return {r[0], r[1]};
}

}  // namespace dfssm
