// CUDA prefill kernels: one sequence, T tokens (a chunk of the prompt, e.g. 256..2048 rows)
// through one Mamba-2 layer. Plain C++ header: callers need only the CUDA runtime. Every op is
// defined in src/kernels/cpu/ops.h; the references are the `_ref` functions of
// src/kernels/cpu/ops_ref.cpp (tests/test_cuda_prefill.cpp composes them).
//
// One layer (d = d_model, di = d_inner, D = conv_dim = di + 2GN, dip = d_in_proj = 2di + 2GN + H):
//   rmsnorm_rows         res += hidden; xn = RMSNorm(res) ⊙ w                     [T, d]
//   quantize_act_i8      q = int8(b_in ⊙ xn), sx = per-token scale                 [T, ld(d)]
//                        (the runtime runs these two as one kernel, rmsnorm_quant_rows)
//   lowrank_down         zl = vs ⊙ (Vᵀ xn)          (the low-rank term sees xn, not b ⊙ xn)
//   I8Gemm::run          acc = q · Sᵀ (int32, cuBLASLt INT8 tensor cores)          [T, dip]
//   proj_epilogue        zx = a ⊙ sx · acc + U (us ⊙ zl)                           [T, dip]
//   conv_prefill         xbc = SiLU(conv1d(zx[:, di : di + D]) + bias), conv state updated
//   ssm_scan             y = the SSM recurrence over the T tokens, state updated   [T, di]
//   gated_rmsnorm_rows   g = RMSNormGated(y, z = zx[:, 0 : di])                     [T, di]
//                        (with out_proj's quantize_act_i8: gated_rmsnorm_quant_rows)
//   quantize_act_i8 / lowrank_down / I8Gemm::run / proj_epilogue  (out_proj)   -> hidden [T, d]
//
// Layouts (all device pointers, fp32 unless said otherwise):
//   * activations row-major: token t of a matrix with leading dimension ld starts at p + t*ld;
//   * int8 activations q [T, ldq] and expanded signs S [R, ldq]: ldq = i8_cols(C) (C rounded up
//     to a multiple of 16), columns [C, ldq) are 0 in q (and in S), so the padded GEMM is exact;
//   * the int32 GEMM result acc [T, ldc] row-major (ldc >= R, a multiple of 4);
//   * low-rank factors as in the file: U int8 [R, rank], V int8 [C, rank] row-major, rank <= 32;
//   * conv state [K, D] tap-major (state[K-1] = the newest input), conv weights [K, D];
//   * SSM state [H, P, N] fp32 or IEEE half.
// Every function checks its shapes and returns cudaErrorInvalidValue for unsupported ones; T = 0
// is a no-op. Launches are asynchronous on `stream`. Output buffers must not alias inputs.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace dfssm::kernels::cuda {

constexpr int kPrefillMaxRank = 32;  // low-rank rank the prefill kernels support
constexpr int kPrefillMaxConvK = 8;  // d_conv the conv kernel supports

// Padded column count of an int8 operand with C columns (the GEMM's K).
inline int64_t i8_cols(int64_t C) { return (C + 15) / 16 * 16; }

// The file's packed sign rows (docs/format.md: row r at codes + r*row_bytes, LSB-first, bit 1 =
// +1, else -1) as int8 ±1, out[r*ld + c] for c < C, 0 for C <= c < ld. ld % 16 == 0, ld >= C.
// Done once at load.
cudaError_t expand_signs_i8(const uint8_t* codes, int64_t row_bytes, int64_t R, int64_t C, int8_t* out, int64_t ld,
                            cudaStream_t stream);

// Per-token symmetric int8 (ops.h QuantizeI8Args on v = b ⊙ x):
//   v[t, c] = b[c] · x[t*ldx + c] (b may be null: v = x);  scale[t] = max_c |v| / 127 (1 if 0);
//   q[t*ldq + c] = clamp(round_half_even(v / scale[t]), -127, 127);  0 for C <= c < ldq.
// ldq % 16 == 0, ldq >= C. Bit-identical to quantize_rows_i8_ref on b ⊙ x.
cudaError_t quantize_act_i8(const float* x, int64_t ldx, const float* b, int64_t T, int64_t C, int8_t* q, int64_t ldq,
                            float* scale, cudaStream_t stream);

