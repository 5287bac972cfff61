#include "model/ssd_scan.h"

#include <c10/core/GradMode.h>

#include <initializer_list>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cuda/ssd_scan.h"
#define DFSSM_SSD_SCAN_BUILT 1
#endif

namespace dfssm {

namespace {
fused::Switch& scan_switch() {
  static fused::Switch s("DFSSM_SSD_SCAN", /*default_on=*/true);
  return s;
}
fused::Switch& train_switch() {
  static fused::Switch s("DFSSM_SSD_SCAN_TRAIN", /*default_on=*/true);
  return s;
}
fused::Switch& xbc_grad_switch() {
  static fused::Switch s("DFSSM_SSD_XBC_GRAD", /*default_on=*/true);
  return s;
}
fused::Switch& y_bf16_switch() {  // off until measured on a GPU (docs/training.md)
  static fused::Switch s("DFSSM_SSD_Y_BF16");
  return s;
}

bool needs_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

// (b, l, k, m) as rows of k*m elements (fused::rows_view: read in place when it can), made
// contiguous when the kernels' 16-byte alignment does not hold. Returns the tensor to read and
// its row stride in elements (fp32, or bf16 for the no-grad forward's version 4).
at::Tensor rows_of(const at::Tensor& t, int64_t* row) {
  auto r = fused::rows_view(t.flatten(2), row);
  if (*row % (16 / r.element_size()) != 0 || reinterpret_cast<uintptr_t>(r.data_ptr()) % 16 != 0)
    r = r.contiguous(), *row = r.stride(1);
  return r;
}
}  // namespace

void set_ssd_scan_enabled(bool on) { scan_switch().set(on); }
void set_ssd_scan_train_enabled(bool on) { train_switch().set(on); }
void set_ssd_scan_xbc_grad_enabled(bool on) { xbc_grad_switch().set(on); }
bool ssd_scan_xbc_grad_enabled() { return xbc_grad_switch().on(); }
void set_ssd_scan_y_bf16_enabled(bool on) { y_bf16_switch().set(on); }
bool ssd_scan_y_bf16_enabled() { return y_bf16_switch().on(); }

namespace {
// The kernels' shapes and dtypes (both directions): fp32 CUDA x, dt, B, C (see bf16_ok); headdim 64, d_state 128;
// and the grid limits (batch, heads and chunks x groups within 65535; the latter bounds L).
// bf16_ok: x, B and C may also all be bf16 (the no-grad forward's version 4, or a shape check for
// a later fp32 pass).
bool scan_shapes_ok(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& B, const at::Tensor& C,
                    int64_t chunk, bool bf16_ok = false) {
  if (!x.is_cuda() || x.dim() != 4 || B.dim() != 4 || chunk <= 0 || dt.scalar_type() != at::kFloat) return false;
  const auto xt = x.scalar_type();
  if (!(xt == at::kFloat || (bf16_ok && xt == at::kBFloat16)) || B.scalar_type() != xt || C.scalar_type() != xt)
    return false;
  const int64_t chunks = (x.size(1) + chunk - 1) / chunk;
  return x.size(3) == 64 && B.size(3) == 128 && x.size(0) <= 65535 && x.size(2) <= 65535 &&
         chunks * B.size(2) <= 65535;
}
bool any_needs_grad(std::initializer_list<const at::Tensor*> ts) {
  if (!c10::GradMode::is_enabled()) return false;
  for (const auto* t : ts)
    if (needs_grad(*t)) return true;
  return false;
}
}  // namespace

bool ssd_scan_fused_available(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& C, const at::Tensor& D, int64_t chunk) {
#ifdef DFSSM_SSD_SCAN_BUILT
  // bf16 x, B, C: only the sequential kernel's version 4 reads them.
  return scan_switch().on() && scan_shapes_ok(x, dt, B, C, chunk, kernels::ssd_scan_seq_enabled()) &&
         !any_needs_grad({&x, &dt, &A, &B, &C, &D}) && (chunk == 64 || chunk == 128 || chunk == 256);
#else
  (void)x, (void)dt, (void)A, (void)B, (void)C, (void)D, (void)chunk;
  return false;
#endif
}

bool ssd_scan_train_available(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& C, const at::Tensor& D, int64_t chunk, bool as_fp32) {
#ifdef DFSSM_SSD_SCAN_BUILT
  return train_switch().on() && scan_shapes_ok(x, dt, B, C, chunk, as_fp32) && (chunk == 64 || chunk == 128) &&
         (!D.defined() || D.scalar_type() == at::kFloat) && A.scalar_type() == at::kFloat;
#else
  (void)x, (void)dt, (void)A, (void)B, (void)C, (void)D, (void)chunk, (void)as_fp32;
  return false;
#endif
}

bool ssd_scan_bf16_inputs_wanted() {
#ifdef DFSSM_SSD_SCAN_BUILT
  return scan_switch().on() && kernels::ssd_scan_seq_enabled() && kernels::ssd_scan_seq_version() == 4;
#else
  return false;
#endif
}

#ifdef DFSSM_SSD_SCAN_BUILT
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The kernels' arguments over these tensors (x, B, C read in place where their strides allow).
// `keep` holds the tensors the pointers refer to.
kernels::SsdScanArgs make_args(const at::Tensor& x_in, const at::Tensor& dt, const at::Tensor& A,
                               const at::Tensor& B_in, const at::Tensor& C_in, const at::Tensor& D, int64_t chunk,
                               const at::Tensor& initial_state, std::vector<at::Tensor>& keep) {
  const int64_t b = x_in.size(0), l = x_in.size(1), h = x_in.size(2), p = x_in.size(3), n = B_in.size(3);
  DFSSM_ASSERT(B_in.sizes() == C_in.sizes() && B_in.size(0) == b && B_in.size(1) == l && dt.size(0) == b &&
                   dt.size(1) == l && dt.size(2) == h && A.numel() == h && (!D.defined() || D.numel() == h),
               "ssd_scan: shapes");
  kernels::SsdScanArgs a;
  int64_t xr = 0, br = 0, cr = 0;
  const auto x = rows_of(x_in, &xr);
  auto B = rows_of(B_in, &br), C = rows_of(C_in, &cr);
  if (br != cr) B = B.contiguous(), C = C.contiguous(), br = cr = B.stride(1);
  const auto dtc = dt.contiguous(), Af = A.to(at::kFloat).contiguous();
  const auto Df = D.defined() ? D.to(at::kFloat).contiguous() : at::Tensor();
  const auto init = initial_state.defined() ? initial_state.to(at::kFloat).contiguous() : at::Tensor();
  if (x.scalar_type() == at::kBFloat16) {  // the no-grad forward's version 4 (scan_shapes_ok: all three)
    a.x_bf16 = static_cast<const uint16_t*>(x.data_ptr());
    a.B_bf16 = static_cast<const uint16_t*>(B.data_ptr()), a.C_bf16 = static_cast<const uint16_t*>(C.data_ptr());
  } else {
    a.x = x.data_ptr<float>(), a.B = B.data_ptr<float>(), a.C = C.data_ptr<float>();
  }
  a.x_row = xr, a.bc_row = br;
  a.dt = dtc.data_ptr<float>(), a.A = Af.data_ptr<float>();
  a.D = Df.defined() ? Df.data_ptr<float>() : nullptr;
  a.init = init.defined() ? init.data_ptr<float>() : nullptr;
  a.batch = b, a.L = l, a.H = int(h), a.G = int(B_in.size(2)), a.P = int(p), a.N = int(n), a.T = int(chunk);
  keep = {x, B, C, dtc, Af, Df, init};
  return a;
}

// Runs the forward; returns y (+ D·x), the final state and the workspace the backward reads.
// With y_given (the same y from an earlier pass, any float dtype): chunk_scan is skipped and y is
// a graph-only stand-in (ssd_scan.h): zero strides, no memory, no copy of y_given.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(kernels::SsdScanArgs& a, const at::Tensor& like,
                                                           const at::Tensor& y_given = at::Tensor()) {
  const auto opts = like.options().dtype(at::kFloat);
  auto fin = at::empty({a.batch, a.H, a.P, a.N}, opts);
  auto ws = at::empty({kernels::ssd_scan_workspace_floats(a)}, opts);
  a.final_state = fin.data_ptr<float>(), a.workspace = ws.data_ptr<float>();
  const c10::cuda::CUDAGuard guard(like.device());
  if (y_given.defined()) {
    DFSSM_CHECK(y_given.numel() == a.batch * a.L * a.H * a.P, "ssd_scan: the kept SSD output has shape ",
                y_given.sizes(), ", expected (", a.batch, ", ", a.L, ", ", a.H, ", ", a.P, ")");
    a.y = nullptr;
    DFSSM_ASSERT(kernels::ssd_scan_inputs_ok(a), "ssd_scan: shape or alignment the kernels do not take");
    fused::check_cuda(kernels::ssd_scan_fwd_workspace_cuda(a, c10::cuda::getCurrentCUDAStream()),
                      "ssd_scan_fwd_workspace_cuda");
    return {at::zeros({1}, opts).expand({a.batch, a.L, a.H, a.P}), fin, ws};
  }
  auto y = at::empty({a.batch, a.L, a.H, a.P}, opts);
  a.y = y.data_ptr<float>();
  DFSSM_ASSERT(kernels::ssd_scan_supported(a), "ssd_scan: shape or alignment the kernels do not take");
  fused::check_cuda(kernels::ssd_scan_fwd_cuda(a, c10::cuda::getCurrentCUDAStream()), "ssd_scan_fwd_cuda");
  return {y, fin, ws};
}

