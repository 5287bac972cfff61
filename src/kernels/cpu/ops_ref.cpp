// Scalar reference kernels (see ops.h for each op's definition). Dot products accumulate in
// fp64, so these are the exact values the fast paths are compared against; the scalar ISA path
// of the runtime uses them as they are.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cpu/ops.h"

namespace dfssm::kernels::cpu {

float softplus20(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

void sign_gemm_ref(const SignGemmArgs& a) {
  for (int64_t t = 0; t < a.T; ++t) {
    const float* x = a.xb + t * a.ldx;
    for (int64_t r = a.r0; r < a.r1; ++r) {
      const uint8_t* row = a.codes + r * a.row_bytes;
      double acc = 0;
      for (int64_t c = 0; c < a.C; ++c) acc += ((row[c >> 3] >> (c & 7)) & 1) ? double(x[c]) : -double(x[c]);
      a.y[t * a.ldy + r] = float(double(a.a[r]) * acc);
    }
  }
}

void sign_gemm_i8_ref(const SignGemmI8Args& a) {
  for (int64_t t = 0; t < a.T; ++t) {
    const int8_t* x = a.xq + t * a.ldx;
    for (int64_t r = a.r0; r < a.r1; ++r) {
      const uint8_t* row = a.codes + r * a.row_bytes;
      int64_t acc = 0;
      for (int64_t c = 0; c < a.C; ++c) acc += ((row[c >> 3] >> (c & 7)) & 1) ? x[c] : -x[c];
      a.y[t * a.ldy + r] = a.a[r] * (a.xs[t] * float(acc));
    }
  }
}

void quantize_rows_i8_ref(const QuantizeI8Args& a) {
  for (int64_t t = 0; t < a.T; ++t) {
    const float* x = a.x + t * a.ldx;
    float m = 0;
    for (int64_t c = 0; c < a.C; ++c) m = std::fmax(m, std::fabs(x[c]));
    const float s = m > 0 ? m / 127.f : 1.f;
    const float inv = 1.f / s;
    int32_t sum = 0;
    for (int64_t c = 0; c < a.C; ++c) {
      const float q = std::nearbyint(x[c] * inv);  // default rounding mode: half to even
      const int8_t v = int8_t(std::fmax(-127.f, std::fmin(127.f, q)));
      a.xq[t * a.ldq + c] = v;
      sum += v;
    }
    a.xs[t] = s;
    a.xsum[t] = sum;
  }
}

void sign_gemm_i16_ref(const SignGemmI16Args& a) {
  for (int64_t t = 0; t < a.T; ++t) {
    const int16_t* x = a.xq + t * a.ldx;
    for (int64_t r = a.r0; r < a.r1; ++r) {
      const uint8_t* row = a.codes + r * a.row_bytes;
      int64_t acc = 0;
      for (int64_t c = 0; c < a.C; ++c) acc += ((row[c >> 3] >> (c & 7)) & 1) ? x[c] : -x[c];
      a.y[t * a.ldy + r] = a.a[r] * (a.xs[t] * float(acc));
    }
  }
}

void quantize_rows_i16_ref(const QuantizeI16Args& a) {
  for (int64_t t = 0; t < a.T; ++t) {
    const float* x = a.x + t * a.ldx;
    float m = 0;
    for (int64_t c = 0; c < a.C; ++c) m = std::fmax(m, std::fabs(x[c]));
    const float s = m > 0 ? m / 32767.f : 1.f;
    const float inv = 1.f / s;
    int32_t sum = 0;
    for (int64_t c = 0; c < a.C; ++c) {
      const float q = std::nearbyint(x[c] * inv);
      const int16_t v = int16_t(std::fmax(-32767.f, std::fmin(32767.f, q)));
      a.xq[t * a.ldq + c] = v;
      sum += v;
    }
    for (int64_t c = a.C; c < a.ldq; ++c) a.xq[t * a.ldq + c] = 0;
    a.xs[t] = s;
    a.xsum[t] = sum;
  }
}

void quantize_planes_ref(const float* u, int64_t C, uint16_t* planes, int8_t* exps) {
  DFSSM_ASSERT(C % 16 == 0, "quantize_planes_ref: C = ", C, " is not a multiple of 16");
  for (int64_t G = 0; G < C / 16; ++G) {
    float m = 0.f;
    for (int i = 0; i < 16; ++i) m = std::fmax(m, std::fabs(u[G * 16 + i]));
    int e = -112;  // the float's exponent field: |u| < 2^e (0 and denormals: the floor)
    if (m >= std::ldexp(1.f, -126)) e = std::max(std::ilogb(m) + 1, -112);
    const float inv = std::ldexp(1.f, 15 - e);
    uint16_t pl[16] = {};
    for (int i = 0; i < 16; ++i) {
      const float q = std::fmax(-32767.f, std::fmin(32767.f, std::nearbyint(u[G * 16 + i] * inv)));
      const uint16_t bits = uint16_t(int16_t(q));
      for (int p = 0; p < 16; ++p) pl[p] = uint16_t(pl[p] | (((bits >> p) & 1u) << i));
    }
    for (int p = 0; p < 16; ++p) planes[G * 16 + p] = pl[p];
    exps[G] = int8_t(e);
  }
}

void dequantize_planes_ref(const uint16_t* planes, const int8_t* exps, int64_t C, float* x) {
  for (int64_t G = 0; G < C / 16; ++G)
    for (int i = 0; i < 16; ++i) {
      uint16_t bits = 0;
      for (int p = 0; p < 16; ++p) bits = uint16_t(bits | (((planes[G * 16 + p] >> i) & 1u) << p));
      x[G * 16 + i] = std::ldexp(float(int16_t(bits)), exps[G] - 15);
    }
}

void lowrank_down_ref(const LowRankDownArgs& a) {
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t k = 0; k < a.rank; ++k) {
      double acc = 0;
      for (int64_t c = 0; c < a.C; ++c) acc += double(a.v[c * a.rank + k]) * a.x[t * a.ldx + c];
      a.z[t * a.rank + k] = float(double(a.vs[k]) * acc);
    }
}

void lowrank_up_ref(const LowRankUpArgs& a) {
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t r = a.r0; r < a.r1; ++r) {
      double acc = 0;
      for (int64_t k = 0; k < a.rank; ++k) acc += double(a.u[r * a.rank + k]) * a.us[k] * a.z[t * a.rank + k];
      a.y[t * a.ldy + r] += float(acc);
    }
}

