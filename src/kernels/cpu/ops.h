// The CPU runtime's kernels: one argument struct per op, and one table of function pointers per
// instruction set (scalar `_ref`, AVX2, AVX-512). The scalar table is the reference every fast
// version is tested against (tests/test_cpu_kernels.cpp) and the fallback that always works.
//
// Conventions (all ops):
//   * activations are fp32, row-major: token t of an activation matrix starts at p + t*ld;
//   * T = tokens (1 for batch-1 decode, up to the prefill chunk), R = output rows, C = inputs;
//   * row-split ops compute only rows [r0, r1) (the runtime's threads split rows), so the same
//     call with disjoint ranges from several threads is safe;
//   * weights stay in the packed file's layout (docs/format.md) unless a field says otherwise;
//     the runtime's load-time repacking is documented in docs/runtime.md.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cpu/isa.h"

namespace dfssm::kernels::cpu {

// Packed-sign GEMM with the magnitude field (binary / binary_lowrank projections):
//   y[t, r] = a[r] · Σ_c s[r, c] · xb[t, c],   s = +1 where bit c of row r is 1, else -1,
// with xb = field_b ⊙ x prepared by the caller (once per token, shared by all rows).
// Row r's bits start at codes + r*row_bytes (LSB-first, docs/format.md). y is overwritten.
struct SignGemmArgs {
  const uint8_t* codes;
  int64_t row_bytes;
  const float* a;   // [R]
  const float* xb;  // [T, ldx]
  int64_t ldx;
  float* y;  // [T, ldy]
  int64_t ldy;
  int64_t T, C, r0, r1;
};

// Int8-activation variant (for the VNNI path): xq[t, :] = round(xb[t, :] / xs[t]) in [-127, 127]
// (quantize_rows_i8), xsum[t] = Σ_c xq[t, c]. Then
//   y[t, r] = a[r] · xs[t] · Σ_c s[r, c] · xq[t, c]      (exact integer sum, then fp32)
struct SignGemmI8Args {
  const uint8_t* codes;
  int64_t row_bytes;
  const float* a;
  const int8_t* xq;  // [T, ldx]
  int64_t ldx;
  const float* xs;      // [T]
  const int32_t* xsum;  // [T]
  float* y;
  int64_t ldy;
  int64_t T, C, r0, r1;
};

// Int16-activation variant (the runtime's default, `--act i16`): xq[t, :] = round(xb[t, :] / xs[t])
// in [-32767, 32767] (quantize_rows_i16), xsum[t] = Σ_c xq[t, c]; xq rows are zero-padded to
// ldx >= round_up(C, 64) so whole 64-bit code words can be used (pad bits meet zeros).
//   y[t, r] = a[r] · xs[t] · Σ_c s[r, c] · xq[t, c]      (exact int32 sum, then fp32)
// 15-bit activations: relative error ~2^-15 · max|xb| / rms(xb) per element, far below the
// int8 variant's, at about the int8 variant's speed (16 weights per vpmaddwd).
struct SignGemmI16Args {
  const uint8_t* codes;
  int64_t row_bytes;
  const float* a;
  const int16_t* xq;  // [T, ldx], zero-padded
  int64_t ldx;
  const float* xs;      // [T]
  const int32_t* xsum;  // [T]
  float* y;
  int64_t ldy;
  int64_t T, C, r0, r1;
};

// Per-token symmetric int16: xs[t] = max|x[t,:]| / 32767 (1 when the row is 0),
// xq = clamp(round_half_even(x / xs), -32767, 32767), zero from C to ldq; xsum[t] = Σ xq[t, :].
struct QuantizeI16Args {
  const float* x;
  int64_t ldx;
  int16_t* xq;
  int64_t ldq;
  float* xs;
  int32_t* xsum;
  int64_t T, C;
};

// Per-token symmetric int8: xs[t] = max|x[t,:]| / 127 (1 when the row is 0),
// xq = clamp(round_half_even(x / xs), -127, 127), xsum[t] = Σ xq[t, :].
struct QuantizeI8Args {
  const float* x;
  int64_t ldx;
  int8_t* xq;
  int64_t ldq;
  float* xs;
  int32_t* xsum;
  int64_t T, C;
};

// Low-rank correction, down: z[t, k] = vs[k] · Σ_c v[c, k] · x[t, c]   (v int8 [C, rank]).
struct LowRankDownArgs {
  const int8_t* v;
  const float* vs;  // [rank]
  const float* x;   // [T, ldx]
  int64_t ldx;
  float* z;  // [T, rank], overwritten
  int64_t T, C, rank;
};

// Low-rank correction, up: y[t, r] += Σ_k (u[r, k] · us[k]) · z[t, k]   (u int8 [R, rank]).
struct LowRankUpArgs {
  const int8_t* u;
  const float* us;  // [rank]
  const float* z;   // [T, rank]
  float* y;         // [T, ldy], accumulated into
  int64_t ldy;
  int64_t T, rank, r0, r1;
};

// Int8 rows times activations (the tied int8 LM head, int8 embedding):
//   y[t, r] = scale[r] · Σ_c q[r, c] · x[t, c]        (q int8 [R, C] row-major)
struct I8RowsGemmArgs {
  const int8_t* q;
  const float* scale;  // [R]
  const float* x;
  int64_t ldx;
  float* y;
  int64_t ldy;
  int64_t T, C, r0, r1;
};

// The same on int16 activations (the i16 path's LM head): x quantized per token as in
// QuantizeI16Args (rows zero-padded to ldx >= round_up(C, 16)):
//   y[t, r] = scale[r] · xs[t] · Σ_c q[r, c] · xq[t, c]        (exact int32 sum)
struct I8RowsGemmI16Args {
  const int8_t* q;
  const float* scale;
  const int16_t* xq;
  int64_t ldx;
  const float* xs;
  float* y;
  int64_t ldy;
  int64_t T, C, r0, r1;
};

// fp16 rows times activations (dense projections, fp16 embedding): y[t, r] = Σ_c w[r, c] · x[t, c].
struct F16RowsGemmArgs {
  const uint16_t* w;  // IEEE half bits [R, C]
  const float* x;
  int64_t ldx;
  float* y;
  int64_t ldy;
  int64_t T, C, r0, r1;
};

// Depthwise causal conv1d, one step, then SiLU, over channels [c0, c1) of D:
//   state[k, c] <- state[k+1, c] (k < K-1);  state[K-1, c] <- x[c];
//   out[c] = silu(bias[c] + Σ_k w[k, c] · state[k, c])
// state and w are tap-major [K, D] (the runtime repacks conv1d.weight [D, 1, K] at load).
struct ConvStepArgs {
  float* state;
  const float* w;
  const float* bias;  // [D] or nullptr
  const float* x;     // [D], the raw (pre-conv) xBC column
  float* out;         // [D]
  int64_t D, K, c0, c1;
};

// The SSM recurrence for one token, heads [h0, h1):
//   dt = softplus(dt_raw[h] + dt_bias[h]) (identity above 20), clamped to [dt_min, dt_max];
//   dA = exp(dt · A[h]);   g = h / (H / G)
//   state[h, p, n] = state[h, p, n] · dA + dt · x[h, p] · B[g, n]
//   y[h, p] = Σ_n C[g, n] · state[h, p, n] + D[h] · x[h, p]
// state is fp32 [H, P, N] (state_f16 == nullptr) or IEEE half [H, P, N] (state == nullptr);
// the math is fp32 either way (fp16 state is rounded once per step).
struct SsmStepArgs {
  float* state;
  uint16_t* state_f16;
  const float* x;       // [H * P]
  const float* B;       // [G * N]
  const float* C;       // [G * N]
  const float* dt_raw;  // [H]
  const float* dt_bias; // [H]
  const float* A;       // [H], A = -exp(A_log)
  const float* D;       // [H]
  float* y;             // [H * P]
  float dt_min, dt_max;
  int64_t H, P, N, G, h0, h1;
};

// Gated RMSNorm (mamba_ssm RMSNormGated, norm_before_gate=False), one token:
//   g = y ⊙ silu(z);  out = g · rsqrt(mean_group(g²) + eps) ⊙ w,  groups of n / G channels.
struct GatedRmsNormArgs {
  const float* y;
  const float* z;
  const float* w;
  float* out;
  int64_t n, G;
  float eps;
};

// Residual add + RMSNorm, one token: residual += x (skipped when x == nullptr);
//   out = residual · rsqrt(mean(residual²) + eps) ⊙ w
struct AddRmsNormArgs {
  const float* x;
  float* residual;
  const float* w;
  float* out;
  int64_t n;
  float eps;
};

struct KernelTable {
  Isa isa;
  void (*sign_gemm)(const SignGemmArgs&);
  void (*sign_gemm_i8)(const SignGemmI8Args&);  // nullptr where the ISA has no int8 variant
  void (*quantize_rows_i8)(const QuantizeI8Args&);
  void (*lowrank_down)(const LowRankDownArgs&);
  void (*lowrank_up)(const LowRankUpArgs&);
  void (*i8_rows_gemm)(const I8RowsGemmArgs&);
  void (*f16_rows_gemm)(const F16RowsGemmArgs&);
  void (*conv_step_silu)(const ConvStepArgs&);
  void (*ssm_step)(const SsmStepArgs&);
  void (*gated_rmsnorm)(const GatedRmsNormArgs&);
  void (*add_rmsnorm)(const AddRmsNormArgs&);
  void (*sign_gemm_i16)(const SignGemmI16Args&);
  void (*quantize_rows_i16)(const QuantizeI16Args&);
  void (*i8_rows_gemm_i16)(const I8RowsGemmI16Args&);
};

// The table for `isa` (must be supported: see isa_supported()).
const KernelTable& kernel_table(Isa isa);

// 1-bit activation planes (the CUDA decode's batch-1 projection input; kernels/cuda/decode.h
// "planes"): per group of 16 columns an exponent e = ilogb(max|u|) + 1 (at least -112) and
// q = round(u · 2^(15 - e)) clamped to ±32767; planes[G*16 + p] = bit p of q (two's complement)
// at columns 16G + i (bit i), exps[G] = e. C % 16 == 0. The dequantized x̂ = q · 2^(e - 15).
void quantize_planes_ref(const float* u, int64_t C, uint16_t* planes, int8_t* exps);
void dequantize_planes_ref(const uint16_t* planes, const int8_t* exps, int64_t C, float* x);

// The scalar references (the Scalar table's entries).
void sign_gemm_ref(const SignGemmArgs& a);
void sign_gemm_i8_ref(const SignGemmI8Args& a);
void quantize_rows_i8_ref(const QuantizeI8Args& a);
void lowrank_down_ref(const LowRankDownArgs& a);
void lowrank_up_ref(const LowRankUpArgs& a);
void i8_rows_gemm_ref(const I8RowsGemmArgs& a);
void f16_rows_gemm_ref(const F16RowsGemmArgs& a);
void conv_step_silu_ref(const ConvStepArgs& a);
void ssm_step_ref(const SsmStepArgs& a);
void gated_rmsnorm_ref(const GatedRmsNormArgs& a);
void add_rmsnorm_ref(const AddRmsNormArgs& a);
void sign_gemm_i16_ref(const SignGemmI16Args& a);
void quantize_rows_i16_ref(const QuantizeI16Args& a);
void i8_rows_gemm_i16_ref(const I8RowsGemmI16Args& a);

// Tables of the fast paths (defined in ops_avx2.cpp / ops_avx512.cpp, compiled with their
// target flags; only called after the CPUID check).
const KernelTable& kernel_table_avx2();
const KernelTable& kernel_table_avx512();

// Shared scalar helpers (exact definitions every path follows).
float softplus20(float x);  // log1p(exp(x)), identity above 20 (PyTorch's threshold)
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

}  // namespace dfssm::kernels::cpu