// The backward kernels over the forward's workspace `ws` and the output gradients: g's dx, dB
// and dC (and their row strides) are the caller's; the other gradients are allocated here.
struct OtherGrads {
  at::Tensor ddt, dA, dD, dinit;  // dD and dinit undefined where D or the initial state is absent
};
OtherGrads run_backward(kernels::SsdScanArgs& a, kernels::SsdScanGrads& g, const at::Tensor& ws,
                        const variable_list& grad_out, const at::Tensor& like) {
  a.workspace = ws.data_ptr<float>();
  const auto opts = like.options().dtype(at::kFloat);
  auto dy = grad_out[0].defined() ? grad_out[0].to(at::kFloat).contiguous() : at::zeros({a.batch, a.L, a.H, a.P}, opts);
  if (reinterpret_cast<uintptr_t>(dy.data_ptr()) % 16 != 0) dy = dy.clone();  // the kernels load float4
  const auto dfin = grad_out[1].defined() ? grad_out[1].to(at::kFloat).contiguous() : at::Tensor();
  OtherGrads o;
  o.ddt = at::empty({a.batch, a.L, a.H}, opts), o.dA = at::empty({a.H}, opts), o.dD = at::empty({a.H}, opts);
  if (a.init) o.dinit = at::empty({a.batch, a.H, a.P, a.N}, opts);
  auto bws = at::empty({kernels::ssd_scan_bwd_workspace_floats(a)}, opts);
  g.dy = dy.data_ptr<float>(), g.dfinal = dfin.defined() ? dfin.data_ptr<float>() : nullptr;
  g.ddt = o.ddt.data_ptr<float>(), g.dA = o.dA.data_ptr<float>(), g.dD = o.dD.data_ptr<float>();
  g.dinit = o.dinit.defined() ? o.dinit.data_ptr<float>() : nullptr, g.workspace = bws.data_ptr<float>();
  DFSSM_ASSERT(kernels::ssd_scan_bwd_supported(a, g), "ssd_scan backward: shape or alignment the kernels do not take");
  const c10::cuda::CUDAGuard guard(like.device());
  fused::check_cuda(kernels::ssd_scan_bwd_cuda(a, g, c10::cuda::getCurrentCUDAStream()), "ssd_scan_bwd_cuda");
  if (!a.D) o.dD = at::Tensor();
  return o;
}

