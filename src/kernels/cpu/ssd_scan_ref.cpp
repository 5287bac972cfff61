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

namespace dfssm::kernels {

namespace {
// One (batch, head) of the backward pass. Notation per chunk: acs the in-chunk cumulative sum of
// A·dt, e_l = exp(acs_l), Λ = acs_{T-1}, S the state entering the chunk, M[l,s] =
// exp(acs_l - acs_s)·(C_l·B_s) for s <= l, w_l = exp(Λ - acs_l)·dt_l.
struct HeadBwd {
  const SsdScanArgs& a;
  const SsdScanGrads& g;
  int64_t b;
  int h, gi;
  int64_t L, P, N, T, nc;

  double x(int64_t l, int64_t p) const { return l < L ? double(a.x[(b * L + l) * a.x_row + h * P + p]) : 0.0; }
  double B(int64_t l, int64_t n) const { return l < L ? double(a.B[(b * L + l) * a.bc_row + gi * N + n]) : 0.0; }
  double C(int64_t l, int64_t n) const { return l < L ? double(a.C[(b * L + l) * a.bc_row + gi * N + n]) : 0.0; }
  double dt(int64_t l) const { return l < L ? double(a.dt[(b * L + l) * a.H + h]) : 0.0; }
  double dy(int64_t l, int64_t p) const { return l < L ? double(g.dy[((b * L + l) * a.H + h) * P + p]) : 0.0; }

  void run(std::vector<double>& dx, std::vector<double>& ddt, std::vector<double>& dB, std::vector<double>& dC,
           double& dA, double& dD) const {
    const double A = a.A[h], D = a.D ? double(a.D[h]) : 0.0;
    // Forward recomputation: acs of every chunk and the state entering it.
    std::vector<double> acs(size_t(nc * T)), S(size_t((nc + 1) * P * N), 0.0);
    for (int64_t e = 0; e < P * N; ++e) S[size_t(e)] = a.init ? double(a.init[(b * a.H + h) * P * N + e]) : 0.0;
    for (int64_t c = 0; c < nc; ++c) {
      double run = 0;
      for (int64_t i = 0; i < T; ++i) acs[size_t(c * T + i)] = (run += A * dt(c * T + i));
      const double lam = acs[size_t(c * T + T - 1)];
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) {
          double add = 0;
          for (int64_t i = 0; i < T; ++i)
            add += std::exp(lam - acs[size_t(c * T + i)]) * dt(c * T + i) * x(c * T + i, p) * B(c * T + i, n);
          S[size_t(((c + 1) * P + p) * N + n)] = std::exp(lam) * S[size_t((c * P + p) * N + n)] + add;
        }
    }
    // dS: the gradient of the state after the current chunk, walking the chunks backwards.
    std::vector<double> dS(static_cast<size_t>(P * N), 0.0), dacs(static_cast<size_t>(T));
    if (g.dfinal)
      for (int64_t e = 0; e < P * N; ++e) dS[size_t(e)] = g.dfinal[(b * a.H + h) * P * N + e];
    for (int64_t c = nc - 1; c >= 0; --c) {
      const int64_t l0 = c * T;
      const double* ac = acs.data() + c * T;
      const double lam = ac[T - 1];
      const double* Sc = S.data() + c * P * N;
      std::fill(dacs.begin(), dacs.end(), 0.0);
      // The state update S' = exp(Λ)·S + Σ_l w_l x_l ⊗ B_l.
      double dlam = 0;
      for (int64_t e = 0; e < P * N; ++e) dlam += dS[size_t(e)] * std::exp(lam) * Sc[e];
      for (int64_t i = 0; i < T; ++i) {
        const double w = std::exp(lam - ac[i]) * dt(l0 + i);
        double dw = 0;
        for (int64_t p = 0; p < P; ++p) {
          double bz = 0;  // Σ_n dS[p,n]·B[l,n]
          for (int64_t n = 0; n < N; ++n) bz += dS[size_t(p * N + n)] * B(l0 + i, n);
          if (l0 + i < L) dx[size_t((l0 + i) * P + p)] += w * bz;
          dw += x(l0 + i, p) * bz;
        }
        if (l0 + i < L)
          for (int64_t n = 0; n < N; ++n) {
            double xz = 0;
            for (int64_t p = 0; p < P; ++p) xz += x(l0 + i, p) * dS[size_t(p * N + n)];
            dB[size_t((l0 + i) * N + n)] += w * xz;
          }
        if (l0 + i < L) ddt[size_t(l0 + i)] += dw * std::exp(lam - ac[i]);
        dlam += dw * w;
        dacs[size_t(i)] -= dw * w;
      }
      // The output y_l = Σ_{s<=l} M[l,s]·dt_s·x_s + e_l·S·C_l + D·x_l.
      std::vector<double> dSc(size_t(P * N), 0.0);
      for (int64_t i = 0; i < T && l0 + i < L; ++i) {
        const double el = std::exp(ac[i]);
        for (int64_t p = 0; p < P; ++p) {
          const double d = dy(l0 + i, p);
          dD += d * x(l0 + i, p);
          dx[size_t((l0 + i) * P + p)] += D * d;
          double yoff = 0;
          for (int64_t n = 0; n < N; ++n) {
            yoff += Sc[p * N + n] * C(l0 + i, n);
            dSc[size_t(p * N + n)] += el * d * C(l0 + i, n);
            dC[size_t((l0 + i) * N + n)] += el * d * Sc[p * N + n];
          }
          dacs[size_t(i)] += d * el * yoff;
        }
        for (int64_t s = 0; s <= i; ++s) {
          double cb = 0;
          for (int64_t n = 0; n < N; ++n) cb += C(l0 + i, n) * B(l0 + s, n);
          const double L_ = std::exp(ac[i] - ac[s]);
          double gxs = 0;  // Σ_p dy[l,p]·x[s,p]
          for (int64_t p = 0; p < P; ++p) {
            gxs += dy(l0 + i, p) * x(l0 + s, p);
            dx[size_t((l0 + s) * P + p)] += L_ * cb * dt(l0 + s) * dy(l0 + i, p);
          }
          ddt[size_t(l0 + s)] += L_ * cb * gxs;
          const double dcb = L_ * dt(l0 + s) * gxs;  // d(C_l·B_s)
          for (int64_t n = 0; n < N; ++n) {
            dC[size_t((l0 + i) * N + n)] += dcb * B(l0 + s, n);
            dB[size_t((l0 + s) * N + n)] += dcb * C(l0 + i, n);
          }
          const double gm = L_ * cb * dt(l0 + s) * gxs;  // d exp(acs_l - acs_s) · its value
          dacs[size_t(i)] += gm;
          dacs[size_t(s)] -= gm;
        }
      }
      // acs_l = Σ_{k<=l} A·dt_k; Λ = acs_{T-1}.
      dacs[size_t(T - 1)] += dlam;
      double rev = 0;
      for (int64_t k = T - 1; k >= 0; --k) {
        rev += dacs[size_t(k)];
        if (l0 + k < L) ddt[size_t(l0 + k)] += A * rev;
        dA += dt(l0 + k) * rev;
      }
      for (int64_t e = 0; e < P * N; ++e) dS[size_t(e)] = dSc[size_t(e)] + std::exp(lam) * dS[size_t(e)];
    }
    if (g.dinit)
      for (int64_t e = 0; e < P * N; ++e) g.dinit[(b * a.H + h) * P * N + e] = float(dS[size_t(e)]);
  }
};
}  // namespace

