// CUDA decode kernels for the runtime (batch B = 1..8 sequences per step). Plain C++ header:
// callers need only the CUDA runtime. Every op is defined in src/kernels/cpu/ops.h; the
// references are the `_ref` functions of src/kernels/cpu/ops_ref.cpp (compositions of them for
// the fused kernels, see tests/test_cuda_runtime.cpp). Implemented in decode.cu (norm, SSM, LM
// head, embedding, launch-floor probe) and sign_gemv.cu (repack, the sign GEMVs: a general kernel
// and, at batch 1 with a folded norm, a lean one), with shared helpers in decode_common.cuh.
//
// The five-kernel decode layer (the runtime captures the whole step in a CUDA graph; see
// "Folded norms" below for the three-kernel layer it runs at batch 1):
//   norm_prologue (rms)    residual += hidden; x = RMSNorm(residual) ⊙ w; writes the in_proj
//                          input fragments fp16(b ⊙ x) and the low-rank partials Vᵀx
//   sign_gemv (in_proj)    y = a ⊙ (S xb) + U (us ⊙ vs ⊙ Vᵀx), + conv1d step + SiLU fused on the
//                          xBC rows (each channel's conv state is owned by exactly one lane)
//   ssm_step               dt, dA, state update (fp32 or fp16 state), y = C·h + D x
//   norm_prologue (gated)  g = y ⊙ silu(z), grouped RMSNorm ⊙ w, out_proj fragments + partials
//   sign_gemv (out_proj)   hidden = a ⊙ (S xb) + U (us ⊙ vs ⊙ Vᵀg)
// then norm_f (norm_prologue, plain fp16 rows) and the int8 LM head.
//
// Folded norms (ngroups = 1, the default path): three launches per layer. RMSNorm scales a
// token's row by one scalar rstd = rsqrt(mean(x²) + eps), and the projections are linear, so a
// GEMV can run on the un-normalised input and multiply its output (and its low-rank term) by
// rstd in the epilogue. The producer of a projection's input writes the fragments of
// b ⊙ w ⊙ x (w: the norm weight) and per-block partial sums ("parts") of Vᵀ(w ⊙ x) and Σx²:
//   sign_gemv (in_proj)    reads parts: rstd and the low-rank term; + conv (as above)
//   ssm_step (fold)        + g = y ⊙ silu(z), the out_proj fragments of b ⊙ w_g ⊙ g, parts
//   sign_gemv (out_proj)   reads parts; residual += y (res_in -> res_out), and the next layer's
//                          in_proj fragments of b' ⊙ w' ⊙ residual, parts
// Layer 0's input comes from norm_prologue with fold = 1 (the embedding row, un-normalised).
// Parts layout: float [kMaxBatch][kMaxRank + 1][kMaxParts]: parts[(n*(kMaxRank+1) + k)*kMaxParts
// + i] is producer block i's sum for sequence n, k < r: Σ V[c,k]·w[c]·x[c], k = r: Σ x[c]². A
// consumer sums parts 0..nparts-1 in a fixed order (deterministic). fp16 range: the fragments
// are no longer normalised, so |b·w·x| must stay below 65504.
//
// Layouts (all device pointers):
//   * activations fp32 row-major [B, n] (sequence b at b*n), as the CPU runtime's;
//   * "fragments": the sign GEMV's activation operand, fp16, in the register order of
//     mma.m16n8k16's B operand: for 16-column step s and lane l = 4*g + t (g = sequence,
//     t = 0..3): uint2 { half2(x[g][16s+2t], x[g][16s+2t+1]), half2(x[g][16s+2t+8], x[g][16s+2t+9]) }
//     at uint2 index s*32 + l. Columns are padded to a multiple of 256 with zeros. Sequences
//     >= B are never read (those lanes use zeros), so the buffer holds 8 sequences' worth.
//   * packed signs, repacked once at load (repack_signs) from the file's rows (docs/format.md:
//     row r at r*row_bytes, LSB-first, bit 1 = +1) into tiles of 16 rows x 256 columns: per
//     (tile T, chunk ch, lane l = 4g + t) one uint4 at index (T*nch + ch)*32 + l whose word i
//     holds, for step s = 0..15, bit s = column ch*256 + 16s + 2t + 8*(i>>1) and bit s+16 = the
//     next column, of row 16T + g + 8*(i&1). A warp then loads 512 contiguous bytes per
//     (tile, chunk) and turns each word into a half2 of ±1 with one shift and one LOP3
//     ((w << (15-s)) & 0x80008000) ^ 0xBC00BC00, the A operand of mma.m16n8k16 (f16 in, f32
//     accumulate). Rows are padded to a multiple of 16 (pad rows are -1 and never stored),
//     columns to a multiple of 256 (the fragments are zero there).
//   * "planes" (batch 1, the default in_proj input; see "1-bit activation planes" below): the
//     activation as int16 bit planes per group of 16 columns, each group with its own power-of-
//     two scale: x̂ = q · 2^(e - 15), e = ilogb(max|x| over the group) + 1 (so |q| <= 32767;
//     at least -112), q = round(x · 2^(15 - e)). uint16 planes[G*16 + p] holds bit
//     p of q (two's complement, plane 15 weighs -2^15) at columns 16G + i (bit i); int8 exp[G] = e.
//   * 1-bit mma signs (repack_signs_b1): per (tile T, k-block kb, lane l = 4g + t) one uint2 at
//     (T*nkb + kb)*32 + l: .x = row 16T + g, .y = row 16T + g + 8, bit i = column kb*128 + 32t + i
//     (1 = +1), the A operand of mma.m16n8k128.b1. Pad rows and columns are 0.
//   * the int8 LM head / embedding stays in the file's layout [V, d] (no copy other than the
//     upload): a lane reads 16 contiguous bytes of a row per 64 columns and the activation
//     operand is permuted to match (see lm_head_i8).
//
// 1-bit activation planes (batch 1): with S = 2W - 1 (W the sign bits, 1 = +1), per k-block kb of
// 128 columns (8 groups) the consumer aligns the groups to the k-block's largest exponent E
// (q' = q >> (E - e): plane p of q' is plane min(p + E - e, 15) of q, chosen per load) and
//   Σ_c S[r,c] x̂_c = 2 Σ_kb 2^(E-15) Σ_p w_p popc(W[r, kb] & plane'_p[kb]) - T,  T = Σ_c x̂_c,
// w_p = 2^p (p < 15), w_15 = -2^15: two mma.m16n8k128.b1 per 16 rows x 128 columns (planes 0-7
// and 8-15 as the 8 columns of B) and no sign expansion, against 8 fp16 mma + 64 integer
// instructions for the same block on the fp16 path. T comes from the popcounts of the planes
// themselves. A producer quantizes each group on its own (no agreement between blocks): out_proj
// one group per block (its 16 rows are the next input's columns), norm_prologue for layer 0.
// (Measured first: one scale per k-block agreed on in clusters of 8 out_proj blocks through
// distributed shared memory: in_proj 5.6 -> 3.6 us per layer, but out_proj 4.4 -> 7.5 us, the
// clusters starting late and two cluster barriers; 0.723 against 0.673 ms/token.)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace dfssm::kernels::cuda {