// x (b,l,h,p), B and C (b,l,g,n): views of the conv output xBC (b, l, h·p + 2·g·n).
std::tuple<at::Tensor, at::Tensor, at::Tensor> xbc_views(const at::Tensor& xBC, int64_t h, int64_t p, int64_t g) {
  const int64_t b = xBC.size(0), l = xBC.size(1), gn = (xBC.size(2) - h * p) / 2;
  DFSSM_ASSERT(xBC.dim() == 3 && gn > 0 && gn % g == 0 && xBC.size(2) == h * p + 2 * gn, "ssd_scan: xBC shape");
  return {xBC.narrow(2, 0, h * p).view({b, l, h, p}), xBC.narrow(2, h * p, gn).view({b, l, g, gn / g}),
          xBC.narrow(2, h * p + gn, gn).view({b, l, g, gn / g})};
}

// The SSD with its gradients: the forward kernels, whose workspace (acs, the state entering each
// chunk, CB) is kept for the backward kernels.
// An absent D or initial state travels through apply() as an empty tensor: custom functions
// record every tensor argument's device, which an undefined tensor does not have.
at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) { return t.defined() ? t : at::empty({0}, like.options()); }
at::Tensor if_present(const at::Tensor& t) { return t.defined() && t.numel() > 0 ? t : at::Tensor(); }

