#include "distill/loss.h"

#include <torch/csrc/autograd/custom_function.h>

#include "core/error.h"
#include "model/fused_util.h"

#if defined(DFSSM_HAVE_CUDA) && __has_include(<c10/cuda/CUDAStream.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/lm_loss.h"
#define DFSSM_LOSS_FUSED_BUILT 1
#endif

namespace dfssm::distill {

namespace {
fused::Switch& loss_fused_switch() {
  static fused::Switch s("DFSSM_LOSS_FUSED");
  return s;
}
}  // namespace

void set_lm_loss_fused_enabled(bool on) { loss_fused_switch().set(on); }

namespace {
// The fused chunks' two gradient GEMMs write fp32 themselves (cuBLAS's bf16-in, fp32-out GEMM,
// ATen's out_dtype overloads): grad_h's rows in place, grad_w accumulated by the GEMM (beta = 1),
// where a bf16 product was rounded, cast to fp32 and added (two more passes over the 50k x 2048
// fp32 grad_w per chunk). DFSSM_LM_GRAD_F32OUT=0 restores that (A/B switch).
fused::Switch& f32out_switch() {
  static fused::Switch s("DFSSM_LM_GRAD_F32OUT");
  return s;
}
}  // namespace

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Runs the chunked forward and returns (loss, grad_h_s, grad_w_s) for a unit upstream gradient.
struct Chunked {
  at::Tensor loss, grad_h, grad_w;
};

#ifdef DFSSM_LOSS_FUSED_BUILT
// One chunk's logits, statistics and dz through the per-token kernel (kernels/cuda/lm_loss.h):
// the logits stay in the matmul dtype, and dz is written in it. *stats_out: the chunk's sums, fp64
// on the device (student CE, teacher CE, KL, top-1). false: not applicable here (the caller runs
// the ATen ops).
bool fused_chunk(const at::Tensor& hc, const at::Tensor& ws, const at::Tensor& htc, const at::Tensor& wt,
                 const at::Tensor& y, const LmLossOptions& o, int64_t N, bool teacher, bool want_grad,
                 at::Tensor* stats_out, at::Tensor* dz_out) {
  namespace k = dfssm::kernels;
  const auto md = o.matmul_dtype;
  const int64_t n = hc.size(0), V = ws.size(0);
  if (!loss_fused_switch().on() || !hc.is_cuda() || y.device() != hc.device() || V % 4 != 0) return false;
  // The logits' dtype is the matmul's result, which autocast may change (evaluation runs an fp32
  // md under bf16 autocast): the kernel reads, and dz takes, whatever dtype zs has.
  auto zs = at::matmul(hc, ws.t()).contiguous();
  if (zs.scalar_type() != at::kBFloat16) zs = zs.to(at::kFloat);
  const auto zt = teacher ? at::matmul(htc.to(md), wt.t()).to(zs.scalar_type()).contiguous() : at::Tensor();
  auto stats = at::empty({4, n}, hc.options().dtype(at::kFloat));
  const auto dz = want_grad ? at::empty({n, V}, zs.options()) : at::Tensor();
  const auto yc = y.contiguous();
  k::LmLossRowsArgs a;
  a.zs = zs.data_ptr(), a.zt = teacher ? zt.data_ptr() : nullptr, a.n = n, a.V = V, a.ld = V;
  a.dt = zs.scalar_type() == at::kBFloat16 ? k::LossDtype::bf16 : k::LossDtype::f32;
  a.y = yc.data_ptr<int64_t>(), a.alpha = float(o.alpha), a.T = float(o.temperature), a.N = N;
  a.dz = want_grad ? dz.data_ptr() : nullptr;
  float* st = stats.data_ptr<float>();
  a.ce_s = st, a.ce_t = st + n, a.kl = st + 2 * n, a.top1 = st + 3 * n;
  const c10::cuda::CUDAGuard guard(hc.device());
  fused::check_cuda(k::lm_loss_rows_cuda(a, c10::cuda::getCurrentCUDAStream()), "lm_loss_rows_cuda");
  *stats_out = stats.to(at::kDouble).sum(1);
  if (want_grad) *dz_out = dz;
  return true;
}
#else
bool fused_chunk(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 const LmLossOptions&, int64_t, bool, bool, at::Tensor*, at::Tensor*) {
  return false;
}
#endif

Chunked chunked_forward(const at::Tensor& h_s, const at::Tensor& w_s, const at::Tensor& h_t, const at::Tensor& w_t,
                        const TeacherTopK& topk, const at::Tensor& targets, const LmLossOptions& o, LmLossStats* st,
                        bool want_grad) {
  at::NoGradGuard ng;
  const int64_t N = h_s.size(0);
  const bool sparse = topk.defined();
  const bool teacher = o.alpha > 0 || h_t.defined() || sparse;
  const double T = o.temperature, a = o.alpha;
  const auto md = o.matmul_dtype;
  const auto ws = w_s.detach().to(md), hs = h_s.detach().to(md);
  const auto wt = teacher && !sparse ? w_t.detach().to(md) : at::Tensor();
  Chunked out;
  if (want_grad) {
    out.grad_h = at::empty(h_s.sizes(), h_s.options().dtype(at::kFloat));
    out.grad_w = at::zeros(w_s.sizes(), w_s.options().dtype(at::kFloat));
  }
  auto kl_sum = at::zeros({}, h_s.options().dtype(at::kDouble)), ce_sum = kl_sum.clone(), top1 = kl_sum.clone(),
       tce_sum = kl_sum.clone();
  for (int64_t i0 = 0; i0 < N; i0 += o.chunk) {
    const int64_t n = std::min(o.chunk, N - i0);
    const auto hc = hs.narrow(0, i0, n);
    if (at::Tensor d, dzf; !sparse && fused_chunk(hc, ws, teacher ? h_t.detach().narrow(0, i0, n) : at::Tensor(), wt,
                                                  targets.narrow(0, i0, n), o, N, teacher, want_grad, &d, &dzf)) {
      ce_sum += d[0];
      if (teacher) tce_sum += d[1], kl_sum += d[2], top1 += d[3];
      if (want_grad && f32out_switch().on() && ws.scalar_type() != at::kFloat) {
        auto gh = out.grad_h.narrow(0, i0, n);
        at::mm_out(gh, dzf, ws, at::kFloat);
        at::addmm_out(out.grad_w, out.grad_w, dzf.t(), hc, at::kFloat);
      } else if (want_grad) {
        out.grad_h.narrow(0, i0, n).copy_(at::matmul(dzf, ws).to(at::kFloat));
        out.grad_w += at::matmul(dzf.t(), hc).to(at::kFloat);
      }
      continue;
    }
    const auto y = targets.narrow(0, i0, n).unsqueeze(1);
    const auto zs = at::matmul(hc, ws.t()).to(at::kFloat);  // (n, V)
    const auto lps = at::log_softmax(zs, 1);
    ce_sum += -lps.gather(1, y).sum().to(at::kDouble);
    at::Tensor dz;
    if (want_grad) dz = (lps.exp().scatter_add(1, y, -at::ones({n, 1}, lps.options()))) * (1.0 - a);
    if (sparse) {  // the teacher's top-k, renormalised (loss.h)
      const auto idx = topk.idx.narrow(0, i0, n);
      const auto lq = at::log_softmax(topk.logp.narrow(0, i0, n).to(at::kFloat), 1);
      const auto q = lq.exp();
      const auto lpsT = T == 1.0 ? lps : at::log_softmax(zs / T, 1);
      tce_sum += topk.ce.narrow(0, i0, n).sum().to(at::kDouble);
      kl_sum += (q * (lq - lpsT.gather(1, idx))).sum().to(at::kDouble);
      top1 += (zs.argmax(1) == idx.select(1, 0)).sum().to(at::kDouble);
      if (want_grad && a > 0) dz += lpsT.exp().scatter_add(1, idx, -q) * (a * T);
    } else if (teacher) {
      const auto zt = at::matmul(h_t.detach().narrow(0, i0, n).to(md), wt.t()).to(at::kFloat);
      const auto lpt1 = at::log_softmax(zt, 1);
      tce_sum += -lpt1.gather(1, y).sum().to(at::kDouble);
      const auto lpt = T == 1.0 ? lpt1 : at::log_softmax(zt / T, 1);
      const auto lpsT = T == 1.0 ? lps : at::log_softmax(zs / T, 1);
      const auto pt = lpt.exp();
      kl_sum += (pt * (lpt - lpsT)).sum().to(at::kDouble);
      top1 += (zs.argmax(1) == zt.argmax(1)).sum().to(at::kDouble);
      if (want_grad && a > 0) dz += (lpsT.exp() - pt) * (a * T);
    }
    if (want_grad) {
      dz /= double(N);
      out.grad_h.narrow(0, i0, n).copy_(at::matmul(dz.to(md), ws).to(at::kFloat));
      out.grad_w += at::matmul(dz.t().to(md), hc).to(at::kFloat);
    }
  }
  if (o.defer_stats) {  // the same arithmetic on the device (fp64, then the loss in fp32)
    const auto zero = at::zeros({}, kl_sum.options());
    const auto kl = teacher ? kl_sum / double(N) : zero, ce = ce_sum / double(N);
    if (st) {
      st->sums = at::stack({kl, ce, teacher ? top1 / double(N) : zero, teacher ? tce_sum / double(N) : zero});
      st->tokens = N;
    }
    out.loss = (kl * (a * T * T) + ce * (1.0 - a)).to(at::kFloat);
    return out;
  }
  const double kl = kl_sum.item<double>() / double(N), ce = ce_sum.item<double>() / double(N);
  if (st) {
    st->kl = teacher ? kl : 0;
    st->ce = ce;
    st->top1 = teacher ? top1.item<double>() / double(N) : 0;
    st->teacher_ce = teacher ? tce_sum.item<double>() / double(N) : 0;
    st->tokens = N;
  }
  out.loss = at::full({}, a * T * T * (teacher ? kl : 0.0) + (1.0 - a) * ce, h_s.options().dtype(at::kFloat));
  return out;
}

struct LmLossFn : public torch::autograd::Function<LmLossFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h_s, const at::Tensor& w_s, const at::Tensor& h_t,
                            const at::Tensor& w_t, const at::Tensor& tk_idx, const at::Tensor& tk_logp,
                            const at::Tensor& tk_ce, const at::Tensor& targets, double alpha, double temperature,
                            int64_t chunk, int64_t matmul_dtype, int64_t stats_addr, bool defer) {
    LmLossOptions o{alpha, temperature, chunk, at::ScalarType(matmul_dtype), defer};
    const auto ht = h_t.numel() ? h_t : at::Tensor(), wt = w_t.numel() ? w_t : at::Tensor();
    TeacherTopK tk;
    if (tk_idx.numel()) tk = {tk_idx, tk_logp, tk_ce};
    auto r = chunked_forward(h_s, w_s, ht, wt, tk, targets, o, reinterpret_cast<LmLossStats*>(stats_addr), true);
    ctx->save_for_backward({r.grad_h, r.grad_w});
    ctx->saved_data["h_dtype"] = int64_t(h_s.scalar_type());
    ctx->saved_data["w_dtype"] = int64_t(w_s.scalar_type());
    return r.loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    const auto saved = ctx->get_saved_variables();
    const auto go = g[0].to(at::kFloat);
    const auto hd = at::ScalarType(ctx->saved_data["h_dtype"].toInt());
    const auto wd = at::ScalarType(ctx->saved_data["w_dtype"].toInt());
    return {(saved[0] * go).to(hd), (saved[1] * go).to(wd), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

namespace {
at::Tensor lm_loss_impl(const at::Tensor& h_s, const at::Tensor& w_s, const at::Tensor& h_t, const at::Tensor& w_t,
                        const TeacherTopK& tk, const at::Tensor& targets, const LmLossOptions& opt, LmLossStats* stats) {
  DFSSM_ASSERT(h_s.dim() == 2 && w_s.dim() == 2 && h_s.size(1) == w_s.size(1), "lm_loss: bad student shapes");
  DFSSM_ASSERT(targets.dim() == 1 && targets.size(0) == h_s.size(0), "lm_loss: targets do not match tokens");
  DFSSM_ASSERT(opt.alpha == 0 || (h_t.defined() && w_t.defined()) || tk.defined(), "lm_loss: alpha > 0 needs the teacher");
  DFSSM_ASSERT(!h_t.defined() || (h_t.size(0) == h_s.size(0) && w_t.size(0) == w_s.size(0)),
               "lm_loss: teacher and student disagree on tokens or vocabulary");
  DFSSM_ASSERT(!tk.defined() || (tk.idx.dim() == 2 && tk.idx.size(0) == h_s.size(0) && tk.logp.sizes() == tk.idx.sizes() &&
                                 tk.ce.size(0) == h_s.size(0)),
               "lm_loss: the teacher's top-k does not match the tokens");
  DFSSM_ASSERT(opt.chunk >= 1, "lm_loss: chunk must be >= 1");
  if (!h_s.requires_grad() && !w_s.requires_grad()) {  // evaluation: no graph
    return chunked_forward(h_s, w_s, h_t, w_t, tk, targets, opt, stats, false).loss;
  }
  // Autograd functions cannot take undefined tensors: an empty tensor stands for "none".
  const auto none = at::empty({0}, h_s.options());
  auto def = [&](const at::Tensor& t) { return t.defined() ? t : none; };
  return LmLossFn::apply(h_s, w_s, def(h_t), def(w_t), def(tk.idx), def(tk.logp), def(tk.ce), targets, opt.alpha,
                         opt.temperature, opt.chunk, int64_t(opt.matmul_dtype),
                         int64_t(reinterpret_cast<intptr_t>(stats)), opt.defer_stats);
}
}  // namespace

at::Tensor lm_loss(const at::Tensor& h_s, const at::Tensor& w_s, const at::Tensor& h_t, const at::Tensor& w_t,
                   const at::Tensor& targets, const LmLossOptions& opt, LmLossStats* stats) {
  return lm_loss_impl(h_s, w_s, h_t, w_t, TeacherTopK{}, targets, opt, stats);
}

at::Tensor lm_loss(const at::Tensor& h_s, const at::Tensor& w_s, const TeacherTopK& topk, const at::Tensor& targets,
                   const LmLossOptions& opt, LmLossStats* stats) {
  return lm_loss_impl(h_s, w_s, at::Tensor(), at::Tensor(), topk, targets, opt, stats);
}

at::Tensor lm_loss_reference(const at::Tensor& h_s, const at::Tensor& w_s, const at::Tensor& h_t,
                             const at::Tensor& w_t, const at::Tensor& targets, double alpha, double temperature) {
  const auto zs = at::matmul(h_s.to(at::kFloat), w_s.to(at::kFloat).t());
  auto loss = at::nll_loss(at::log_softmax(zs, 1), targets) * (1.0 - alpha);
  if (alpha > 0) {
    const auto zt = at::matmul(h_t.to(at::kFloat), w_t.to(at::kFloat).t());
    const auto lpt = at::log_softmax(zt / temperature, 1);
    const auto kl = (lpt.exp() * (lpt - at::log_softmax(zs / temperature, 1))).sum(1).mean();
    loss = loss + kl * (alpha * temperature * temperature);
  }
  return loss;
}

at::Tensor hidden_mse(const std::vector<at::Tensor>& student, const std::vector<at::Tensor>& teacher,
                      const std::vector<bool>& layers) {
  DFSSM_ASSERT(student.size() == teacher.size() && student.size() == layers.size(), "hidden_mse: ", student.size(),
               " student and ", teacher.size(), " teacher streams for ", layers.size(), " layers");
  auto norm = [](const at::Tensor& r) {
    const auto x = r.to(at::kFloat);
    return x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-6);
  };
  at::Tensor sum;
  int64_t n = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i]) continue;
    const auto t = (norm(student[i]) - norm(teacher[i].detach())).pow(2).mean();
    sum = sum.defined() ? sum + t : t;
    ++n;
  }
  DFSSM_ASSERT(n > 0, "hidden_mse: no layer selected");
  return sum / double(n);
}

