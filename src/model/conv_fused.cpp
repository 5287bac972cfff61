#include "model/conv_fused.h"

#include <c10/core/GradMode.h>

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cuda/conv_train.h"
#define DFSSM_CONV_FUSED_BUILT 1
#endif

namespace dfssm {

namespace {
fused::Switch& fused_switch() {
  static fused::Switch s("DFSSM_CONV_FUSED");
  return s;
}
}  // namespace

void set_conv_fused_enabled(bool on) { fused_switch().set(on); }

#ifdef DFSSM_CONV_FUSED_BUILT
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = dfssm::kernels;
using fused::check_cuda;
using fused::rows_view;

// The forward's launch on x (read in place where it can): the output in out_dtype (fp32, or bf16
// for conv_silu_fused_bf16), the kernel's x view and its row stride, w and bias as fp32.
struct ConvFwd {
  at::Tensor out, x, w, bias;
  int64_t ldx = 0;
};
ConvFwd conv_fwd(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in, at::ScalarType out_dtype) {
  ConvFwd f;
  const auto dt = x_in.scalar_type() == at::kBFloat16 ? k::ConvDtype::bf16 : k::ConvDtype::f32;
  const auto xs = x_in.scalar_type() == at::kBFloat16 ? x_in : x_in.to(at::kFloat);
  f.x = rows_view(xs, &f.ldx);
  f.w = w_in.to(at::kFloat).reshape({w_in.size(0), w_in.size(-1)}).contiguous();
  f.bias = bias_in.defined() ? bias_in.to(at::kFloat).contiguous() : at::Tensor();
  const int64_t B = f.x.size(0), L = f.x.size(1), C = f.x.size(2), K = f.w.size(1);
  f.out = at::empty({B, L, C}, f.x.options().dtype(out_dtype));
  const c10::cuda::CUDAGuard guard(f.x.device());
  check_cuda(k::conv_silu_fwd_cuda(f.x.data_ptr(), dt, f.ldx, f.w.data_ptr<float>(),
                                   f.bias.defined() ? f.bias.data_ptr<float>() : nullptr, f.out.data_ptr(), B, L,
                                   int(C), int(K), c10::cuda::getCurrentCUDAStream(),
                                   out_dtype == at::kBFloat16 ? k::ConvDtype::bf16 : k::ConvDtype::f32),
             "conv_silu_fwd_cuda");
  return f;
}

struct ConvSiluFn : public torch::autograd::Function<ConvSiluFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& w_in,
                            const at::Tensor& bias_in, const GradInto& dx_into) {
    auto f = conv_fwd(x_in, w_in, bias_in, at::kFloat);
    const auto &x = f.x, &w = f.w, &bias = f.bias;
    const int64_t ldx = f.ldx;
    auto out = f.out;
    ctx->save_for_backward({x, w, bias.defined() ? bias : at::Tensor()});
    ctx->saved_data["ldx"] = ldx;
    ctx->saved_data["x_dtype"] = int64_t(x_in.scalar_type());
    ctx->saved_data["w_dtype"] = int64_t(w_in.scalar_type());
    ctx->saved_data["has_bias"] = bias_in.defined();
    save_grad_into(ctx, dx_into);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &bias = saved[2];
    const int64_t ldx = ctx->saved_data["ldx"].toInt();
    const auto dt = x.scalar_type() == at::kBFloat16 ? k::ConvDtype::bf16 : k::ConvDtype::f32;
    const int64_t B = x.size(0), L = x.size(1), C = x.size(2), K = w.size(1);
    const auto dout = grad_out[0].to(at::kFloat).contiguous();
    // x's gradient in place in the split's shared buffer where there is one (split_grad.h).
    at::Tensor dx = take_grad_columns(ctx, C, x.scalar_type());
    const int64_t lddx = dx.defined() ? dx.stride(1) : C;
    if (!dx.defined()) dx = at::empty({B, L, C}, x.options());
    auto partial = at::empty({k::conv_silu_bwd_partial_size(B, L, int(C), int(K))}, dout.options());
    const c10::cuda::CUDAGuard guard(x.device());
    check_cuda(k::conv_silu_bwd_cuda(x.data_ptr(), dt, ldx, w.data_ptr<float>(),
                                     bias.defined() ? bias.data_ptr<float>() : nullptr, dout.data_ptr<float>(),
                                     dx.data_ptr(), partial.data_ptr<float>(), B, L, int(C), int(K),
                                     c10::cuda::getCurrentCUDAStream(), lddx),
               "conv_silu_bwd_cuda");
    const auto sums = partial.view({-1, C, K + 1}).sum(0);  // (C, K+1): dw then dbias
    const auto w_dtype = at::ScalarType(ctx->saved_data["w_dtype"].toInt());
    const auto dw = sums.narrow(1, 0, K).reshape({C, 1, K}).to(w_dtype);
    const auto db = ctx->saved_data["has_bias"].toBool() ? sums.select(1, K).contiguous() : at::Tensor();
    return {dx.to(at::ScalarType(ctx->saved_data["x_dtype"].toInt())), dw, db, at::Tensor()};
  }
};
}  // namespace

bool conv_fused_available(const at::Tensor& like, int64_t d_conv) {
  // The kernels' grid: batch in grid.z (<= 65535), length in runs of 32 in grid.y.
  return fused_switch().on() && like.is_cuda() && d_conv >= 2 && d_conv <= 4 && like.dim() == 3 &&
         like.size(0) <= 65535 && like.size(1) <= 32 * 65535;
}

at::Tensor conv_silu_fused(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const GradInto& dx_into) {
  DFSSM_ASSERT(x.dim() == 3 && w.dim() == 3 && w.size(0) == x.size(2) && w.size(1) == 1, "conv_silu_fused: shapes");
  return ConvSiluFn::apply(x, w, bias, dx_into);
}

at::Tensor conv_silu_fused_bf16(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  DFSSM_ASSERT(x.dim() == 3 && w.dim() == 3 && w.size(0) == x.size(2) && w.size(1) == 1, "conv_silu_fused_bf16: shapes");
  DFSSM_ASSERT(!c10::GradMode::is_enabled(), "conv_silu_fused_bf16: a pass without gradients only");
  return conv_fwd(x, w, bias, at::kBFloat16).out;
}

#else  // no CUDA in this build: mamba2.cpp keeps its ATen path

bool conv_fused_available(const at::Tensor&, int64_t) { return false; }

at::Tensor conv_silu_fused(const at::Tensor&, const at::Tensor&, const at::Tensor&, const GradInto&) {
  DFSSM_ASSERT(false, "conv_silu_fused: this build has no CUDA kernels");
  return {};
}
at::Tensor conv_silu_fused_bf16(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  DFSSM_ASSERT(false, "conv_silu_fused_bf16: this build has no CUDA kernels");
  return {};
}

#endif

}  // namespace dfssm
