#include "model/gated_norm_fused.h"

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cuda/gated_norm_train.h"
#define DFSSM_NORM_FUSED_BUILT 1
#endif

namespace dfssm {

namespace {
fused::Switch& fused_switch() {
  static fused::Switch s("DFSSM_NORM_FUSED");
  return s;
}
}  // namespace

void set_gated_norm_fused_enabled(bool on) { fused_switch().set(on); }

#ifdef DFSSM_NORM_FUSED_BUILT
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = dfssm::kernels;
using fused::check_cuda;
using fused::rows_view;

struct GatedNormFn : public torch::autograd::Function<GatedNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y_in, const at::Tensor& z_in, const at::Tensor& w_in,
                            int64_t gs, double eps) {
    const auto y = y_in.to(at::kFloat).contiguous();
    const auto zs = z_in.scalar_type() == at::kBFloat16 ? z_in : z_in.to(at::kFloat);
    int64_t ldz = 0;
    const auto z = rows_view(zs, &ldz);
    const auto w = w_in.to(at::kFloat).contiguous();
    const int64_t R = y.size(0) * y.size(1), D = y.size(2);
    const auto zdt = z.scalar_type() == at::kBFloat16 ? k::NormDtype::bf16 : k::NormDtype::f32;
    auto out = at::empty(y.sizes(), y.options());
    auto rstd = at::empty({R, D / gs}, y.options());
    const c10::cuda::CUDAGuard guard(y.device());
    check_cuda(k::gated_norm_fwd_cuda(y.data_ptr<float>(), z.data_ptr(), zdt, ldz, w.data_ptr<float>(),
                                      out.data_ptr<float>(), rstd.data_ptr<float>(), R, int(D), int(gs), float(eps),
                                      c10::cuda::getCurrentCUDAStream()),
               "gated_norm_fwd_cuda");
    ctx->save_for_backward({y, z, w, rstd});
    ctx->saved_data["ldz"] = ldz;
    ctx->saved_data["gs"] = gs;
    ctx->saved_data["dtypes"] = std::vector<int64_t>{int64_t(y_in.scalar_type()), int64_t(z_in.scalar_type()),
                                                     int64_t(w_in.scalar_type())};
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &y = s[0], &z = s[1], &w = s[2], &rstd = s[3];
    const int64_t ldz = ctx->saved_data["ldz"].toInt(), gs = ctx->saved_data["gs"].toInt();
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const int64_t R = y.size(0) * y.size(1), D = y.size(2);
    const auto zdt = z.scalar_type() == at::kBFloat16 ? k::NormDtype::bf16 : k::NormDtype::f32;
    const auto dout = grad_out[0].to(at::kFloat).contiguous();
    auto dy = at::empty(y.sizes(), y.options());
    auto dz = at::empty(y.sizes(), z.options());
    auto partial = at::empty({k::gated_norm_bwd_partial_size(R, int(D))}, y.options());
    const c10::cuda::CUDAGuard guard(y.device());
    check_cuda(k::gated_norm_bwd_cuda(y.data_ptr<float>(), z.data_ptr(), zdt, ldz, w.data_ptr<float>(),
                                      rstd.data_ptr<float>(), dout.data_ptr<float>(), dy.data_ptr<float>(), dz.data_ptr(),
                                      partial.data_ptr<float>(), R, int(D), int(gs), c10::cuda::getCurrentCUDAStream()),
               "gated_norm_bwd_cuda");
    const auto dw = partial.view({-1, D}).sum(0);
    return {dy.to(at::ScalarType(dtypes[0])), dz.to(at::ScalarType(dtypes[1])), dw.to(at::ScalarType(dtypes[2])),
            at::Tensor(), at::Tensor()};
  }
};
}  // namespace

bool gated_norm_fused_available(const at::Tensor& like, int64_t group_size) {
  return fused_switch().on() && like.is_cuda() && group_size % 32 == 0 && group_size <= 6144;
}

at::Tensor gated_norm_fused(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w, int64_t group_size,
                            double eps) {
  DFSSM_ASSERT(y.dim() == 3 && z.sizes() == y.sizes() && w.dim() == 1 && w.size(0) == y.size(2) &&
                   y.size(2) % group_size == 0,
               "gated_norm_fused: shapes");
  return GatedNormFn::apply(y, z, w, group_size, eps);
}

#else  // no CUDA in this build: mamba2.cpp keeps its ATen path

bool gated_norm_fused_available(const at::Tensor&, int64_t) { return false; }

at::Tensor gated_norm_fused(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double) {
  DFSSM_ASSERT(false, "gated_norm_fused: this build has no CUDA kernels");
  return {};
}

#endif

}  // namespace dfssm