void i8_rows_gemm_ref(const I8RowsGemmArgs& a) {
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t r = a.r0; r < a.r1; ++r) {
      const int8_t* q = a.q + r * a.C;
      double acc = 0;
      for (int64_t c = 0; c < a.C; ++c) acc += double(q[c]) * a.x[t * a.ldx + c];
      a.y[t * a.ldy + r] = float(double(a.scale[r]) * acc);
    }
}

void i8_rows_gemm_i16_ref(const I8RowsGemmI16Args& a) {
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t r = a.r0; r < a.r1; ++r) {
      const int8_t* q = a.q + r * a.C;
      int64_t acc = 0;
      for (int64_t c = 0; c < a.C; ++c) acc += int64_t(q[c]) * a.xq[t * a.ldx + c];
      a.y[t * a.ldy + r] = a.scale[r] * (a.xs[t] * float(acc));
    }
}

void f16_rows_gemm_ref(const F16RowsGemmArgs& a) {
  for (int64_t t = 0; t < a.T; ++t)
    for (int64_t r = a.r0; r < a.r1; ++r) {
      const uint16_t* w = a.w + r * a.C;
      double acc = 0;
      for (int64_t c = 0; c < a.C; ++c) acc += double(half_to_float(w[c])) * a.x[t * a.ldx + c];
      a.y[t * a.ldy + r] = float(acc);
    }
}

