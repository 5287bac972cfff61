#include "quant/scaffold_fused.h"

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cuda/scaffold_train.h"
#define DFSSM_SCAFFOLD_FUSED_BUILT 1
#endif

namespace dfssm::quant {

namespace {
fused::Switch& fused_switch() {
  static fused::Switch s("DFSSM_SCAFFOLD_FUSED");
  return s;
}
}  // namespace

void set_scaffold_fused_enabled(bool on) { fused_switch().set(on); }

#ifdef DFSSM_SCAFFOLD_FUSED_BUILT
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = dfssm::kernels;
using fused::check_cuda;

// (n, r) codes as bf16 (n, r rounded up to 8) with zero columns: cuBLAS's tensor-core GEMMs want
// 16-byte-aligned leading dimensions. |code| <= 127 is exact in bf16.
at::Tensor padded_codes(const at::Tensor& codes) {
  const int64_t r = codes.size(1), r8 = (r + 7) / 8 * 8;
  auto p = at::zeros({codes.size(0), r8}, codes.options().dtype(at::kBFloat16));
  p.narrow(1, 0, r).copy_(codes);
  return p;
}

// dW (n x m) times codes (m x r8) in fp32, then each column k times scale[k]: dW · (codes · scale).
at::Tensor times_factor(const at::Tensor& dW, const at::Tensor& codes_pad, const at::Tensor& scale, const at::Tensor& F) {
  if (dW.scalar_type() != at::kBFloat16) return at::mm(dW, F);  // fp32: the factor as it is
  const int64_t r = scale.size(0);
  return at::mm(dW, codes_pad, at::kFloat).narrow(1, 0, r) * scale;
}

struct ScaffoldWeightFn : public torch::autograd::Function<ScaffoldWeightFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w_lat, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& U, const at::Tensor& V, const at::Tensor& u_codes,
                            const at::Tensor& u_scale, const at::Tensor& v_codes, const at::Tensor& v_scale,
                            double clip, int64_t out_dtype) {
    const int64_t R = w_lat.size(0), C = w_lat.size(1), r = U.numel() ? U.size(1) : 0;
    const auto odt = at::ScalarType(out_dtype);
    auto W = at::empty({R, C}, w_lat.options().dtype(odt));
    const auto Af = A.contiguous(), Bf = B.contiguous();
    const auto Uf = r ? U.contiguous() : at::Tensor(), Vf = r ? V.contiguous() : at::Tensor();
    k::ScaffoldWeightArgs a;
    a.w = w_lat.data_ptr<float>(), a.A = Af.data_ptr<float>(), a.Bc = Bf.data_ptr<float>();
    a.U = r ? Uf.data_ptr<float>() : nullptr, a.V = r ? Vf.data_ptr<float>() : nullptr;
    a.R = R, a.C = C, a.r = int(r), a.clip = float(clip);
    a.wdt = odt == at::kBFloat16 ? k::ScaffoldDtype::bf16 : k::ScaffoldDtype::f32;
    a.W = W.data_ptr();
    const c10::cuda::CUDAGuard guard(w_lat.device());
    check_cuda(k::scaffold_weight_fwd_cuda(a, c10::cuda::getCurrentCUDAStream()), "scaffold_weight_fwd_cuda");
    if (r) {
      ctx->save_for_backward({w_lat, Af, Bf, Uf, Vf, padded_codes(u_codes), u_scale, padded_codes(v_codes), v_scale});
    } else {
      ctx->save_for_backward({w_lat, Af, Bf});
    }
    ctx->saved_data["clip"] = clip;
    return W;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &w = s[0], &A = s[1], &B = s[2];
    const int64_t R = w.size(0), C = w.size(1);
    auto dW = grad_out[0].contiguous();
    if (dW.scalar_type() != at::kBFloat16) dW = dW.to(at::kFloat);
    auto dw = at::empty_like(w);
    auto part_a = at::empty({k::scaffold_part_a_rows(C), R}, w.options());
    auto part_b = at::empty({k::scaffold_part_b_rows(R), C}, w.options());
    k::ScaffoldWeightArgs a;
    a.w = w.data_ptr<float>(), a.A = A.data_ptr<float>(), a.Bc = B.data_ptr<float>();
    a.R = R, a.C = C, a.clip = float(ctx->saved_data["clip"].toDouble());
    a.wdt = dW.scalar_type() == at::kBFloat16 ? k::ScaffoldDtype::bf16 : k::ScaffoldDtype::f32;
    a.dW = dW.data_ptr(), a.dw = dw.data_ptr<float>(), a.part_a = part_a.data_ptr<float>();
    a.part_b = part_b.data_ptr<float>();
    const c10::cuda::CUDAGuard guard(w.device());
    check_cuda(k::scaffold_weight_bwd_cuda(a, c10::cuda::getCurrentCUDAStream()), "scaffold_weight_bwd_cuda");
    at::Tensor dU, dV;
    if (s.size() > 3) {  // the low-rank term: dU = dW V, dV = dWᵀ U
      const auto &U = s[3], &V = s[4], &ucp = s[5], &us = s[6], &vcp = s[7], &vs = s[8];
      dU = times_factor(dW, vcp, vs, V);
      dV = times_factor(dW.t(), ucp, us, U);
    }
    return {dw, part_a.sum(0), part_b.sum(0), dU, dV, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};
}  // namespace

at::Tensor scaffold_weight_fused(const ScaffoldWeightInputs& in, at::ScalarType out_dtype) {
  const auto& w = in.w_lat;
  const int64_t r = in.U.defined() ? in.U.size(1) : 0;
  if (!fused_switch().on() || !w.is_cuda() || w.dim() != 2 || w.scalar_type() != at::kFloat || !w.is_contiguous() ||
      w.size(1) % 2 != 0 || r > k::kScaffoldMaxRank || reinterpret_cast<uintptr_t>(w.data_ptr()) % 8 != 0 ||
      (out_dtype != at::kFloat && out_dtype != at::kBFloat16))
    return {};
  // Autograd functions cannot take undefined tensors: without a low-rank term, empty ones.
  const auto none = at::empty({0}, w.options());
  auto def = [&](const at::Tensor& t) { return r ? t : none; };
  return ScaffoldWeightFn::apply(w, in.A, in.B, def(in.U), def(in.V), def(in.u_codes), def(in.u_scale), def(in.v_codes),
                                 def(in.v_scale), in.clip, int64_t(out_dtype));
}
#else
at::Tensor scaffold_weight_fused(const ScaffoldWeightInputs&, at::ScalarType) { return {}; }
#endif

}  // namespace dfssm::quant
