#include "kernels/cpu/ssd_scan_ref.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace dfssm::kernels {

void ssd_scan_fwd_ref(const SsdScanArgs& a) {
  DFSSM_ASSERT(a.H % a.G == 0 && a.T > 0 && a.P > 0 && a.N > 0, "ssd_scan_fwd_ref: bad shape");
  const int64_t L = a.L, nc = a.chunks(), P = a.P, N = a.N, T = a.T;
  auto xv = [&](int64_t b, int64_t l, int h, int64_t p) { return double(a.x[(b * L + l) * a.x_row + h * P + p]); };
  auto Bv = [&](int64_t b, int64_t l, int g, int64_t n) { return double(a.B[(b * L + l) * a.bc_row + g * N + n]); };
  auto Cv = [&](int64_t b, int64_t l, int g, int64_t n) { return double(a.C[(b * L + l) * a.bc_row + g * N + n]); };
  std::vector<double> S(static_cast<size_t>(P * N)), acs(static_cast<size_t>(T)), cb(static_cast<size_t>(T * T));
  for (int64_t b = 0; b < a.batch; ++b)
    for (int h = 0; h < a.H; ++h) {
      const int g = h / (a.H / a.G);
      const double A = a.A[h], D = a.D ? double(a.D[h]) : 0.0;
      for (int64_t e = 0; e < P * N; ++e) S[size_t(e)] = a.init ? double(a.init[(b * a.H + h) * P * N + e]) : 0.0;
      auto dtv = [&](int64_t l) { return l < L ? double(a.dt[(b * L + l) * a.H + h]) : 0.0; };
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t l0 = c * T, n_in = std::min(T, L - l0);  // positions of this chunk inside L
        double run = 0;
        for (int64_t i = 0; i < T; ++i) acs[size_t(i)] = (run += A * dtv(l0 + i));
        for (int64_t i = 0; i < n_in; ++i)
          for (int64_t s = 0; s <= i; ++s) {
            double d = 0;
            for (int64_t n = 0; n < N; ++n) d += Cv(b, l0 + i, g, n) * Bv(b, l0 + s, g, n);
            cb[size_t(i * T + s)] = d;
          }
        // Output: intra-chunk term, the entering state's term, the D skip.
        for (int64_t i = 0; i < n_in; ++i)
          for (int64_t p = 0; p < P; ++p) {
            double y = 0;
            for (int64_t s = 0; s <= i; ++s)
              y += std::exp(acs[size_t(i)] - acs[size_t(s)]) * cb[size_t(i * T + s)] * dtv(l0 + s) * xv(b, l0 + s, h, p);
            double off = 0;
            for (int64_t n = 0; n < N; ++n) off += S[size_t(p * N + n)] * Cv(b, l0 + i, g, n);
            y += std::exp(acs[size_t(i)]) * off + D * xv(b, l0 + i, h, p);
            a.y[((b * L + l0 + i) * a.H + h) * P + p] = float(y);
          }
        // The state after the chunk.
        const double last = acs[size_t(T - 1)];
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) {
            double add = 0;
            for (int64_t i = 0; i < n_in; ++i)
              add += std::exp(last - acs[size_t(i)]) * dtv(l0 + i) * xv(b, l0 + i, h, p) * Bv(b, l0 + i, g, n);
            S[size_t(p * N + n)] = std::exp(last) * S[size_t(p * N + n)] + add;
          }
      }
      for (int64_t e = 0; e < P * N; ++e) a.final_state[(b * a.H + h) * P * N + e] = float(S[size_t(e)]);
    }
}

}  // namespace dfssm::kernels