void conv_step_silu_ref(const ConvStepArgs& a) {
  for (int64_t c = a.c0; c < a.c1; ++c) {
    for (int64_t k = 0; k + 1 < a.K; ++k) a.state[k * a.D + c] = a.state[(k + 1) * a.D + c];
    a.state[(a.K - 1) * a.D + c] = a.x[c];
    double acc = a.bias ? a.bias[c] : 0.0;
    for (int64_t k = 0; k < a.K; ++k) acc += double(a.w[k * a.D + c]) * a.state[k * a.D + c];
    a.out[c] = silu(float(acc));
  }
}

void ssm_step_ref(const SsmStepArgs& a) {
  DFSSM_ASSERT((a.state == nullptr) != (a.state_f16 == nullptr), "ssm_step: exactly one state buffer");
  const int64_t hpg = a.H / a.G, PN = a.P * a.N;
  for (int64_t h = a.h0; h < a.h1; ++h) {
    const float dt = std::fmin(std::fmax(softplus20(a.dt_raw[h] + a.dt_bias[h]), a.dt_min), a.dt_max);
    const float dA = std::exp(dt * a.A[h]);
    const float* B = a.B + (h / hpg) * a.N;
    const float* C = a.C + (h / hpg) * a.N;
    for (int64_t p = 0; p < a.P; ++p) {
      const float xdt = a.x[h * a.P + p] * dt;
      double acc = 0;
      for (int64_t n = 0; n < a.N; ++n) {
        const int64_t i = h * PN + p * a.N + n;
        const float old = a.state ? a.state[i] : half_to_float(a.state_f16[i]);
        float s = old * dA + xdt * B[n];
        if (a.state) a.state[i] = s;
        else a.state_f16[i] = float_to_half(s), s = half_to_float(a.state_f16[i]);
        acc += double(C[n]) * s;
      }
      a.y[h * a.P + p] = float(acc) + a.D[h] * a.x[h * a.P + p];
    }
  }
}

void gated_rmsnorm_ref(const GatedRmsNormArgs& a) {
  const int64_t gs = a.n / a.G;
  for (int64_t g = 0; g < a.G; ++g) {
    double ss = 0;
    for (int64_t i = g * gs; i < (g + 1) * gs; ++i) {
      const double v = double(a.y[i]) * silu(a.z[i]);
      ss += v * v;
    }
    const float rstd = float(1.0 / std::sqrt(ss / double(gs) + a.eps));
    for (int64_t i = g * gs; i < (g + 1) * gs; ++i) a.out[i] = (a.y[i] * silu(a.z[i])) * rstd * a.w[i];
  }
}

void add_rmsnorm_ref(const AddRmsNormArgs& a) {
  double ss = 0;
  for (int64_t i = 0; i < a.n; ++i) {
    if (a.x) a.residual[i] += a.x[i];
    ss += double(a.residual[i]) * a.residual[i];
  }
  const float rstd = float(1.0 / std::sqrt(ss / double(a.n) + a.eps));
  for (int64_t i = 0; i < a.n; ++i) a.out[i] = a.residual[i] * rstd * a.w[i];
}

namespace {
const KernelTable kScalar = {Isa::Scalar,       sign_gemm_ref,     sign_gemm_i8_ref, quantize_rows_i8_ref,
                             lowrank_down_ref,  lowrank_up_ref,    i8_rows_gemm_ref, f16_rows_gemm_ref,
                             conv_step_silu_ref, ssm_step_ref,     gated_rmsnorm_ref, add_rmsnorm_ref,
                             sign_gemm_i16_ref, quantize_rows_i16_ref, i8_rows_gemm_i16_ref};
}  // namespace

const KernelTable& kernel_table(Isa isa) {
  DFSSM_ASSERT(isa_supported(isa), "kernel_table(", isa_name(isa), ") on a CPU without it");
  switch (isa) {
    case Isa::Scalar: return kScalar;
    case Isa::Avx2: return kernel_table_avx2();
    case Isa::Avx512: return kernel_table_avx512();
  }
  return kScalar;
}

}  // namespace dfssm::kernels::cpu