constexpr int kMaxBatch = 8;   // sequences per decode step (mma N = 8)
constexpr int kMaxRank = 32;   // low-rank rank the kernels support
constexpr int kChunkCols = 256;
constexpr int kSliceCols = 512;  // norm_prologue: fragment columns per block
constexpr int kMaxParts = 256;   // producer blocks of a folded norm's partial sums
constexpr int kKbCols = 128;     // columns per k-block of the 1-bit mma (8 groups of 16 planes)
// Timeline of one kernel launch (debug, DFSSM_CUDA_TRACE): block 0's entry, PDL wait release,
// end of its activation phase (sign_gemv: partial sums reduced; ssm_step: inputs loaded), end of
// its main compute, end of its epilogue; over all blocks: first entry (min), last wait release
// and last exit (max). Initialise kFirstEntry to ~0, the rest to 0.
enum TraceSlot { kEntry, kWaited, kPhase1, kCompute, kEpilogue, kFirstEntry, kLastWaited, kLastExit, kTraceSlots };
// Floats of a parts buffer (all batch rows).
inline size_t parts_floats() { return size_t(kMaxBatch) * (kMaxRank + 1) * kMaxParts; }

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
// Bytes of the repacked signs of an R x C projection.
inline size_t repacked_sign_bytes(int64_t R, int64_t C) {
  return size_t(round_up(R, 16) / 16) * size_t(round_up(C, kChunkCols) / kChunkCols) * 32 * 16;
}
// Bytes of a fragment buffer for C columns (8 sequences).
inline size_t fragment_bytes(int64_t C) { return size_t(round_up(C, kChunkCols) / 16) * 32 * 8; }

