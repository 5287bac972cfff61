#include "model/norm_fused.h"

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cuda/norm_train.h"
#define DFSSM_NORM_FUSED_BUILT 1
#endif

namespace dfssm {

namespace {
fused::Switch& fused_switch() {
  static fused::Switch s("DFSSM_NORM_FUSED");
  return s;
}
fused::Switch& add_switch() {
  static fused::Switch s("DFSSM_ADD_NORM_FUSED");
  return s;
}
}  // namespace

void set_gated_norm_fused_enabled(bool on) { fused_switch().set(on); }
void set_add_rms_norm_fused_enabled(bool on) { add_switch().set(on); }

#ifdef DFSSM_NORM_FUSED_BUILT
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = dfssm::kernels;
using fused::check_cuda;
using fused::rows_view;

k::NormDtype norm_dtype(at::ScalarType t) { return t == at::kBFloat16 ? k::NormDtype::bf16 : k::NormDtype::f32; }

// The kernels load 16 bytes (fp32) or 8 (bf16) at a time: a tensor whose data is not aligned
// that way (a view at an odd offset) is copied first.
bool is_aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % (t.scalar_type() == at::kBFloat16 ? 8u : 16u) == 0;
}
at::Tensor aligned(const at::Tensor& t) { return is_aligned(t) ? t : t.clone(at::MemoryFormat::Contiguous); }

// z (fp32 or bf16) as the kernels read it: rows ldz apart (in place where the strides allow).
at::Tensor z_rows(const at::Tensor& z_in, int64_t* ldz) {
  const auto zs = z_in.scalar_type() == at::kBFloat16 ? z_in : z_in.to(at::kFloat);
  auto z = rows_view(zs, ldz);
  if (*ldz % 4 != 0 || !is_aligned(z)) z = zs.clone(at::MemoryFormat::Contiguous), *ldz = z.size(2);
  return z;
}

// y's values in the form the kernels read: bf16 as is where z is bf16 too (the bf16-y kernels),
// else fp32; 16-byte or 8-byte aligned.
at::Tensor y_for_kernels(const at::Tensor& y, const at::Tensor& z) {
  const bool bf = y.scalar_type() == at::kBFloat16 && z.scalar_type() == at::kBFloat16;
  return aligned((bf ? y : y.to(at::kFloat)).contiguous());
}

