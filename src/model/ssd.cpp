#include "model/ssd.h"

#include <limits>

#include "core/error.h"
#include "model/ssd_fused.h"

namespace dfssm {

at::Tensor segsum(const at::Tensor& x) {
  const int64_t T = x.size(-1);
  auto opts = x.options().dtype(at::kBool);
  // x[..., i] broadcast along a new last axis, masked strictly below the diagonal, then a
  // cumulative sum down the rows: no subtraction of large cumsums, so no cancellation.
  auto sizes = x.sizes().vec();
  sizes.push_back(T);
  auto xe = x.unsqueeze(-1).expand(sizes);
  auto strict = at::tril(at::ones({T, T}, opts), -1);
  auto cs = at::cumsum(xe.masked_fill(strict.logical_not(), 0), -2);
  auto lower = at::tril(at::ones({T, T}, opts), 0);
  return cs.masked_fill(lower.logical_not(), -std::numeric_limits<double>::infinity());
}

namespace {
// (b,l,g,n) -> (b,l,h,n): each group serves h/g consecutive heads.
at::Tensor groups_to_heads(const at::Tensor& t, int64_t nheads) {
  const int64_t g = t.size(2);
  return g == nheads ? t : t.repeat_interleave(nheads / g, 2);
}

void check_shapes(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& C, const at::Tensor& init) {
  DFSSM_ASSERT(x.dim() == 4 && dt.dim() == 3 && A.dim() == 1 && B.dim() == 4 && C.dim() == 4, "ssd: bad ranks");
  const int64_t b = x.size(0), l = x.size(1), h = x.size(2);
  DFSSM_ASSERT(dt.size(0) == b && dt.size(1) == l && dt.size(2) == h && A.size(0) == h, "ssd: dt/A shape");
  DFSSM_ASSERT(B.sizes() == C.sizes() && B.size(0) == b && B.size(1) == l && h % B.size(2) == 0, "ssd: B/C shape");
  DFSSM_ASSERT(!init.defined() || (init.dim() == 4 && init.size(0) == b && init.size(1) == h &&
                                   init.size(2) == x.size(3) && init.size(3) == B.size(3)),
               "ssd: initial state shape");
}
}  // namespace

std::pair<at::Tensor, at::Tensor> ssd_chunked(const at::Tensor& x_in, const at::Tensor& dt_in, const at::Tensor& A,
                                              const at::Tensor& B_in, const at::Tensor& C_in, int64_t chunk,
                                              const at::Tensor& initial_state) {
  check_shapes(x_in, dt_in, A, B_in, C_in, initial_state);
  const int64_t b = x_in.size(0), l = x_in.size(1), h = x_in.size(2), p = x_in.size(3), n = B_in.size(3);
  const int64_t nc = (l + chunk - 1) / chunk, pad = nc * chunk - l;
  auto padl = [&](const at::Tensor& t) {  // zero-pad the length axis (dim 1) up to nc*chunk
    if (pad == 0) return t;
    auto s = t.sizes().vec();
    s[1] = pad;
    return at::cat({t, at::zeros(s, t.options())}, 1);
  };
  const auto dt = padl(dt_in);
  const int64_t g = B_in.size(2), hg = h / g;  // heads per group: B and C are shared by hg heads
  // ssd_minimal's discretisation: X = x*dt, A = A*dt.
  const auto X = padl(x_in * dt_in.unsqueeze(-1)).view({b, nc, chunk, h, p});
  const auto Adt = (dt * A.view({1, 1, h})).view({b, nc, chunk, h}).permute({0, 3, 1, 2});  // (b,h,c,l)
  const auto Bg = padl(B_in).view({b, nc, chunk, g, n}).permute({0, 1, 3, 2, 4});          // (b,c,g,l,n)
  const auto Cg = padl(C_in).view({b, nc, chunk, g, n}).permute({0, 1, 3, 2, 4});          // (b,c,g,l,n)
  const auto A_cumsum = at::cumsum(Adt, -1);  // (b,h,c,l)

  // 1. Diagonal blocks: y_l = sum_{s<=l} (C_l·B_s) exp(sum_{s<k<=l} A_k) X_s.
  //    C·Bᵀ is computed once per group, not per head. The decay exp(A_cs[l] - A_cs[s]) is the
  //    form mamba_ssm's kernels use: one subtraction of in-chunk cumsums (fp32), no (l x l) cumsum.
  const auto CB = at::matmul(Cg, Bg.transpose(-1, -2));                                      // (b,c,g,l,s)
  const auto acs = A_cumsum.permute({0, 2, 1, 3});                                             // (b,c,h,l)
  at::Tensor Y_diag;                                                                           // (b,c,h,l,p)
  if (ssd_diag_fused_available(x_in, chunk, b * nc)) {
    Y_diag = ssd_diag_fused(acs, CB, X.permute({0, 1, 3, 2, 4}));  // the same math in two CUDA kernels
  } else {
    const auto causal = at::tril(at::ones({chunk, chunk}, acs.options().dtype(at::kBool)));
    const auto Lmat = at::exp((acs.unsqueeze(-1) - acs.unsqueeze(-2))
                                  .masked_fill(causal.logical_not(), -std::numeric_limits<double>::infinity()));
    const auto M = (Lmat.view({b, nc, g, hg, chunk, chunk}) * CB.unsqueeze(3)).view({b, nc, h, chunk, chunk});
    Y_diag = at::matmul(M, X.permute({0, 1, 3, 2, 4}));
  }

  // 2. Each chunk's own contribution to the state at its end, one matmul per group.
  const auto decay_states = at::exp(A_cumsum.narrow(-1, chunk - 1, 1) - A_cumsum);           // (b,h,c,l)
  const auto Xd = X * decay_states.permute({0, 2, 3, 1}).unsqueeze(-1);                        // (b,c,l,h,p)
  const auto states = at::matmul(Xd.reshape({b, nc, chunk, g, hg * p}).permute({0, 1, 3, 4, 2}), Bg)
                          .view({b, nc, h, p, n});                                             // (b,c,h,p,n)

  // 3. Recurrence over chunks: state entering chunk c = sum_{z<=c} decay(z->c) * states_z.
  const auto init = initial_state.defined() ? initial_state.to(x_in.scalar_type()).unsqueeze(1)
                                            : at::zeros({b, 1, h, p, n}, x_in.options());
  const auto all_states = at::cat({init, states}, 1);                                          // (b,c+1,h,p,n)
  const auto chunk_sums = at::constant_pad_nd(A_cumsum.select(-1, chunk - 1), {1, 0});        // (b,h,c+1)
  const auto decay_chunk = at::exp(segsum(chunk_sums));                                       // (b,h,c+1,c+1)
  const auto flat = all_states.permute({0, 2, 1, 3, 4}).reshape({b, h, nc + 1, p * n});
  const auto new_states = at::matmul(decay_chunk, flat).view({b, h, nc + 1, p, n});            // (b,h,c+1,p,n)
  const auto entering = new_states.narrow(2, 0, nc);                                          // (b,h,c,p,n)
  const auto final_state = new_states.select(2, nc);                                          // (b,h,p,n)

  // 4. Off-diagonal part: y_l += exp(A_cumsum_l) * C_l · state_entering, one matmul per group.
  const auto ent = entering.permute({0, 2, 1, 3, 4}).reshape({b, nc, g, hg * p, n});          // (b,c,g,hg*p,n)
  const auto Cs = at::matmul(Cg, ent.transpose(-1, -2))                                        // (b,c,g,l,hg*p)
                      .view({b, nc, g, chunk, hg, p})
                      .permute({0, 1, 3, 2, 4, 5})
                      .reshape({b, nc, chunk, h, p});                                          // (b,c,l,h,p)
  const auto Y_off = Cs * at::exp(A_cumsum).permute({0, 2, 3, 1}).unsqueeze(-1);               // (b,c,l,h,p)

  const auto Y = Y_diag.permute({0, 1, 3, 2, 4}) + Y_off;                                       // (b,c,l,h,p)
  return {Y.reshape({b, nc * chunk, h, p}).narrow(1, 0, l), final_state};
}

std::pair<at::Tensor, at::Tensor> ssd_sequential(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B, const at::Tensor& C,
                                                 const at::Tensor& initial_state) {
  check_shapes(x, dt, A, B, C, initial_state);
  const int64_t b = x.size(0), l = x.size(1), h = x.size(2), p = x.size(3), n = B.size(3);
  const auto Bh = groups_to_heads(B, h), Ch = groups_to_heads(C, h);
  auto state = initial_state.defined() ? initial_state.to(x.scalar_type()).clone() : at::zeros({b, h, p, n}, x.options());
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < l; ++t) {
    const auto dtt = dt.select(1, t);                                      // (b,h)
    const auto dA = at::exp(dtt * A.view({1, h})).view({b, h, 1, 1});
    const auto xt = (x.select(1, t) * dtt.unsqueeze(-1)).unsqueeze(-1);   // (b,h,p,1)
    state = state * dA + xt * Bh.select(1, t).unsqueeze(2);                // (b,h,p,n)
    ys.push_back((state * Ch.select(1, t).unsqueeze(2)).sum(-1));          // (b,h,p)
  }
  return {at::stack(ys, 1), state};
}

}  // namespace dfssm