// INT8 tensor-core GEMM through cuBLASLt: acc[t*ldc + r] = Σ_{k<K} q[t*K + k] · S[r*K + k]
// for t < T, r < R (int32, exact). Both operands are row-major with the reduction dimension K
// contiguous (q [T, K] from quantize_act_i8, S [R, K] from expand_signs_i8, K = i8_cols(C)).
// In cuBLASLt's column-major terms this is the "TN" problem it supports for int8 on sm_90:
//   D (m = R, n = T, ldc) = op(A) · op(B),  A = S seen as K x R col-major (lda = K), transa = T;
//   B = q seen as K x T col-major (ldb = K), transb = N;  CUBLAS_COMPUTE_32I, scale type int32,
//   alpha = 1, beta = 0, A/B CUDA_R_8I, C/D CUDA_R_32I.
// Requirements (checked): R % 4 == 0, K % 16 == 0, ldc % 4 == 0, ldc >= R, 16-byte aligned
// pointers. One handle and workspace per object; a plan (layouts + the heuristic's algorithm) is
// made once per shape (T, R, K, ldc) and cached. prepare() makes the handle, workspace and plan
// ahead (do it before capturing a CUDA graph: the first use allocates). Not thread-safe.
// cuBLAS failures return cudaErrorUnknown (last_status() has the cublasStatus_t),
// cudaErrorNotSupported when the heuristic finds no algorithm.
class I8Gemm {
 public:
  explicit I8Gemm(size_t workspace_bytes = size_t(32) << 20);
  ~I8Gemm();
  I8Gemm(const I8Gemm&) = delete;
  I8Gemm& operator=(const I8Gemm&) = delete;

  cudaError_t prepare(int64_t T, int64_t R, int64_t K, int64_t ldc);
  cudaError_t run(const int8_t* q, const int8_t* S, int32_t* acc, int64_t T, int64_t R, int64_t K, int64_t ldc,
                  cudaStream_t stream);
  int last_status() const;

 private:
  struct Impl;
  Impl* impl_;
};

// The projection's epilogue (ops.h sign_gemm_i8 + lowrank_up):
//   y[t*ldy + r] = a[r] · (sx[t] · acc[t*ldacc + r]) + Σ_k (U[r, k] · us[k]) · zlow[t*rank + k]
// zlow = lowrank_down's output (vs already applied). rank = 0 or U == nullptr: no low-rank term.
cudaError_t proj_epilogue(const int32_t* acc, int64_t ldacc, int64_t T, int64_t R, const float* a, const float* sx,
                          const int8_t* U, const float* us, const float* zlow, int64_t rank, float* y, int64_t ldy,
                          cudaStream_t stream);

// Low-rank correction, down (ops.h LowRankDownArgs): zlow[t*rank + k] = vs[k] · Σ_c V[c*rank + k] · x[t*ldx + c].
// x is the projection's UN-scaled input (field b does not apply to the low-rank term). rank 1..32.
cudaError_t lowrank_down(const float* x, int64_t ldx, const int8_t* V, const float* vs, int64_t T, int64_t C,
                         int64_t rank, float* zlow, cudaStream_t stream);

// Depthwise causal conv1d + SiLU over T tokens (T applications of conv_step_silu_ref):
//   out[t*D + c] = silu(bias[c] + Σ_k w[k*D + c] · in(t - K + 1 + k, c)),  in(j, c) = xbc_raw[j*ld_in + c]
//   for j >= 0, else the state's tap j + K; conv_state [K, D] is left as T steps leave it.
// xbc_raw usually points into the in_proj output (columns [di, di + D) of rows with ld_in = dip).
// 1 <= K <= 8; bias may be null. out [T, D] must not alias xbc_raw or conv_state.
cudaError_t conv_prefill(const float* xbc_raw, int64_t ld_in, float* conv_state, const float* w, const float* bias,
                         float* out, int64_t T, int64_t D, int K, cudaStream_t stream);