struct GatedNormFn : public torch::autograd::Function<GatedNormFn> {
  // y_values: empty, or the values to read in place of y_in's (gated_norm_fused).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y_in, const at::Tensor& z_in, const at::Tensor& w_in,
                            int64_t gs, double eps, int64_t out_dtype, const at::Tensor& y_values,
                            const GradInto& dz_into) {
    const auto y = y_for_kernels(y_values.numel() > 0 ? y_values : y_in, z_in);
    int64_t ldz = 0;
    const auto z = z_rows(z_in, &ldz);
    const auto w = aligned(w_in.to(at::kFloat).contiguous());
    const int64_t R = y.size(0) * y.size(1), D = y.size(2);
    const auto odt = at::ScalarType(out_dtype);
    auto out = at::empty(y.sizes(), y.options().dtype(odt));
    auto rstd = at::empty({R, D / gs}, y.options().dtype(at::kFloat));
    const c10::cuda::CUDAGuard guard(y.device());
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (y.scalar_type() == at::kBFloat16)
      check_cuda(k::gated_norm_fwd_bf16y_cuda(y.data_ptr(), z.data_ptr(), k::NormDtype::bf16, ldz, w.data_ptr<float>(),
                                              out.data_ptr(), norm_dtype(odt), rstd.data_ptr<float>(), R, int(D),
                                              int(gs), float(eps), stream),
                 "gated_norm_fwd_bf16y_cuda");
    else
      check_cuda(k::gated_norm_fwd_cuda(y.data_ptr<float>(), z.data_ptr(), norm_dtype(z.scalar_type()), ldz,
                                        w.data_ptr<float>(), out.data_ptr(), norm_dtype(odt), rstd.data_ptr<float>(), R,
                                        int(D), int(gs), float(eps), stream),
                 "gated_norm_fwd_cuda");
    ctx->save_for_backward({y, z, w, rstd});
    ctx->saved_data["ldz"] = ldz;
    ctx->saved_data["gs"] = gs;
    save_grad_into(ctx, dz_into);
    ctx->saved_data["dtypes"] = std::vector<int64_t>{int64_t(y_in.scalar_type()), int64_t(z_in.scalar_type()),
                                                     int64_t(w_in.scalar_type()), out_dtype};
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &y = s[0], &z = s[1], &w = s[2], &rstd = s[3];
    const int64_t ldz = ctx->saved_data["ldz"].toInt(), gs = ctx->saved_data["gs"].toInt();
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const int64_t R = y.size(0) * y.size(1), D = y.size(2);
    const auto odt = at::ScalarType(dtypes[3]);
    const auto dout = aligned(grad_out[0].to(odt).contiguous());
    const auto f32 = y.options().dtype(at::kFloat);
    auto dy = at::empty(y.sizes(), f32);
    // z's gradient in place in the split's shared buffer where there is one (split_grad.h).
    at::Tensor dz = take_grad_columns(ctx, D, z.scalar_type());
    const int64_t lddz = dz.defined() ? dz.stride(1) : D;
    if (!dz.defined()) dz = at::empty(y.sizes(), z.options());
    auto partial = at::empty({k::norm_bwd_partial_size(R, int(D))}, f32);
    const c10::cuda::CUDAGuard guard(y.device());
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (y.scalar_type() == at::kBFloat16)
      check_cuda(k::gated_norm_bwd_bf16y_cuda(y.data_ptr(), z.data_ptr(), k::NormDtype::bf16, ldz, w.data_ptr<float>(),
                                              rstd.data_ptr<float>(), dout.data_ptr(), norm_dtype(odt),
                                              dy.data_ptr<float>(), dz.data_ptr(), partial.data_ptr<float>(), R, int(D),
                                              int(gs), stream, lddz),
                 "gated_norm_bwd_bf16y_cuda");
    else
      check_cuda(k::gated_norm_bwd_cuda(y.data_ptr<float>(), z.data_ptr(), norm_dtype(z.scalar_type()), ldz,
                                        w.data_ptr<float>(), rstd.data_ptr<float>(), dout.data_ptr(), norm_dtype(odt),
                                        dy.data_ptr<float>(), dz.data_ptr(), partial.data_ptr<float>(), R, int(D),
                                        int(gs), stream, lddz),
                 "gated_norm_bwd_cuda");
    const auto dw = partial.view({-1, D}).sum(0);
    return {dy.to(at::ScalarType(dtypes[0])), dz.to(at::ScalarType(dtypes[1])), dw.to(at::ScalarType(dtypes[2])),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

bool out_dtype_ok(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

// The plain norm's backward with the stream's gradient added (rms_norm_bwd_add_cuda): returns dx
// in fp32, and writes it in dh's dtype into dh when dh is defined. dres undefined: the plain
// backward (then dh gets dx's cast).
at::Tensor norm_bwd_add(const at::Tensor& x, const at::Tensor& w, const at::Tensor& rstd, const at::Tensor& dout_in,
                        at::ScalarType odt, const at::Tensor& dres_in, const at::Tensor& dh, at::Tensor* dw) {
  const int64_t D = x.size(-1), R = x.numel() / D;
  const auto dout = aligned(dout_in.to(odt).contiguous());
  auto dx = at::empty(x.sizes(), x.options());
  auto partial = at::empty({k::norm_bwd_partial_size(R, int(D))}, x.options());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (dres_in.defined()) {
    const auto dres = aligned(dres_in.to(at::kFloat).contiguous());
    DFSSM_ASSERT(!dh.defined() || (dh.is_contiguous() && dh.sizes() == x.sizes() && out_dtype_ok(dh.scalar_type())),
                 "norm_bwd_add: dh must be contiguous fp32 or bf16 of x's shape");
    check_cuda(k::rms_norm_bwd_add_cuda(x.data_ptr<float>(), w.data_ptr<float>(), rstd.data_ptr<float>(),
                                        dout.data_ptr(), norm_dtype(odt), dres.data_ptr<float>(), dx.data_ptr<float>(),
                                        dh.defined() ? dh.data_ptr() : nullptr,
                                        norm_dtype(dh.defined() ? dh.scalar_type() : at::kFloat), partial.data_ptr<float>(),
                                        R, int(D), stream),
               "rms_norm_bwd_add_cuda");
  } else {
    check_cuda(k::rms_norm_bwd_cuda(x.data_ptr<float>(), w.data_ptr<float>(), rstd.data_ptr<float>(), dout.data_ptr(),
                                    norm_dtype(odt), dx.data_ptr<float>(), partial.data_ptr<float>(), R, int(D), stream),
               "rms_norm_bwd_cuda");
    if (dh.defined()) dh.copy_(dx);
  }
  *dw = partial.view({-1, D}).sum(0);
  return dx;
}

// The plain norm's forward for RmsNormFn and RmsNormAddGradFn: saves x, w and rstd.
at::Tensor rms_norm_forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& w_in, double eps,
                            int64_t out_dtype) {
  const auto x = aligned(x_in.to(at::kFloat).contiguous());
  const auto w = aligned(w_in.to(at::kFloat).contiguous());
  const int64_t D = x.size(-1), R = x.numel() / D;
  const auto odt = at::ScalarType(out_dtype);
  auto out = at::empty(x.sizes(), x.options().dtype(odt));
  auto rstd = at::empty({R}, x.options());
  const c10::cuda::CUDAGuard guard(x.device());
  check_cuda(k::rms_norm_fwd_cuda(x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr(), norm_dtype(odt),
                                  rstd.data_ptr<float>(), R, int(D), float(eps), c10::cuda::getCurrentCUDAStream()),
             "rms_norm_fwd_cuda");
  ctx->save_for_backward({x, w, rstd});
  ctx->saved_data["dtypes"] = std::vector<int64_t>{int64_t(x_in.scalar_type()), int64_t(w_in.scalar_type()), out_dtype};
  return out;
}

// Its backward: {dx, dw} in the inputs' dtypes, with dres added and dh written when defined.
variable_list rms_norm_backward(AutogradContext* ctx, const at::Tensor& dout, const at::Tensor& dres,
                                const at::Tensor& dh) {
  const auto s = ctx->get_saved_variables();
  const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
  at::Tensor dw;
  const auto dx = norm_bwd_add(s[0], s[1], s[2], dout, at::ScalarType(dtypes[2]), dres, dh, &dw);
  return {dx.to(at::ScalarType(dtypes[0])), dw.to(at::ScalarType(dtypes[1]))};
}

struct RmsNormFn : public torch::autograd::Function<RmsNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double eps,
                            int64_t out_dtype) {
    return rms_norm_forward(ctx, x, w, eps, out_dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto g = rms_norm_backward(ctx, grad_out[0], at::Tensor(), at::Tensor());
    return {g[0], g[1], at::Tensor(), at::Tensor()};
  }
};

// rms_norm_fused_add_grad: dres and dh ride along as inputs that take no gradient.
struct RmsNormAddGradFn : public torch::autograd::Function<RmsNormAddGradFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double eps,
                            int64_t out_dtype, const at::Tensor& dres, const at::Tensor& dh) {
    ctx->saved_data["dres"] = dres;
    ctx->saved_data["dh"] = dh;
    return rms_norm_forward(ctx, x, w, eps, out_dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto g = rms_norm_backward(ctx, grad_out[0], ctx->saved_data["dres"].toTensor(), ctx->saved_data["dh"].toTensor());
    return {g[0], g[1], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// res + h and its norm (add_rms_norm_fused). Saves its own first output (the stream) for backward.
struct AddRmsNormFn : public torch::autograd::Function<AddRmsNormFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& res_in, const at::Tensor& h_in,
                               const at::Tensor& w_in, double eps, int64_t out_dtype) {
    const auto res = aligned(res_in.contiguous());
    const auto h = aligned(h_in.contiguous());
    const auto w = aligned(w_in.to(at::kFloat).contiguous());
    const int64_t D = res.size(-1), R = res.numel() / D;
    const auto odt = at::ScalarType(out_dtype);
    auto x = at::empty(res.sizes(), res.options());
    auto out = at::empty(res.sizes(), res.options().dtype(odt));
    auto rstd = at::empty({R}, res.options());
    const c10::cuda::CUDAGuard guard(res.device());
    check_cuda(k::add_rms_norm_fwd_cuda(res.data_ptr<float>(), h.data_ptr(), norm_dtype(h.scalar_type()),
                                        x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr(), norm_dtype(odt),
                                        rstd.data_ptr<float>(), R, int(D), float(eps),
                                        c10::cuda::getCurrentCUDAStream()),
               "add_rms_norm_fwd_cuda");
    ctx->save_for_backward({x, w, rstd});
    ctx->saved_data["dtypes"] = std::vector<int64_t>{int64_t(h_in.scalar_type()), int64_t(w_in.scalar_type()), out_dtype};
    return {x, out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &x = s[0], &w = s[1], &rstd = s[2];
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const auto hdt = at::ScalarType(dtypes[0]), odt = at::ScalarType(dtypes[2]);
    auto dh = at::empty(x.sizes(), x.options().dtype(hdt));
    at::Tensor dx, dw;
    if (grad_out[1].defined()) {
      dx = norm_bwd_add(x, w, rstd, grad_out[1], odt, grad_out[0], dh, &dw);
    } else {  // the normed output unused: the stream's gradient passes through
      dx = grad_out[0].defined() ? grad_out[0].to(at::kFloat) : at::zeros(x.sizes(), x.options());
      dh.copy_(dx);
      dw = at::zeros(w.sizes(), w.options());
    }
    return {dx, dh, dw.to(at::ScalarType(dtypes[1])), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool gated_norm_fused_available(const at::Tensor& like, int64_t group_size) {
  return fused_switch().on() && like.is_cuda() && group_size % 4 == 0 && group_size <= k::kNormMaxGroup;
}

at::Tensor gated_norm_fused(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w, int64_t group_size,
                            double eps, at::ScalarType out_dtype, const at::Tensor& y_values, const GradInto& dz_into) {
  DFSSM_ASSERT(y.dim() == 3 && z.sizes() == y.sizes() && w.dim() == 1 && w.size(0) == y.size(2) &&
                   y.size(2) % group_size == 0 && y.numel() > 0 && out_dtype_ok(out_dtype) &&
                   (!y_values.defined() || (y_values.sizes() == y.sizes() && !y_values.requires_grad() &&
                                            (y_values.scalar_type() == at::kFloat ||
                                             y_values.scalar_type() == at::kBFloat16))),
               "gated_norm_fused: shapes");
  // (A bf16 y with a bf16 z, such as the no-grad first pass's kept SSD output, is read as is.)
  // (An absent y_values travels as an empty tensor: custom functions record every tensor
  // argument's device.)
  return GatedNormFn::apply(y, z, w, group_size, eps, int64_t(out_dtype),
                            y_values.defined() ? y_values : at::empty({0}, y.options()), dz_into);
}

bool rms_norm_fused_available(const at::Tensor& x) {
  return fused_switch().on() && x.is_cuda() && x.dim() >= 1 && x.numel() > 0 && x.size(-1) % 4 == 0 &&
         x.size(-1) <= k::kNormMaxGroup;
}

at::Tensor rms_norm_fused(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype) {
  DFSSM_ASSERT(w.dim() == 1 && w.size(0) == x.size(-1) && out_dtype_ok(out_dtype), "rms_norm_fused: shapes");
  return RmsNormFn::apply(x, w, eps, int64_t(out_dtype));
}

bool add_rms_norm_fused_available(const at::Tensor& res, const at::Tensor& h) {
  return add_switch().on() && rms_norm_fused_available(res) && res.scalar_type() == at::kFloat &&
         h.sizes() == res.sizes() && h.device() == res.device() &&
         (h.scalar_type() == at::kFloat || h.scalar_type() == at::kBFloat16);
}

std::pair<at::Tensor, at::Tensor> add_rms_norm_fused(const at::Tensor& res, const at::Tensor& h, const at::Tensor& w,
                                                     double eps, at::ScalarType out_dtype) {
  DFSSM_ASSERT(add_rms_norm_fused_available(res, h) && w.dim() == 1 && w.size(0) == res.size(-1) &&
                   out_dtype_ok(out_dtype),
               "add_rms_norm_fused: shapes");
  const auto r = AddRmsNormFn::apply(res, h, w, eps, int64_t(out_dtype));
  return {r[0], r[1]};
}

at::Tensor rms_norm_fused_add_grad(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype,
                                   const at::Tensor& dres, const at::Tensor& dh) {
  DFSSM_ASSERT(w.dim() == 1 && w.size(0) == x.size(-1) && out_dtype_ok(out_dtype) && !dres.requires_grad() &&
                   !dh.requires_grad(),
               "rms_norm_fused_add_grad: shapes");
  return RmsNormAddGradFn::apply(x, w, eps, int64_t(out_dtype), dres, dh);
}

#else  // no CUDA in this build: mamba2.cpp keeps its ATen path

bool gated_norm_fused_available(const at::Tensor&, int64_t) { return false; }
bool rms_norm_fused_available(const at::Tensor&) { return false; }
bool add_rms_norm_fused_available(const at::Tensor&, const at::Tensor&) { return false; }
std::pair<at::Tensor, at::Tensor> add_rms_norm_fused(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                                     at::ScalarType) {
  DFSSM_ASSERT(false, "add_rms_norm_fused: this build has no CUDA kernels");
  return {};
}
at::Tensor rms_norm_fused_add_grad(const at::Tensor&, const at::Tensor&, double, at::ScalarType, const at::Tensor&,
                                   const at::Tensor&) {
  DFSSM_ASSERT(false, "rms_norm_fused_add_grad: this build has no CUDA kernels");
  return {};
}

at::Tensor gated_norm_fused(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double, at::ScalarType,
                            const at::Tensor&, const GradInto&) {
  DFSSM_ASSERT(false, "gated_norm_fused: this build has no CUDA kernels");
  return {};
}
at::Tensor rms_norm_fused(const at::Tensor&, const at::Tensor&, double, at::ScalarType) {
  DFSSM_ASSERT(false, "rms_norm_fused: this build has no CUDA kernels");
  return {};
}

#endif

}  // namespace dfssm