// Bytes of the 1-bit-mma signs of an R x C projection (C % kKbCols == 0).
inline size_t repacked_b1_bytes(int64_t R, int64_t C) { return size_t(round_up(R, 16) / 16) * size_t(C / kKbCols) * 32 * 8; }
// Bytes of the planes of C columns (one sequence); the exponents are C / 16 int8.
inline size_t plane_bytes(int64_t C) { return size_t(C / 16) * 32; }
// The same signs in the 1-bit mma layout ("1-bit mma signs"). C must be a multiple of kKbCols.
cudaError_t repack_signs_b1(const uint8_t* codes, int64_t row_bytes, int64_t R, int64_t C, void* out, cudaStream_t s);

// codes: device copy of the file's packed rows. out: repacked_sign_bytes(R, C) bytes.
cudaError_t repack_signs(const uint8_t* codes, int64_t row_bytes, int64_t R, int64_t C, void* out, cudaStream_t s);

// Residual add + RMSNorm (mode 0) or gated RMSNorm (mode 1) of B rows, then the next
// projection's input. Grid (B, nsplit) where nsplit = ceil(cpad / kSliceCols) (plain: 1 block
// per row). Every block recomputes the row statistic; block y = 0 writes the residual.
struct NormArgs {
  int mode = 0;  // 0: residual add + RMSNorm, 1: gated RMSNorm (norm_before_gate=False)
  int n = 0;     // row length
  float eps = 1e-5f;
  const float* w = nullptr;  // [n]
  // mode 0: x = res_in + hidden (hidden may be null); or, when tokens is set, x = embedding row
  // (int8 codes [V, n] · scale[tok]). x is written to res_out (must differ from res_in).
  const float* res_in = nullptr;
  const float* hidden = nullptr;
  float* res_out = nullptr;
  const int32_t* tokens = nullptr;
  const int8_t* emb = nullptr;
  const float* emb_scale = nullptr;
  // mode 1: g = y ⊙ silu(z), G groups of n / G channels.
  const float* y = nullptr;
  const float* z = nullptr;
  int64_t ldz = 0;
  int G = 1;
  // Outputs: fp16(b ⊙ out) as fragments (plain = 0; b may be null) or plain fp16 rows [B, n]
  // (plain = 1, for the LM head); low-rank partials zp[b][split][k] = Σ_{c in slice} V[c,k]·out[c].
  const float* b = nullptr;
  void* out16 = nullptr;
  int plain = 0;
  const int8_t* V = nullptr;  // [n, r] or null
  int r = 0;
  float* zp = nullptr;
  // fold = 1 (mode 0 only): fragments of b ⊙ w ⊙ x without the 1/rms, and parts (see above) at
  // parts[.. + split] instead of zp (split 0 carries Σx²).
  int fold = 0;
  float* parts = nullptr;
  // fold, B = 1: the planes of b ⊙ w ⊙ x (n % kKbCols == 0) instead of the fragments.
  void* xq = nullptr;
  int8_t* xq_exp = nullptr;
};
int norm_splits(const NormArgs& a);
cudaError_t norm_prologue(const NormArgs& a, int B, cudaStream_t s, bool pdl);