// The SSM recurrence over T tokens: exactly T sequential applications of ssm_step_ref (ops.h
// SsmStepArgs) on one sequence; state [H, P, N] (fp32, or IEEE half when f16: rounded to half
// once per token, y uses the rounded state) is updated in place to the final state.
//   xbc [T, Dc] post-conv, Dc = H*P + 2*G*N: x = columns [0, H*P), B = [H*P, H*P + G*N), C = the rest;
//   dt_raw[t*ld_dt + h]; dt_bias, A (= -exp(A_log)), Dskip [H];  y [T, H*P] dense.
// Requirements (checked): N = NT * TPR with TPR a power of two <= 32 (a thread owns NT of a row's
// N state elements for RP rows, TPR lanes share a row; NT and RP from ScanTuning, or the
// fallbacks below where those do not fit, e.g. P = N = 16), P % 4 == 0, H % G == 0, state and xbc
// 16-byte aligned.
// Default: 8 elements x 2 rows per thread (H200, 1.3B layer at T = 2048: 346 us against 419 for
// 16 x 1; test_cuda_prefill "[bench]" times the variants). Shapes that variant does not support
// (2 rows per thread is instantiated for 8 elements at N = 128 only) take 16 x 1, then 8 x 1.
struct ScanTuning {
  int elems_per_thread = 8;  // NT: 8 or 16
  int max_threads = 256;     // threads per block (a block owns one head and a slice of its P rows)
  int rows_per_thread = 2;   // RP: rows a thread owns (its B and C loads serve RP rows); 1, or 2 with NT = 8
};
cudaError_t ssm_scan(void* state, bool f16, const float* xbc, const float* dt_raw, int64_t ld_dt, const float* dt_bias,
                     const float* A, const float* Dskip, float* y, int64_t T, int H, int P, int N, int G, float dt_min,
                     float dt_max, cudaStream_t stream, const ScanTuning& tuning = ScanTuning());
// Whether ssm_scan supports these shapes (the runtime falls back to decode-step prefill if not).
bool ssm_scan_supported(int H, int P, int N, int G, const ScanTuning& tuning = ScanTuning());

// Residual add + RMSNorm of T rows (add_rmsnorm_ref per row): res[t] += hidden[t] (hidden may be
// null), out[t] = res[t] · rsqrt(mean(res[t]²) + eps) ⊙ w. res, hidden, out dense [T, n].
cudaError_t rmsnorm_rows(const float* hidden, float* res, const float* w, float* out, int64_t T, int64_t n, float eps,
                         cudaStream_t stream);

// Gated RMSNorm of T rows (gated_rmsnorm_ref per row, G groups of n / G channels):
//   g = y[t] ⊙ silu(z[t*ldz + :]);  out[t] = g · rsqrt(mean_group(g²) + eps) ⊙ w.
// y, out dense [T, n]; z usually points at the in_proj output (ldz = dip).
cudaError_t gated_rmsnorm_rows(const float* y, const float* z, int64_t ldz, const float* w, float* out, int64_t T,
                               int64_t n, int G, float eps, cudaStream_t stream);

// The norm and quantize_act_i8 of its output in one kernel (one pass over the row in shared
// memory; rows longer than 12K floats fall back to the two kernels). out, q and scale are
// bit-identical to rmsnorm_rows / gated_rmsnorm_rows followed by quantize_act_i8(out, n, b, ...):
// the same IEEE operations in the same order.
cudaError_t rmsnorm_quant_rows(const float* hidden, float* res, const float* w, float* out, int64_t T, int64_t n,
                               float eps, const float* b, int8_t* q, int64_t ldq, float* scale, cudaStream_t stream);
cudaError_t gated_rmsnorm_quant_rows(const float* y, const float* z, int64_t ldz, const float* w, float* out, int64_t T,
                                     int64_t n, int G, float eps, const float* b, int8_t* q, int64_t ldq, float* scale,
                                     cudaStream_t stream);

}  // namespace dfssm::kernels::cuda