struct SsdScanFn : public torch::autograd::Function<SsdScanFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                               const at::Tensor& B, const at::Tensor& C, const at::Tensor& D_in,
                               const at::Tensor& init_in, int64_t chunk, const at::Tensor& y_given) {
    const auto D = if_present(D_in), init = if_present(init_in);
    std::vector<at::Tensor> keep;
    auto a = make_args(x, dt, A, B, C, D, chunk, init, keep);
    auto [y, fin, ws] = run_forward(a, x, if_present(y_given));
    ctx->save_for_backward({x, dt, A, B, C, D, init, ws});
    ctx->saved_data["chunk"] = chunk;
    return {y, fin};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &x = s[0], &dt = s[1], &A = s[2], &B = s[3], &C = s[4], &ws = s[7];
    const auto D = if_present(s[5]), init = if_present(s[6]);
    std::vector<at::Tensor> keep;
    auto a = make_args(x, dt, A, B, C, D, ctx->saved_data["chunk"].toInt(), init, keep);
    const auto opts = x.options().dtype(at::kFloat);
    auto dx = at::empty({a.batch, a.L, a.H, a.P}, opts);
    auto dB = at::empty({a.batch, a.L, a.G, a.N}, opts), dC = at::empty_like(dB);
    kernels::SsdScanGrads g;
    g.dx = dx.data_ptr<float>(), g.dB = dB.data_ptr<float>(), g.dC = dC.data_ptr<float>();
    const auto o = run_backward(a, g, ws, grad_out, x);
    return {dx, o.ddt, o.dA.to(A.scalar_type()), dB, dC, D.defined() ? o.dD.to(D.scalar_type()) : at::Tensor(), o.dinit,
            at::Tensor(), at::Tensor()};  // chunk, y_given
  }
};

// The same function over the conv output xBC (b, l, h·p + 2·g·n) fp32, whose slices are x, B and
// C: the backward kernels write dx, dB and dC into one (b, l, h·p + 2·g·n) gradient, so that no
// split's backward concatenates three (0.28 ms per layer at 16 x 2048 on the H200).
struct SsdScanXbcFn : public torch::autograd::Function<SsdScanXbcFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& xBC, const at::Tensor& dt, const at::Tensor& A,
                               const at::Tensor& D_in, const at::Tensor& init_in, int64_t chunk,
                               const at::Tensor& y_given, int64_t headdim, int64_t ngroups) {
    const auto D = if_present(D_in), init = if_present(init_in);
    const auto [x, B, C] = xbc_views(xBC, dt.size(2), headdim, ngroups);
    std::vector<at::Tensor> keep;
    auto a = make_args(x, dt, A, B, C, D, chunk, init, keep);
    auto [y, fin, ws] = run_forward(a, x, if_present(y_given));
    ctx->save_for_backward({xBC, dt, A, D_in, init_in, ws});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["headdim"] = headdim;
    ctx->saved_data["ngroups"] = ngroups;
    return {y, fin};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto s = ctx->get_saved_variables();
    const auto &xBC = s[0], &dt = s[1], &A = s[2], &ws = s[5];
    const auto D = if_present(s[3]), init = if_present(s[4]);
    const auto [x, B, C] = xbc_views(xBC, dt.size(2), ctx->saved_data["headdim"].toInt(),
                                     ctx->saved_data["ngroups"].toInt());
    std::vector<at::Tensor> keep;
    auto a = make_args(x, dt, A, B, C, D, ctx->saved_data["chunk"].toInt(), init, keep);
    const int64_t hp = int64_t(a.H) * a.P, gn = int64_t(a.G) * a.N;
    auto dxbc = at::empty({a.batch, a.L, hp + 2 * gn}, xBC.options().dtype(at::kFloat));
    kernels::SsdScanGrads g;
    g.dx = dxbc.data_ptr<float>(), g.dB = g.dx + hp, g.dC = g.dB + gn;
    g.dx_row = g.dbc_row = hp + 2 * gn;
    const auto o = run_backward(a, g, ws, grad_out, x);
    return {dxbc, o.ddt, o.dA.to(A.scalar_type()), D.defined() ? o.dD.to(D.scalar_type()) : at::Tensor(), o.dinit,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};  // chunk, y_given, headdim, ngroups
  }
};
}  // namespace
#endif