void ssd_scan_bwd_ref(const SsdScanArgs& a, const SsdScanGrads& g) {
  DFSSM_ASSERT(a.H % a.G == 0 && a.T > 0 && a.P > 0 && a.N > 0 && g.dy, "ssd_scan_bwd_ref: bad arguments");
  const int64_t L = a.L, P = a.P, N = a.N, T = a.T, nc = a.chunks(), H = a.H, G = a.G;
  std::vector<double> dB(size_t(a.batch * L * G * N), 0.0), dC(dB.size(), 0.0), dA(size_t(H), 0.0), dD(size_t(H), 0.0);
  for (int64_t b = 0; b < a.batch; ++b)
    for (int h = 0; h < a.H; ++h) {
      const int gi = h / int(H / G);
      HeadBwd hb{a, g, b, h, gi, L, P, N, T, nc};
      std::vector<double> dx(size_t(L * P), 0.0), ddt(size_t(L), 0.0), dBh(size_t(L * N), 0.0), dCh(dBh.size(), 0.0);
      hb.run(dx, ddt, dBh, dCh, dA[size_t(h)], dD[size_t(h)]);
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t p = 0; p < P; ++p) g.dx[(b * L + l) * g.dx_stride(a) + h * P + p] = float(dx[size_t(l * P + p)]);
        g.ddt[(b * L + l) * H + h] = float(ddt[size_t(l)]);
        for (int64_t n = 0; n < N; ++n) {
          dB[size_t(((b * L + l) * G + gi) * N + n)] += dBh[size_t(l * N + n)];
          dC[size_t(((b * L + l) * G + gi) * N + n)] += dCh[size_t(l * N + n)];
        }
      }
    }
  for (int64_t r = 0; r < a.batch * L; ++r)  // (batch, l) rows, dbc_stride apart
    for (int64_t i = 0; i < G * N; ++i) {
      g.dB[r * g.dbc_stride(a) + i] = float(dB[size_t(r * G * N + i)]);
      g.dC[r * g.dbc_stride(a) + i] = float(dC[size_t(r * G * N + i)]);
    }
  for (int64_t h = 0; h < H; ++h) {
    g.dA[h] = float(dA[size_t(h)]);
    if (g.dD) g.dD[h] = float(dD[size_t(h)]);
  }
}

}  // namespace dfssm::kernels
