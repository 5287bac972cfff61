#include "model/ssd_scan.h"

#include <c10/core/GradMode.h>

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/ssd_scan.h"
#define DFSSM_SSD_SCAN_BUILT 1
#endif

namespace dfssm {

namespace {
fused::Switch& scan_switch() {
  static fused::Switch s("DFSSM_SSD_SCAN", /*default_on=*/true);
  return s;
}

bool needs_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }

// (b, l, k, m) as rows of k*m floats (fused::rows_view: read in place when it can), made
// contiguous when the kernels' 16-byte alignment does not hold. Returns the tensor to read and
// its row stride in floats.
at::Tensor rows_of(const at::Tensor& t, int64_t* row) {
  auto r = fused::rows_view(t.flatten(2), row);
  if (*row % 4 != 0 || reinterpret_cast<uintptr_t>(r.data_ptr()) % 16 != 0) r = r.contiguous(), *row = r.stride(1);
  return r;
}
}  // namespace

void set_ssd_scan_enabled(bool on) { scan_switch().set(on); }

bool ssd_scan_fused_available(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& C, const at::Tensor& D, int64_t chunk) {
#ifdef DFSSM_SSD_SCAN_BUILT
  if (!scan_switch().on() || !x.is_cuda() || x.dim() != 4 || B.dim() != 4) return false;
  if (c10::GradMode::is_enabled() &&
      (needs_grad(x) || needs_grad(dt) || needs_grad(A) || needs_grad(B) || needs_grad(C) || needs_grad(D)))
    return false;
  for (const auto* t : {&x, &dt, &B, &C})
    if (t->scalar_type() != at::kFloat) return false;
  return x.size(3) == 64 && B.size(3) == 128 && (chunk == 64 || chunk == 128 || chunk == 256);
#else
  (void)x, (void)dt, (void)A, (void)B, (void)C, (void)D, (void)chunk;
  return false;
#endif
}

std::pair<at::Tensor, at::Tensor> ssd_scan_fused(const at::Tensor& x_in, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B_in, const at::Tensor& C_in, const at::Tensor& D,
                                                 int64_t chunk, const at::Tensor& initial_state) {
#ifdef DFSSM_SSD_SCAN_BUILT
  const int64_t b = x_in.size(0), l = x_in.size(1), h = x_in.size(2), p = x_in.size(3), n = B_in.size(3);
  DFSSM_ASSERT(B_in.sizes() == C_in.sizes() && B_in.size(0) == b && B_in.size(1) == l && dt.size(0) == b &&
                   dt.size(1) == l && dt.size(2) == h && A.numel() == h && (!D.defined() || D.numel() == h),
               "ssd_scan_fused: shapes");
  kernels::SsdScanArgs a;
  int64_t xr = 0, br = 0, cr = 0;
  const auto x = rows_of(x_in, &xr);
  auto B = rows_of(B_in, &br), C = rows_of(C_in, &cr);
  if (br != cr) B = B.contiguous(), C = C.contiguous(), br = cr = B.stride(1);
  const auto dtc = dt.contiguous(), Af = A.to(at::kFloat).contiguous();
  const auto Df = D.defined() ? D.to(at::kFloat).contiguous() : at::Tensor();
  const auto init = initial_state.defined() ? initial_state.to(at::kFloat).contiguous() : at::Tensor();
  a.x = x.data_ptr<float>(), a.x_row = xr;
  a.dt = dtc.data_ptr<float>(), a.A = Af.data_ptr<float>();
  a.B = B.data_ptr<float>(), a.C = C.data_ptr<float>(), a.bc_row = br;
  a.D = Df.defined() ? Df.data_ptr<float>() : nullptr;
  a.init = init.defined() ? init.data_ptr<float>() : nullptr;
  a.batch = b, a.L = l, a.H = int(h), a.G = int(B_in.size(2)), a.P = int(p), a.N = int(n), a.T = int(chunk);
  auto y = at::empty({b, l, h, p}, x.options().dtype(at::kFloat));
  auto fin = at::empty({b, h, p, n}, x.options().dtype(at::kFloat));
  auto ws = at::empty({kernels::ssd_scan_workspace_floats(a)}, x.options().dtype(at::kFloat));
  a.y = y.data_ptr<float>(), a.final_state = fin.data_ptr<float>(), a.workspace = ws.data_ptr<float>();
  DFSSM_ASSERT(kernels::ssd_scan_supported(a), "ssd_scan_fused: shape or alignment the kernels do not take");
  const c10::cuda::CUDAGuard guard(x.device());
  fused::check_cuda(kernels::ssd_scan_fwd_cuda(a, c10::cuda::getCurrentCUDAStream()), "ssd_scan_fwd_cuda");
  return {y, fin};
#else
  (void)x_in, (void)dt, (void)A, (void)B_in, (void)C_in, (void)D, (void)chunk, (void)initial_state;
  DFSSM_ASSERT(false, "ssd_scan_fused: this build has no CUDA kernels");
  return {};
#endif
}

}  // namespace dfssm