TeacherTopK teacher_topk(const at::Tensor& h_t, const at::Tensor& w_t, const at::Tensor& targets, double T, int64_t k,
                         int64_t chunk, at::ScalarType md) {
  at::NoGradGuard ng;
  const int64_t N = h_t.size(0), V = w_t.size(0);
  DFSSM_CHECK(k >= 1 && k <= V, "teacher cache: k = ", k, " must be in [1, ", V, "] (the padded vocabulary)");
  TeacherTopK out;
  out.idx = at::empty({N, k}, h_t.options().dtype(at::kLong));
  out.logp = at::empty({N, k}, h_t.options().dtype(at::kFloat));
  out.ce = at::empty({N}, h_t.options().dtype(at::kFloat));
  const auto wt = w_t.detach().to(md);
  for (int64_t i0 = 0; i0 < N; i0 += chunk) {
    const int64_t n = std::min(chunk, N - i0);
    const auto zt = at::matmul(h_t.detach().narrow(0, i0, n).to(md), wt.t()).to(at::kFloat);
    const auto lp1 = at::log_softmax(zt, 1);
    out.ce.narrow(0, i0, n).copy_(-lp1.gather(1, targets.narrow(0, i0, n).unsqueeze(1)).squeeze(1));
    const auto lpT = T == 1.0 ? lp1 : at::log_softmax(zt / T, 1);
    const auto top = at::topk(lpT, k, 1, /*largest=*/true, /*sorted=*/true);
    out.logp.narrow(0, i0, n).copy_(std::get<0>(top));
    out.idx.narrow(0, i0, n).copy_(std::get<1>(top));
  }
  return out;
}

}  // namespace dfssm::distill