// y[b, row] = a[row] · Σ_c s[row, c] xb[b, c] + Σ_k U[row, k] · us[k] · vs[k] · Σ_split zp[b][split][k]
// for rows < R, b < B. With conv_D > 0, rows [conv_lo, conv_lo + conv_D) also run the depthwise
// conv1d step + SiLU (ops.h ConvStepArgs) on their channel: state [K, D] fp32 at
// conv_state + b * conv_seq_stride (floats), output conv_out[b * conv_D + ch].
struct SignGemvArgs {
  const void* w = nullptr;  // repacked signs
  int64_t R = 0, C = 0;
  const void* xf = nullptr;  // fragments
  int B = 1;
  const float* a = nullptr;
  const int8_t* U = nullptr;  // [R, r] or null
  const float* us = nullptr;
  const float* vs = nullptr;
  const float* zp = nullptr;
  int nsplit = 0, r = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  int64_t conv_lo = 0, conv_D = 0;
  int conv_K = 0;
  float* conv_state = nullptr;
  int64_t conv_seq_stride = 0;
  const float* conv_w = nullptr;  // [K, D] tap-major
  const float* conv_b = nullptr;  // [D] or null
  float* conv_out = nullptr;
  // Folded norm: parts of the input (nparts producer blocks; n_norm = the normalised row length);
  // replaces zp / nsplit. The output (and the conv input) is scaled by rstd.
  const float* parts = nullptr;
  int nparts = 0;
  int64_t n_norm = 0;
  float eps = 0.f;
  // out_proj with a next layer (needs parts): x = res_in + y written to res_out, and the next
  // in_proj's input: fragments of nb ⊙ nw ⊙ x into nxf, parts into nparts_out (this kernel's
  // block i is part i; sign_gemv_grid gives their number). R must equal the next layer's C.
  const float* res_in = nullptr;
  float* res_out = nullptr;
  const float* nw = nullptr;  // next layer's norm weight [R]
  const float* nb = nullptr;  // next in_proj's field b [R] or null
  const int8_t* nV = nullptr;  // next in_proj's V [R, nr] or null
  int nr = 0;
  void* nxf = nullptr;
  float* nparts_out = nullptr;
  // Debug timeline (CudaSession::trace_step; null otherwise): kTraceSlots u64 of %globaltimer
  // (ns): see TraceSlot.
  unsigned long long* trace = nullptr;
  // Batch 1 with a folded norm runs the lean batch-1 kernel (sign_gemv_b1_kernel; the same sums
  // in another rounding order). false: the general kernel (debug switch DFSSM_CUDA_LEAN=0).
  bool lean = true;
  // Batch 1, lean kernel only. Input as planes (xq, xq_exp; C % kKbCols == 0) with the signs in
  // the 1-bit mma layout (wq) instead of fragments (xf, w).
  const void* wq = nullptr;
  const void* xq = nullptr;
  const int8_t* xq_exp = nullptr;
  // out_proj with a next layer (one tile per block): the next input as planes (nxq, nxq_exp;
  // R % kKbCols == 0) instead of fragments.
  void* nxq = nullptr;
  int8_t* nxq_exp = nullptr;
};
// Whether the batch-1 planes path runs for a layer: in_proj R_in x C_in (rank r_in) reads planes
// that out_proj (R_out rows, rank r_out of the next in_proj) writes. Needs the lean kernel.
bool planes_supported(int64_t R_in, int64_t C_in, int r_in, int64_t R_out);
// Whether out_proj (R x C, rank r) can read planes written by ssm_step (H heads of P rows).
bool planes_supported_out(int64_t R, int64_t C, int r, int H, int P);
// Blocks sign_gemv launches for R rows (the parts a next-layer output produces).
int sign_gemv_grid(int64_t R);
cudaError_t sign_gemv(const SignGemvArgs& a, cudaStream_t s, bool pdl);