std::pair<at::Tensor, at::Tensor> ssd_scan_fused(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                                 int64_t chunk, const at::Tensor& initial_state,
                                                 at::ScalarType y_dtype) {
#ifdef DFSSM_SSD_SCAN_BUILT
  DFSSM_ASSERT(y_dtype == at::kFloat || y_dtype == at::kBFloat16, "ssd_scan_fused: y in fp32 or bf16");
  std::vector<at::Tensor> keep;
  auto a = make_args(x, dt, A, B, C, D, chunk, initial_state, keep);
  if (kernels::ssd_scan_seq_enabled()) {  // the state kept on the chip; the workspace holds CB only
    const auto opts = x.options().dtype(at::kFloat);
    auto y = at::empty({a.batch, a.L, a.H, a.P}, opts.dtype(y_dtype)), fin = at::empty({a.batch, a.H, a.P, a.N}, opts);
    auto ws = at::empty({kernels::ssd_scan_seq_workspace_floats(a)}, opts);
    // (bf16: the kernel rounds y as it stores it, instead of a cast of an fp32 y afterwards.)
    if (y_dtype == at::kBFloat16) a.y_bf16 = y.data_ptr();
    else a.y = y.data_ptr<float>();
    a.final_state = fin.data_ptr<float>(), a.workspace = ws.data_ptr<float>();
    if (kernels::ssd_scan_seq_supported(a)) {
      const c10::cuda::CUDAGuard guard(x.device());
      fused::check_cuda(kernels::ssd_scan_fwd_seq_cuda(a, c10::cuda::getCurrentCUDAStream()), "ssd_scan_fwd_seq_cuda");
      return {y, fin};
    }
    a.y = nullptr, a.y_bf16 = nullptr;
  }
  DFSSM_ASSERT(!a.x_bf16, "ssd_scan_fused: bf16 x, B, C need the sequential kernel (ssd_scan_seq_supported)");
  auto [y, fin, ws] = run_forward(a, x);
  return {y_dtype == at::kFloat ? y : y.to(y_dtype), fin};
#else
  (void)x, (void)dt, (void)A, (void)B, (void)C, (void)D, (void)chunk, (void)initial_state, (void)y_dtype;
  DFSSM_ASSERT(false, "ssd_scan_fused: this build has no CUDA kernels");
  return {};
#endif
}

std::pair<at::Tensor, at::Tensor> ssd_scan_train(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                                 int64_t chunk, const at::Tensor& initial_state,
                                                 const at::Tensor& y_given) {
#ifdef DFSSM_SSD_SCAN_BUILT
  const auto out = SsdScanFn::apply(x, dt, A, B, C, or_empty(D, x), or_empty(initial_state, x), chunk,
                                    or_empty(y_given, x));
  return {out[0], out[1]};
#else
  (void)x, (void)dt, (void)A, (void)B, (void)C, (void)D, (void)chunk, (void)initial_state, (void)y_given;
  DFSSM_ASSERT(false, "ssd_scan_train: this build has no CUDA kernels");
  return {};
#endif
}

std::pair<at::Tensor, at::Tensor> ssd_scan_train_xbc(const at::Tensor& xBC, int64_t headdim, int64_t ngroups,
                                                     const at::Tensor& dt, const at::Tensor& A, const at::Tensor& D,
                                                     int64_t chunk, const at::Tensor& initial_state,
                                                     const at::Tensor& y_given) {
#ifdef DFSSM_SSD_SCAN_BUILT
  const auto out = SsdScanXbcFn::apply(xBC, dt, A, or_empty(D, xBC), or_empty(initial_state, xBC), chunk,
                                       or_empty(y_given, xBC), headdim, ngroups);
  return {out[0], out[1]};
#else
  (void)xBC, (void)headdim, (void)ngroups, (void)dt, (void)A, (void)D, (void)chunk, (void)initial_state, (void)y_given;
  DFSSM_ASSERT(false, "ssd_scan_train_xbc: this build has no CUDA kernels");
  return {};
#endif
}

}  // namespace dfssm
