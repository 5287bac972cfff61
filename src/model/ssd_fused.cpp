#include "model/ssd_fused.h"

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <ATen/autocast_mode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cuda/ssd_train.h"
#define DFSSM_SSD_FUSED_BUILT 1
#endif

namespace dfssm {

namespace {
fused::Switch& fused_switch() {
  static fused::Switch s("DFSSM_SSD_FUSED");
  return s;
}
}  // namespace

void set_ssd_fused_enabled(bool on) { fused_switch().set(on); }

#ifdef DFSSM_SSD_FUSED_BUILT
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = dfssm::kernels;
using fused::check_cuda;

k::SsdDtype kdtype(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? k::SsdDtype::bf16 : k::SsdDtype::f32; }

// M (b,c,h,l,s) from acs (b,c,h,l) fp32 and cb (b,c,g,l,s), both contiguous; M in cb's dtype.
at::Tensor build_mask(const at::Tensor& acs, const at::Tensor& cb) {
  const int64_t b = acs.size(0), c = acs.size(1), h = acs.size(2), T = acs.size(3), g = cb.size(2);
  auto M = at::empty({b, c, h, T, T}, cb.options());
  const c10::cuda::CUDAGuard guard(acs.device());
  check_cuda(k::ssd_mask_fwd_cuda(acs.data_ptr<float>(), cb.data_ptr(), M.data_ptr(), kdtype(cb), b * c, int(h),
                                  int(g), int(T), c10::cuda::getCurrentCUDAStream()),
             "ssd_mask_fwd_cuda");
  return M;
}

struct SsdDiagFn : public torch::autograd::Function<SsdDiagFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& acs, const at::Tensor& CB, const at::Tensor& X,
                            bool bf16) {
    const auto md = bf16 ? at::kBFloat16 : at::kFloat;  // the GEMM's dtype
    const auto a = acs.to(at::kFloat).contiguous(), cb = CB.to(md).contiguous(), x = X.to(md);
    ctx->save_for_backward({a, cb, x});
    ctx->saved_data["cb_dtype"] = int64_t(CB.scalar_type());
    ctx->saved_data["x_dtype"] = int64_t(X.scalar_type());
    return at::matmul(build_mask(a, cb), x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto &a = saved[0], &cb = saved[1], &x = saved[2];
    const auto dY = grad_out[0].to(cb.scalar_type());
    const auto M = build_mask(a, cb);  // rebuilt: cheaper than keeping (b,c,h,l,l) per layer
    const auto dX = at::matmul(M.transpose(-1, -2), dY);
    const auto dM = at::matmul(dY, x.transpose(-1, -2)).contiguous();
    auto dacs = at::zeros_like(a);
    auto dcb = at::empty(cb.sizes(), cb.options().dtype(at::kFloat));
    const int64_t b = a.size(0), c = a.size(1), h = a.size(2), T = a.size(3), g = cb.size(2);
    const c10::cuda::CUDAGuard guard(a.device());
    check_cuda(k::ssd_mask_bwd_cuda(a.data_ptr<float>(), cb.data_ptr(), dM.data_ptr(), kdtype(cb),
                                    dacs.data_ptr<float>(), dcb.data_ptr<float>(), b * c, int(h), int(g), int(T),
                                    c10::cuda::getCurrentCUDAStream()),
               "ssd_mask_bwd_cuda");
    return {dacs, dcb.to(at::ScalarType(ctx->saved_data["cb_dtype"].toInt())),
            dX.to(at::ScalarType(ctx->saved_data["x_dtype"].toInt())), at::Tensor()};
  }
};
}  // namespace

bool ssd_diag_fused_available(const at::Tensor& like, int64_t chunk, int64_t batch_chunks) {
  return fused_switch().on() && like.is_cuda() && like.scalar_type() == at::kFloat &&
         (chunk == 32 || chunk == 64 || chunk == 128 || chunk == 256) && batch_chunks <= 65535;
}

at::Tensor ssd_diag_fused(const at::Tensor& acs, const at::Tensor& CB, const at::Tensor& X) {
  DFSSM_ASSERT(acs.dim() == 4 && CB.dim() == 5 && X.dim() == 5, "ssd_diag_fused: bad ranks");
  DFSSM_ASSERT(CB.size(3) == acs.size(3) && CB.size(4) == acs.size(3) && X.size(3) == acs.size(3) &&
                   X.size(2) == acs.size(2) && acs.size(2) % CB.size(2) == 0,
               "ssd_diag_fused: shapes");
  const bool bf16 = at::autocast::is_autocast_enabled(at::kCUDA) &&
                    at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
  return SsdDiagFn::apply(acs, CB, X, bf16);
}

#else  // no CUDA in this build: ssd.cpp keeps its ATen path

bool ssd_diag_fused_available(const at::Tensor&, int64_t, int64_t) { return false; }

at::Tensor ssd_diag_fused(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  DFSSM_ASSERT(false, "ssd_diag_fused: this build has no CUDA kernels");
  return {};
}

#endif

}  // namespace dfssm