// The SSM recurrence for B sequences (ops.h SsmStepArgs), one layer. xbc: post-conv [B, D_conv]
// (x | B | C); dt_raw[b * ld_dt + h]. State of sequence b at state + b * state_seq_stride bytes,
// fp32 or fp16 [H, P, N].
struct SsmArgs {
  void* state = nullptr;
  bool f16 = false;
  int64_t state_seq_stride = 0;  // bytes
  const float* xbc = nullptr;
  int64_t D = 0;  // conv_dim
  const float* dt_raw = nullptr;
  int64_t ld_dt = 0;
  const float* dt_bias = nullptr;
  const float* A = nullptr;
  const float* Dskip = nullptr;
  float* y = nullptr;  // [B, H*P]
  float dt_min = 0, dt_max = 0;
  int H = 0, P = 0, N = 0, G = 1;
  // Folded gated norm (G == 1; xf set): g = y ⊙ silu(z[b * ldz + c]), out_proj fragments of
  // ob ⊙ gw ⊙ g into xf and parts (ssm_parts(H) producer blocks) for out_proj.
  const float* z = nullptr;
  int64_t ldz = 0;
  const float* gw = nullptr;  // gated-norm weight [H*P]
  const float* ob = nullptr;  // out_proj field b [H*P] or null
  const int8_t* oV = nullptr;  // out_proj V [H*P, orank] or null
  int orank = 0;
  void* xf = nullptr;
  float* parts = nullptr;
  // B = 1 (fold): out_proj's input as planes (xq, xq_exp) instead of fragments; needs
  // P / 2 % 16 == 0 (a block's rows are whole groups).
  void* xq = nullptr;
  int8_t* xq_exp = nullptr;
  // Debug timeline (CudaSession::trace_step; null otherwise): kTraceSlots u64 of %globaltimer
  // (ns): see TraceSlot.
  unsigned long long* trace = nullptr;
};
// Producer blocks (parts) of ssm_step for H heads.
int ssm_parts(int H);
cudaError_t ssm_step(const SsmArgs& a, int B, cudaStream_t s, bool pdl);

// logits[b, row] = scale[row] · Σ_c q[row, c] · x16[b, c]   (int8 q [V, d], x16 plain fp16 [B, d]).
// d must be a multiple of 64.
struct LmHeadArgs {
  const int8_t* q = nullptr;
  const float* scale = nullptr;
  const void* x16 = nullptr;
  int B = 1;
  int64_t V = 0, d = 0;
  float* logits = nullptr;  // [B, V]
};
cudaError_t lm_head_i8(const LmHeadArgs& a, cudaStream_t s, bool pdl);

// Launch floor (dfssm bench): what a chain of `kernels` dependent kernels costs when they do
// nothing but what every decode kernel does around its body (launch_dependents, wait; one thread
// writes a word), launched like them (grid `blocks` x `threads`, PDL when `pdl`) in one CUDA
// graph. *ms_per_chain: milliseconds per graph replay (median of 5 timed batches of `reps`).
// The decode step's time minus this is what its kernel bodies cost.
cudaError_t launch_floor_ms(int kernels, int blocks, int threads, bool pdl, int reps, float* ms_per_chain);

// Embedding rows of T tokens (device ids): out[t, c] = emb[tok[t], c] · scale[tok[t]] (fp32 [T, d]),
// the prefill's residual stream at layer 0. d % 4 == 0.
cudaError_t embed_rows(const int32_t* tokens, int64_t T, const int8_t* emb, const float* scale, int64_t d, float* out,
                       cudaStream_t s);

// The five kernels' arguments of one decode layer (the runtime builds them per layer).
struct DecodeLayerArgs {
  NormArgs norm;  // mode 0 (fragments + partials for in_proj)
  SignGemvArgs in;
  SsmArgs ssm;
  NormArgs gnorm;  // mode 1 (for out_proj)
  SignGemvArgs out;
  int ns_in = 1, ns_out = 1;  // norm_splits of norm / gnorm
};

}  // namespace dfssm::kernels::cuda
