// CUDA packed-sign GEMV (the decode step's 1-bit projections) and the one-time sign repack:
// what each computes and the layouts are in decode.h ("packed signs", "fragments", "Folded
// norms"); the references the tests use are in src/kernels/cpu/ops_ref.cpp.
//   sign_gemv_kernel      any batch 1..8, the five-kernel layer (mode 0) or a folded input (1, 2)
//   sign_gemv_b1_kernel   batch 1 with a folded input: the decode hot path, lean (see there)
#include <cuda_fp16.h>

#include <cstdlib>

#include "kernels/cuda/decode.h"
#include "kernels/cuda/decode_common.cuh"

namespace dfssm::kernels::cuda {
namespace {

// ---- repack ----------------------------------------------------------------------------------
__global__ void repack_signs_kernel(const uint8_t* __restrict__ codes, int64_t row_bytes, int64_t R, int64_t C,
                                    int64_t nch, int64_t nwords, uint32_t* __restrict__ out) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= nwords) return;
  const int i = int(idx & 3), lane = int((idx >> 2) & 31);
  const int64_t rest = idx >> 7, ch = rest % nch, T = rest / nch;
  const int g = lane >> 2, t = lane & 3;
  const int64_t row = T * 16 + g + ((i & 1) ? 8 : 0);
  const int64_t kbase = ch * kChunkCols + 2 * t + ((i & 2) ? 8 : 0);
  uint32_t word = 0;
  if (row < R) {
    const uint8_t* rp = codes + row * row_bytes;
    for (int s = 0; s < 16; ++s) {
      const int64_t c0 = kbase + 16 * s, c1 = c0 + 1;
      const uint32_t b0 = c0 < C ? (rp[c0 >> 3] >> (c0 & 7)) & 1u : 0u;
      const uint32_t b1 = c1 < C ? (rp[c1 >> 3] >> (c1 & 7)) & 1u : 0u;
      word |= (b0 << s) | (b1 << (s + 16));
    }
  }
  out[idx] = word;  // idx = ((T*nch + ch)*32 + lane)*4 + i
}

// The 1-bit mma layout (decode.h "1-bit mma signs"): one uint2 per (tile, k-block, lane).
__global__ void repack_signs_b1_kernel(const uint8_t* __restrict__ codes, int64_t row_bytes, int64_t R, int64_t nkb,
                                       int64_t nwords, uint2* __restrict__ out) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= nwords) return;
  const int lane = int(idx & 31), g = lane >> 2, t = lane & 3;
  const int64_t kb = (idx >> 5) % nkb, T = (idx >> 5) / nkb;
  uint32_t w[2] = {0u, 0u};
  for (int h = 0; h < 2; ++h) {
    const int64_t row = T * 16 + g + 8 * h;
    if (row >= R) continue;
    const uint8_t* rp = codes + row * row_bytes + (kb * kKbCols + 32 * t) / 8;  // 32 columns = 4 bytes, LSB first
    w[h] = uint32_t(rp[0]) | (uint32_t(rp[1]) << 8) | (uint32_t(rp[2]) << 16) | (uint32_t(rp[3]) << 24);
  }
  out[idx] = make_uint2(w[0], w[1]);
}

// ---- packed-sign GEMV ------------------------------------------------------------------------
// Before the PDL wait each warp loads its first two chunks of signs, and each thread the
// epilogue operands of its first output (field a, the U row, the conv weights and this layer's
// conv state: nothing the previous kernels of the step write), so that with PDL the DRAM
// latency overlaps the previous kernel; the main loop keeps two chunks in flight. Right after
// the wait every activation load is issued at once (x fragments of the first two chunks, the
// residual input, the folded norm's parts): at batch 1 the kernel is a chain of dependent
// latencies (measured: 147 empty dependent kernels take 0.098 ms of the 0.91 ms step), and each
// L2 round trip taken in turn costs ~0.5 us.
struct EpiOperands {
  float a = 0.f, cb = 0.f;
  uint32_t u4[kMaxRank / 4];  // the U row's int8 values, 4 per word (packed: registers are scarce)
  float sv[8], wv[8];
  float nw = 0.f, nb = 1.f;  // NEXT: the next layer's norm weight and field b at this row
  uint32_t nv4[kMaxRank / 4];  // NEXT: the next in_proj's V row, packed as u4
  float res = 0.f;           // NEXT: res_in at (sequence, row); an activation: read after the wait
};

// Bytes k0 .. k0 + 3 of an int8 row of length r (0 past its end), packed little-endian.
__device__ __forceinline__ uint32_t pack_i8x4(const int8_t* row, int r, int k0) {
  uint32_t w = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    if (k0 + i < r) w |= uint32_t(uint8_t(row[k0 + i])) << (8 * i);
  return w;
}
__device__ __forceinline__ int unpack_i8(const uint32_t* w, int k) {
  return int(w[k >> 2] << (24 - 8 * (k & 3))) >> 24;  // sign-extending
}

template <bool NEXT>
__device__ __forceinline__ void load_epilogue(const SignGemvArgs& p, int64_t row, int n, EpiOperands& e) {
  e.a = p.a[row];
  if (NEXT) {
    e.nw = p.nw[row];
    e.nb = p.nb ? p.nb[row] : 1.f;
#pragma unroll
    for (int w = 0; w < kMaxRank / 4; ++w) e.nv4[w] = pack_i8x4(p.nV + row * p.nr, p.nr, 4 * w);
  }
#pragma unroll
  for (int w = 0; w < kMaxRank / 4; ++w) e.u4[w] = p.r > 0 ? pack_i8x4(p.U + row * p.r, p.r, 4 * w) : 0u;
  const bool conv = p.conv_D > 0 && row >= p.conv_lo && row < p.conv_lo + p.conv_D;
  const int64_t ch = row - p.conv_lo, D = p.conv_D;
  const int K = p.conv_K;
  const float* st = p.conv_state + int64_t(n) * p.conv_seq_stride;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    e.sv[k] = conv && k + 1 < K ? st[(k + 1) * D + ch] : 0.f;
    e.wv[k] = conv && k < K ? p.conv_w[k * D + ch] : 0.f;
  }
  e.cb = conv && p.conv_b ? p.conv_b[ch] : 0.f;
}

// The conv1d step + SiLU of output (row, sequence n) whose projection value is v, if the row is
// one of the conv channels: the state's taps (preloaded in e) shift by one, v enters last.
// FAST: silu with the fast reciprocal (the batch-1 kernel; the general kernel keeps silu).
template <bool FAST>
__device__ __forceinline__ void conv_epilogue(const SignGemvArgs& p, const EpiOperands& e, int64_t row, int n,
                                              float v) {
  if (p.conv_D <= 0 || row < p.conv_lo || row >= p.conv_lo + p.conv_D) return;
  const int64_t ch = row - p.conv_lo, D = p.conv_D;
  const int K = p.conv_K;
  float* st = p.conv_state + int64_t(n) * p.conv_seq_stride;
  float cacc = e.cb;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (k + 1 < K) cacc += e.wv[k] * e.sv[k];
    else if (k + 1 == K) cacc += e.wv[k] * v;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (k + 1 < K) st[k * D + ch] = e.sv[k];
  st[(K - 1) * D + ch] = v;
  p.conv_out[int64_t(n) * D + ch] = FAST ? silu_fast(cacc) : silu(cacc);
}

// Folded norm, after the wait: per sequence n, the sums over the producer's parts of the
// low-rank partials (zsum) and rstd (rsq). A warp per (n, k), its lanes over the parts (float4
// of 4 consecutive parts, fixed order); U outputs per warp have their loads issued together.
__device__ __forceinline__ void reduce_parts(const SignGemvArgs& p, float* zsum, float* rsq) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, KS = blockDim.x >> 5;
  const int R1 = p.r + 1, total = p.B * R1, np = p.nparts;
  constexpr int U = 4;
  for (int o0 = warp; o0 < total; o0 += KS * U) {
    float4 v[U][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int o = o0 + u * KS;
      const float* src = p.parts + (int64_t(o / R1) * (kMaxRank + 1) + o % R1) * kMaxParts;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int i = 4 * lane + 128 * h;
        v[u][h] = (o < total && i < np) ? *reinterpret_cast<const float4*>(src + i) : make_float4(0, 0, 0, 0);
        if (i + 1 >= np) v[u][h].y = 0.f;  // parts past nparts: not this step's (or never written)
        if (i + 2 >= np) v[u][h].z = 0.f;
        if (i + 3 >= np) v[u][h].w = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int o = o0 + u * KS;
      if (o >= total) break;  // uniform per warp
      float t = 0.f;
#pragma unroll
      for (int h = 0; h < 2; ++h) t += (v[u][h].x + v[u][h].y) + (v[u][h].z + v[u][h].w);
      t = warp_sum(t);
      const int n = o / R1, k = o % R1;
      if (lane == 0) {
        if (k < p.r) zsum[n * kMaxRank + k] = t;
        else rsq[n] = rsqrtf(t / float(p.n_norm) + p.eps);
      }
    }
  }
}

// The GEMV's operand loads and its main loop (shared by sign_gemv_kernel and the batch-1 kernel).
// One chunk of signs for the MT tiles from tile0 (zeros past the warp's chunks or the tiles).
template <int MT>
__device__ __forceinline__ void load_sign_chunk(const uint4* W, int tile0, int tiles, int nch, int ch, int ch1,
                                                uint4 (&q)[MT]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int T = tile0 + m;
    q[m] = (ch < ch1 && T < tiles) ? __ldg(&W[(int64_t(T) * nch + ch) * 32 + lane]) : make_uint4(0, 0, 0, 0);
  }
}
// One chunk (16 steps) of x fragments; lanes of sequences >= B (inactive) hold zeros.
__device__ __forceinline__ void load_x_chunk(const uint2* XF, int ch, int ch1, bool active, uint2 (&bx)[16]) {
  const uint2* xc = XF + int64_t(ch) * 16 * 32 + (threadIdx.x & 31);
#pragma unroll
  for (int s = 0; s < 16; ++s) bx[s] = (active && ch < ch1) ? xc[s * 32] : make_uint2(0, 0);
}
// Phase 2: the 1-bit GEMV over chunks ch0 .. ch1-1 on tensor cores, two chunks of signs and of x
// in flight (cur/nxt and bxa/bxb hold the first two, loaded by the caller). Two accumulators per
// tile (even and odd steps s): two independent chains of dependent mma instead of one twice as
// long (at batch 1 the chain's latency is on the critical path). acc: their sum.
template <int MT, bool TWO>
__device__ __forceinline__ void sign_mma_chunk(const uint4 (&q)[MT], const uint2 (&bx)[16], float (&acc)[MT][4],
                                               float (&acc2)[MT][4]) {
#pragma unroll
  for (int s = 0; s < 16; ++s)
#pragma unroll
    for (int m = 0; m < MT; ++m)
      mma16816((TWO && (s & 1)) ? acc2[m] : acc[m], sign_half2(q[m].x << (15 - s)), sign_half2(q[m].y << (15 - s)),
               sign_half2(q[m].z << (15 - s)), sign_half2(q[m].w << (15 - s)), bx[s].x, bx[s].y);
}
// Phase 2: the 1-bit GEMV over chunks ch0 .. ch1-1 on tensor cores, two chunks of signs and of x
// in flight (the caller loaded the first two into cur/bxa and nxt/bxb; the loop runs them in
// turn, unrolled by two so that the buffers are never copied). With one tile, two accumulators
// (even and odd steps s): two independent chains of dependent mma instead of one twice as long
// (at batch 1 the chain's latency is on the critical path); MT >= 2 tiles are MT chains already
// (and the registers are scarce). acc: the sum.
template <int MT, bool TWO = (MT == 1)>
__device__ __forceinline__ void sign_mma_chunks(const uint4* W, const uint2* XF, int tile0, int tiles, int nch,
                                                int ch0, int ch1, bool active, uint4 (&cur)[MT], uint4 (&nxt)[MT],
                                                uint2 (&bxa)[16], uint2 (&bxb)[16], float (&acc)[MT][4]) {
  float acc2[MT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[m][j] = acc2[m][j] = 0.f;
  for (int ch = ch0; ch < ch1; ch += 2) {
    sign_mma_chunk<MT, TWO>(cur, bxa, acc, acc2);
    if (ch + 2 < ch1) {
      load_sign_chunk<MT>(W, tile0, tiles, nch, ch + 2, ch1, cur);
      load_x_chunk(XF, ch + 2, ch1, active, bxa);
    }
    if (ch + 1 >= ch1) break;
    sign_mma_chunk<MT, TWO>(nxt, bxb, acc, acc2);
    if (ch + 3 < ch1) {
      load_sign_chunk<MT>(W, tile0, tiles, nch, ch + 3, ch1, nxt);
      load_x_chunk(XF, ch + 3, ch1, active, bxb);
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[m][j] += acc2[m][j];
}

// FOLD: 0 the five-kernel layer (zp from norm_prologue), 1 folded-norm input (parts), 2 folded
// input and the next layer's input (out_proj). Separate instantiations: the unfolded kernel
// carries none of the folded code (measured: it costs registers and ~10% at batch 8).
// MT = 2 (the wide in_proj: > 4 tiles per SM) runs at most 4 warps per block and keeps 3 blocks
// per SM: 266 blocks at 1.3B must all be resident (264 would leave a second wave).
// TIGHT (FOLD = 2 only): at most 128 registers, so that a block fits beside a running block of
// the previous kernel of the chain (PDL pre-launch); see sign_gemv.
template <int MT, int FOLD, bool TIGHT>
__global__ void __launch_bounds__(MT == 2 ? 128 : 256, TIGHT ? (MT == 2 ? 4 : 2) : (MT == 2 ? 3 : 1)) sign_gemv_kernel(SignGemvArgs p, int tiles, int nch) {
  constexpr bool fold = FOLD >= 1, NEXT = FOLD == 2;
  static_assert(!TIGHT || NEXT, "only out_proj with the next layer's input runs register-capped");
  __shared__ float red[8][MT][4][32];
  __shared__ float zs[kMaxBatch * kMaxRank];
  __shared__ float zsum[fold ? kMaxBatch * kMaxRank : 1];
  __shared__ float rsq[fold ? kMaxBatch : 1];
  // NEXT: per output, its contributions to the next layer's parts (V' ⊙ w' ⊙ x, and x²).
  __shared__ float contrib[NEXT ? MT * 16 * kMaxBatch : 1][kMaxRank + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, KS = blockDim.x >> 5;
  const int g = lane >> 2;
  // This thread's first output of the epilogue and first task of the parts reduction. (Spreading
  // a block's few batch-1 outputs over its warps, lane * KS + warp, was measured slower: 0.862
  // against 0.825 ms/step in one call; removed.)
  const int me = int(threadIdx.x);
  const int tile0 = blockIdx.x * MT;
  const int per = nch / KS, ch0 = warp * per, ch1 = ch0 + per;
  const uint4* W = reinterpret_cast<const uint4*>(p.w);
  const uint2* XF = reinterpret_cast<const uint2*>(p.xf);
  const int B = p.B, nout = MT * 16 * B;

  // Output o -> (tile m, row in tile rr, sequence n).
  auto out_row = [&](int o, int& m, int& rr, int& n) -> int64_t {
    m = o / (16 * B);
    const int rem = o % (16 * B);
    rr = rem / B, n = rem % B;
    const int T = tile0 + m;
    const int64_t row = int64_t(T) * 16 + rr;
    return (T < tiles && row < p.R) ? row : -1;
  };

  trace_mark(p.trace, kEntry);
  // ---- phase 0 (before the wait): weights and this thread's first epilogue operands ----
  uint4 cur[MT], nxt[MT];
  load_sign_chunk<MT>(W, tile0, tiles, nch, ch0, ch1, cur);
  load_sign_chunk<MT>(W, tile0, tiles, nch, ch0 + 1, ch1, nxt);
  EpiOperands first;
  int64_t first_row = -1;
  int first_n = 0;
  {
    int m, rr;
    first_row = me < nout ? out_row(me, m, rr, first_n) : -1;
    if (first_row >= 0) load_epilogue<NEXT>(p, first_row, first_n, first);
  }
  // The low-rank scales of this thread's first (sequence, k) of phase 1 (weights: before the wait).
  const int k_first = p.r > 0 ? int(threadIdx.x) % p.r : 0;
  const bool has_first_k = int(threadIdx.x) < B * p.r;
  const float vs_first = has_first_k ? p.vs[k_first] : 0.f, us_first = has_first_k ? p.us[k_first] : 0.f;
  pdl_trigger();
  pdl_wait();
  trace_mark(p.trace, kWaited);

  // ---- right after the wait, every activation load at once: the first two chunks of x
  // fragments, this thread's residual input and (phase 1) the low-rank partials. Issued together
  // they cost one L2 round trip instead of one per chunk and one more in the epilogue. ----
  const bool active = g < B;
  uint2 bxa[16], bxb[16];
  load_x_chunk(XF, ch0, ch1, active, bxa);
  load_x_chunk(XF, ch0 + 1, ch1, active, bxb);
  if constexpr (NEXT)
    if (first_row >= 0) first.res = p.res_in[int64_t(first_n) * p.R + first_row];

  // ---- phase 1: low-rank partials (summed over the prologue's splits, or the folded norm's
  // parts, which also give rstd), times vs[k] · us[k] (this thread's first pair preloaded) ----
  auto scaled = [&](float x, int idx, int k) {
    const bool first_k = idx == int(threadIdx.x);
    return x * (first_k ? vs_first : p.vs[k]) * (first_k ? us_first : p.us[k]);
  };
  if constexpr (fold) {
    reduce_parts(p, zsum, rsq);
    __syncthreads();
    for (int idx = threadIdx.x; idx < B * p.r; idx += blockDim.x) {
      const int n = idx / p.r, k = idx % p.r;
      zs[idx] = scaled(zsum[n * kMaxRank + k] * rsq[n], idx, k);
    }
  } else {
    for (int idx = threadIdx.x; idx < B * p.r; idx += blockDim.x) {
      const int n = idx / p.r, k = idx % p.r;
      float s = 0;
      for (int sp = 0; sp < p.nsplit; ++sp) s += p.zp[(int64_t(n) * p.nsplit + sp) * p.r + k];
      zs[idx] = scaled(s, idx, k);
    }
  }

  if (p.trace) __syncthreads();  // (debug timeline only: phase 1 complete in the block)
  trace_mark(p.trace, kPhase1);
  // ---- phase 2: the 1-bit GEMV on tensor cores ----
  float acc[MT][4];
  sign_mma_chunks<MT>(W, XF, tile0, tiles, nch, ch0, ch1, active, cur, nxt, bxa, bxb, acc);

  // ---- phase 3: partials to shared memory; one thread per output (row, sequence) sums them in
  // a fixed order (deterministic) and runs the epilogue: field a, low-rank up, conv + SiLU ----
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < 4; ++j) red[warp][m][j][lane] = acc[m][j];
  __syncthreads();
  trace_mark(p.trace, kCompute);
  for (int o = me; o < nout; o += blockDim.x) {
    int m, rr, n;
    const int64_t row = out_row(o, m, rr, n);
    if (row < 0) {
      if constexpr (NEXT)
        for (int k = 0; k <= kMaxRank; ++k) contrib[o][k] = 0.f;
      continue;
    }
    EpiOperands e;
    if (o == me) {
      e = first;
    } else {
      load_epilogue<NEXT>(p, row, n, e);
      if constexpr (NEXT) e.res = p.res_in[int64_t(n) * p.R + row];
    }
    const int ln = (rr & 7) * 4 + (n >> 1), j = (rr >= 8 ? 2 : 0) + (n & 1);
    float sum = 0;
    for (int w = 0; w < KS; ++w) sum += red[w][m][j][ln];
    float v = e.a * sum;
    if constexpr (fold) v *= rsq[n];
    if (p.r > 0) {
      float lr = 0;
#pragma unroll
      for (int k = 0; k < kMaxRank; ++k)
        if (k < p.r) lr += float(unpack_i8(e.u4, k)) * zs[n * p.r + k];
      v += lr;
    }
    conv_epilogue<false>(p, e, row, n, v);
    p.y[int64_t(n) * p.ldy + row] = v;
    if constexpr (NEXT) {  // residual, and the next layer's in_proj input (column `row` of it)
      const float x = e.res + v;
      p.res_out[int64_t(n) * p.R + row] = x;
      const float xw = e.nw * x;
      const int c = int(row), s16 = c >> 4, cc = c & 15, t = (cc & 7) >> 1, hi = cc >> 3;
      reinterpret_cast<__half*>(p.nxf)[((int64_t(s16) * 32 + n * 4 + t) * 2 + hi) * 2 + (c & 1)] =
          __float2half_rn(e.nb * xw);
#pragma unroll
      for (int k = 0; k < kMaxRank; ++k)
        if (k < p.nr) contrib[o][k] = float(unpack_i8(e.nv4, k)) * xw;
      contrib[o][p.nr] = x * x;
    }
  }
  if constexpr (NEXT) {  // this block's parts: per (sequence, k), its rows in a fixed order
    __syncthreads();
    const int R1 = p.nr + 1;
    for (int idx = me; idx < B * R1; idx += blockDim.x) {
      const int n = idx / R1, k = idx % R1;
      float s = 0.f;
      for (int m = 0; m < MT; ++m)
        for (int rr = 0; rr < 16; ++rr) s += contrib[m * 16 * B + rr * B + n][k];
      p.nparts_out[(int64_t(n) * (kMaxRank + 1) + k) * kMaxParts + blockIdx.x] = s;
    }
  }
  if (p.trace) {
    __syncthreads();
    trace_mark(p.trace, kEpilogue);
  }
}

// ---- batch-1 folded GEMV -------------------------------------------------------------------
// The decode step's hot path (B = 1, folded norm: modes 1 and 2 of sign_gemv_kernel, same
// arithmetic up to rounding order). At batch 1 a kernel's time is the length of its post-wait
// instruction chain (~5 cycles per instruction with 2-3 warps per scheduler; docs/runtime.md),
// so this kernel keeps only what batch 1 needs: no divisions (output o = tile row, sequence 0),
// one barrier between the main loop and the epilogue, and the folded norm's parts reduced after
// the main loop (their loads are issued with the x loads, so their latency overlaps the mma).
//   pre-wait   signs of the first two chunks; output o = threadIdx.x < MT*16: its epilogue
//              operands, into shared memory; zs[r .. kMaxRank) = 0 (so the low-rank loop runs
//              whole words)
//   post-wait  x fragments (2 chunks), res_in (NEXT), this warp's parts: outputs k = warp +
//              KS*u (u < kU) of the r + 1 sums (k < r: Vᵀx partials, k = r: Σx²)
//   loop       sign_mma_chunks
//   reduce     per k: Σ parts (warp_sum) -> zs[k] = Σ · vs[k] · us[k], or rstd; the warp's
//              partial dots (lanes t = 0: column 0 of the mma = sequence 0) -> red
//   epilogue   v = rstd · (a · Σ_warps red + Σ_k U[row,k] zs[k]); conv; NEXT: residual, next
//              input fragment and its parts (as sign_gemv_kernel)
// Registers decide residency: with PDL a block starts (and loads its weights) while the previous
// kernel runs only if it fits beside that kernel's blocks. in_proj (MT = 2, 266 blocks at 1.3B)
// follows out_proj (one 256 x 128-register block per SM), so it is capped at 128 registers: two
// blocks beside out_proj's on every SM. What would not fit in them lives in shared memory (the
// epilogue operands, written before the wait) or is dropped (the second accumulator chain when
// MT = 2; at most kB1Sums(MT) parts' sums per warp: ranks up to 19 at 1.3B, else sign_gemv runs
// the general kernel).
__host__ __device__ constexpr int kB1Sums(int MT) { return MT == 2 ? 5 : 3; }
// (Two accumulator chains per tile at MT = 2 as well, as an experiment: 44 bytes of spills at the
// 128-register cap, 0.6885 against 0.6674-0.6709 ms/step; removed.)
//
// QIN: the input as 1-bit planes (decode.h "1-bit activation planes"): each warp owns k-blocks
// [warp*qper, +qper) of 128 columns (kQW at most). After the wait, the k-block's 8 group
// exponents (one broadcast load), then lane (g, t)'s four plane half-words, chosen by the
// alignment shifts (groups 2t, 2t + 1; planes g, g + 8): a second, dependent L2 round trip.
// (Measured slower: each thread aligning one group into shared memory, one round trip and a
// block barrier: in_proj 5.22 against 4.88 us per layer.) Per tile and k-block two
// mma.m16n8k128.b1 (planes 0-7, 8-15) whose counts combine with the plane weights (integers,
// exact) and the k-block's scale 2^(E-15); the sum over a row's 4 lanes t is taken once after
// the loop. T = Σ x̂ from the planes' popcounts; the row's value is 2·Σ - T.
// QOUT (NEXT, MT = 1): the next input as planes: the block's 16 rows are one group of the next
// input's columns: its max over warp 0's lanes, e, q, 16 ballots (one per plane) -> half-words.
constexpr int kQW = 4;
template <int MT, bool NEXT, bool TIGHT, bool QIN = false, bool QOUT = false>
__global__ void __launch_bounds__(MT == 2 ? 128 : 256, (TIGHT || (MT == 2 && !NEXT)) ? (MT == 2 ? 4 : 2) : (MT == 2 ? 3 : 1))
    sign_gemv_b1_kernel(SignGemvArgs p, int tiles, int nch, int qper) {
  static_assert(!QOUT || (NEXT && MT == 1), "planes out: out_proj at one tile per block");
  static_assert(!(QIN && NEXT) || MT == 1, "planes in, out_proj: one tile per block");
  constexpr int NOUT = MT * 16;
  constexpr int kU = kB1Sums(MT);  // parts' sums per warp (KS >= 4 / 8 warps)
  __shared__ alignas(16) unsigned char epi_raw[NOUT * sizeof(EpiOperands)];
  EpiOperands* epi = reinterpret_cast<EpiOperands*>(epi_raw);
  __shared__ float red[8][NOUT];
  __shared__ float zs[kMaxRank];
  __shared__ float rstd_s, tq_s[8];
  __shared__ float contrib[NEXT ? NOUT : 1][kMaxRank + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, KS = blockDim.x >> 5;
  const int o = threadIdx.x;  // this thread's epilogue output (if o < NOUT): tile o >> 4, row o & 15
  const int tile0 = blockIdx.x * MT;
  const int per = nch / KS, ch0 = warp * per, ch1 = ch0 + per;
  const uint4* W = reinterpret_cast<const uint4*>(p.w);
  const uint2* XF = reinterpret_cast<const uint2*>(p.xf);
  const int R1 = p.r + 1;
  const int nkb = int(p.C / kKbCols), kb0 = warp * qper;
  trace_mark(p.trace, kEntry);

  // ---- pre-wait: weights ----
  uint4 cur[MT], nxt[MT];
  uint2 aq[QIN ? MT : 1][QIN ? kQW : 1];
  if constexpr (QIN) {
    const uint2* WQ = reinterpret_cast<const uint2*>(p.wq);
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int i = 0; i < kQW; ++i) {
        const int T = tile0 + m, kb = kb0 + i;
        aq[m][i] = (i < qper && kb < nkb && T < tiles) ? __ldg(&WQ[(int64_t(T) * nkb + kb) * 32 + lane]) : make_uint2(0, 0);
      }
  } else {
    load_sign_chunk<MT>(W, tile0, tiles, nch, ch0, ch1, cur);
    load_sign_chunk<MT>(W, tile0, tiles, nch, ch0 + 1, ch1, nxt);
  }
  const int T = tile0 + (o >> 4);
  const int64_t row = int64_t(T) * 16 + (o & 15);
  const bool has_row = o < NOUT && T < tiles && row < p.R;
  if (has_row) {
    EpiOperands e;
    load_epilogue<NEXT>(p, row, 0, e);
    epi[o] = e;
  }
  float vsus[kU];  // this warp's lane 0: vs[k] · us[k] of its sums k < r
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const int k = warp + KS * u;
    vsus[u] = (lane == 0 && k < p.r) ? p.vs[k] * p.us[k] : 0.f;
  }
  if (o >= p.r && o < kMaxRank) zs[o] = 0.f;
  pdl_trigger();
  pdl_wait();
  trace_mark(p.trace, kWaited);

  // ---- post-wait: every activation load at once ----
  const bool active = (lane >> 2) == 0;  // sequence 0's lanes of the x fragments
  uint2 bxa[QIN ? 1 : 16], bxb[QIN ? 1 : 16];
  uint2 bq[QIN ? kQW : 1];
  float sq[QIN ? kQW : 1];
  if constexpr (QIN) {
    const uint2* EXP = reinterpret_cast<const uint2*>(p.xq_exp);  // 8 exponents per k-block
    const uint16_t* PL = static_cast<const uint16_t*>(p.xq);
    const int t = lane & 3, g = lane >> 2;
    uint2 ev[kQW];
#pragma unroll
    for (int i = 0; i < kQW; ++i) ev[i] = (i < qper && kb0 + i < nkb) ? EXP[kb0 + i] : make_uint2(0x82828282u, 0x82828282u);
#pragma unroll
    for (int i = 0; i < kQW; ++i) {
      const int kb = kb0 + i;
      // E = the largest of the 8 signed bytes; e0, e1 = those of groups 2t, 2t + 1.
      uint32_t m4 = __vmaxs4(ev[i].x, ev[i].y);
      m4 = __vmaxs4(m4, __byte_perm(m4, 0, 0x3232));
      m4 = __vmaxs4(m4, __byte_perm(m4, 0, 0x1111));
      const int E = int(int8_t(m4 & 0xffu));
      const uint32_t ew = t < 2 ? ev[i].x : ev[i].y;
      const int e0 = int(int8_t((ew >> (16 * (t & 1))) & 0xffu)), e1 = int(int8_t((ew >> (16 * (t & 1) + 8)) & 0xffu));
      const int d0 = E - e0, d1 = E - e1;
      const int G0 = (kb * 8 + 2 * t) * 16, G1 = G0 + 16;
      const bool ok = i < qper && kb < nkb;
      const uint32_t x0 = ok ? PL[G0 + min(g + d0, 15)] : 0u, x1 = ok ? PL[G1 + min(g + d1, 15)] : 0u;
      const uint32_t y0 = ok ? PL[G0 + min(g + 8 + d0, 15)] : 0u, y1 = ok ? PL[G1 + min(g + 8 + d1, 15)] : 0u;
      bq[i] = make_uint2(x0 | (x1 << 16), y0 | (y1 << 16));
      sq[i] = ok ? ldexpf(1.f, E - 15) : 0.f;
    }
  } else {
    load_x_chunk(XF, ch0, ch1, active, bxa);
    load_x_chunk(XF, ch0 + 1, ch1, active, bxb);
  }
  const float res = NEXT && has_row ? p.res_in[row] : 0.f;
  const int np = p.nparts;  // <= 128 (sign_gemv): one float4 of parts per lane and sum
  float4 pv[kU];
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const int k = warp + KS * u, i = 4 * lane;
    pv[u] = (k < R1 && i < np) ? *reinterpret_cast<const float4*>(p.parts + int64_t(k) * kMaxParts + i)
                               : make_float4(0, 0, 0, 0);
    if (i + 1 >= np) pv[u].y = 0.f;  // parts past nparts: not this step's
    if (i + 2 >= np) pv[u].z = 0.f;
    if (i + 3 >= np) pv[u].w = 0.f;
  }

  // ---- main loop ----
  float acc[MT][4];
  if constexpr (QIN) {
    // Plane weights of this lane's columns 2t, 2t + 1 of the two mma (planes 2t, 2t+1, 2t+8, 2t+9).
    const int t = lane & 3, w0 = 1 << (2 * t), w1 = w0 << 1, w2 = w0 << 8, w3 = t == 3 ? -32768 : w0 << 9;
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.f;
#pragma unroll
    for (int i = 0; i < kQW; ++i)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        int lo[4], hi[4];
        bmma128(lo, aq[m][i].x, aq[m][i].y, bq[i].x);
        bmma128(hi, aq[m][i].x, aq[m][i].y, bq[i].y);
        const int pg = lo[0] * w0 + lo[1] * w1 + hi[0] * w2 + hi[1] * w3;  // row g (exact: < 2^24)
        const int pg8 = lo[2] * w0 + lo[3] * w1 + hi[2] * w2 + hi[3] * w3;  // row g + 8
        acc[m][0] = fmaf(sq[i], float(pg), acc[m][0]);
        acc[m][2] = fmaf(sq[i], float(pg8), acc[m][2]);
      }
#pragma unroll
    for (int m = 0; m < MT; ++m)  // sum over the row's 4 lanes t (their planes)
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        acc[m][j] += __shfl_xor_sync(0xffffffffu, acc[m][j], 1);
        acc[m][j] += __shfl_xor_sync(0xffffffffu, acc[m][j], 2);
      }
    // T: this lane's planes g and g + 8 over its 32 columns, weighted; summed over the warp below.
    const int g = lane >> 2, wg = 1 << g, wg8 = g == 7 ? -32768 : 1 << (g + 8);
    float tq = 0.f;
#pragma unroll
    for (int i = 0; i < kQW; ++i) tq = fmaf(sq[i], float(__popc(bq[i].x) * wg + __popc(bq[i].y) * wg8), tq);
    tq = warp_sum(tq);
    if (lane == 0) tq_s[warp] = tq;
  } else {
    sign_mma_chunks<MT>(W, XF, tile0, tiles, nch, ch0, ch1, active, cur, nxt, bxa, bxb, acc);
  }

  // ---- the parts' sums and the warp's partial dots ----
  float ts[kU];
#pragma unroll
  for (int u = 0; u < kU; ++u) ts[u] = (pv[u].x + pv[u].y) + (pv[u].z + pv[u].w);
  warp_sum_n<kU>(ts);
  if (lane == 0)
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int k = warp + KS * u;
      if (k < p.r) zs[k] = ts[u] * vsus[u];
      else if (k == p.r) rstd_s = rsqrtf(ts[u] / float(p.n_norm) + p.eps);
    }
  if (p.trace) __syncthreads();  // (debug timeline only: the sums complete in the block)
  trace_mark(p.trace, kPhase1);
  if ((lane & 3) == 0) {  // column 0 of the mma (sequence 0): rows g and g + 8 of each tile
    const int g = lane >> 2;
#pragma unroll
    for (int m = 0; m < MT; ++m) red[warp][m * 16 + g] = acc[m][0], red[warp][m * 16 + g + 8] = acc[m][2];
  }
  __syncthreads();
  trace_mark(p.trace, kCompute);

  // ---- epilogue (threads o < NOUT) ----
  float uq = 0.f;  // QOUT: this output's next-layer input value
  if (has_row) {
    const EpiOperands& e = epi[o];
    float sum = 0.f;
    for (int w = 0; w < KS; ++w) sum += red[w][o];
    if constexpr (QIN) {  // S = 2W - 1
      float tq = 0.f;
      for (int w = 0; w < KS; ++w) tq += tq_s[w];
      sum = 2.f * sum - tq;
    }
    float lr[4] = {0.f, 0.f, 0.f, 0.f};  // four chains (one per byte of a U word)
#pragma unroll
    for (int w = 0; w < kMaxRank / 4; ++w)
      if (4 * w < p.r)
#pragma unroll
        for (int j = 0; j < 4; ++j) lr[j] += float(unpack_i8(e.u4, 4 * w + j)) * zs[4 * w + j];
    const float v = rstd_s * (e.a * sum + ((lr[0] + lr[1]) + (lr[2] + lr[3])));
    conv_epilogue<true>(p, e, row, 0, v);
    p.y[row] = v;
    if constexpr (NEXT) {  // residual, and the next layer's in_proj input (column `row` of it)
      const float x = res + v;
      p.res_out[row] = x;
      const float xw = e.nw * x;
      if constexpr (QOUT) {
        uq = e.nb * xw;
      } else {
        const int c = int(row), s16 = c >> 4, cc = c & 15, t = (cc & 7) >> 1, hi = cc >> 3;
        reinterpret_cast<__half*>(p.nxf)[((int64_t(s16) * 32 + t) * 2 + hi) * 2 + (c & 1)] = __float2half_rn(e.nb * xw);
      }
#pragma unroll
      for (int w = 0; w < kMaxRank / 4; ++w)
        if (4 * w < p.nr)
#pragma unroll
          for (int j = 0; j < 4; ++j) contrib[o][4 * w + j] = float(unpack_i8(e.nv4, 4 * w + j)) * xw;
      contrib[o][p.nr] = x * x;  // (after the words: they may have written a zero there)
    }
  } else if (NEXT && o < NOUT) {
    for (int k = 0; k <= p.nr; ++k) contrib[o][k] = 0.f;
  }
  if constexpr (QOUT) {  // the next input's planes: this block's 16 rows are group blockIdx.x
    if (warp == 0) {
      int e;
      const uint32_t mine = plane_group16(uq, e);  // (lanes >= 16 and rows past R: 0; lanes 0-15 are the group)
      if (lane < 16) static_cast<uint16_t*>(p.nxq)[int64_t(blockIdx.x) * 16 + lane] = uint16_t(mine);
      if (lane == 0) p.nxq_exp[blockIdx.x] = int8_t(e);
    }
  }
  if constexpr (NEXT) {  // this block's parts: per k, its rows in a fixed order (two chains)
    __syncthreads();
    if (o <= p.nr) {
      float s0 = 0.f, s1 = 0.f;
#pragma unroll
      for (int rr = 0; rr < NOUT; rr += 2) s0 += contrib[rr][o], s1 += contrib[rr + 1][o];
      p.nparts_out[int64_t(o) * kMaxParts + blockIdx.x] = s0 + s1;
    }
  }
  if (p.trace) {
    __syncthreads();
    trace_mark(p.trace, kEpilogue);
  }
}

}  // namespace

cudaError_t repack_signs(const uint8_t* codes, int64_t row_bytes, int64_t R, int64_t C, void* out, cudaStream_t s) {
  const int64_t tiles = round_up(R, 16) / 16, nch = round_up(C, kChunkCols) / kChunkCols;
  const int64_t nwords = tiles * nch * 32 * 4;
  const int threads = 256;
  repack_signs_kernel<<<unsigned((nwords + threads - 1) / threads), threads, 0, s>>>(
      codes, row_bytes, R, C, nch, nwords, static_cast<uint32_t*>(out));
  return cudaGetLastError();
}

cudaError_t repack_signs_b1(const uint8_t* codes, int64_t row_bytes, int64_t R, int64_t C, void* out, cudaStream_t s) {
  if (C % kKbCols != 0 || row_bytes * 8 < C) return cudaErrorInvalidValue;
  const int64_t tiles = round_up(R, 16) / 16, nkb = C / kKbCols, nwords = tiles * nkb * 32;
  const int threads = 256;
  repack_signs_b1_kernel<<<unsigned((nwords + threads - 1) / threads), threads, 0, s>>>(
      codes, row_bytes, R, nkb, nwords, static_cast<uint2*>(out));
  return cudaGetLastError();
}

namespace {
int gemv_mt(int64_t R) {
  const int64_t tiles = round_up(R, 16) / 16;
  int sms = 132;
  {
    int dev = 0;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  }
  static const int force_mt = [] {  // debug switch: DFSSM_CUDA_MT=1|2 forces the tile count per block
    const char* e = std::getenv("DFSSM_CUDA_MT");
    return e ? std::atoi(e) : 0;
  }();
  return (force_mt == 2 || (force_mt != 1 && tiles >= 4 * sms)) ? 2 : 1;
}
}  // namespace

int sign_gemv_grid(int64_t R) {
  const int64_t tiles = round_up(R, 16) / 16, mt = gemv_mt(R);
  return int((tiles + mt - 1) / mt);
}

namespace {
// Warps per block: splitting the chunks, at least 2 chunks per warp where possible (MT = 2:
// launch bound 128 threads).
int gemv_warps(int nch, int mt) {
  for (int k : {8, 4, 2})
    if (nch % k == 0 && nch / k >= 2 && (mt == 1 || k <= 4)) return k;
  return 1;
}
// Whether the lean batch-1 kernel runs these arguments' shape (mode >= 1: folded input); qin:
// with the input as planes (then *qper: the k-blocks per warp).
bool lean_shape(int64_t R, int64_t C, int r, int nparts, bool qin, int* qper) {
  const int nch = int(round_up(C, kChunkCols) / kChunkCols), mt = gemv_mt(R), KS = gemv_warps(nch, mt);
  if (nparts > 128 || KS < (mt == 2 ? 4 : 8) || nch % (2 * KS) != 0 || r + 1 > kB1Sums(mt) * KS)
    return false;
  if (!qin) return true;
  const int nkb = int(C / kKbCols), per = (nkb + KS - 1) / KS;
  if (C % kKbCols != 0 || per > kQW) return false;
  if (qper) *qper = per;
  return true;
}
bool lean_env() {  // debug switch: DFSSM_CUDA_LEAN=0 runs the general kernel at batch 1
  static const bool on = [] {
    const char* e = std::getenv("DFSSM_CUDA_LEAN");
    return !(e && std::atoi(e) == 0);
  }();
  return on;
}
}  // namespace

bool planes_supported_out(int64_t R, int64_t C, int r, int H, int P) {
  // out_proj reads ssm_step's planes (H * 2 parts) and writes the next input's (R % 128 == 0).
  return lean_env() && C == int64_t(H) * P && C % kKbCols == 0 && (P / 2) % 16 == 0 && P / 2 <= 32 &&
         R % kKbCols == 0 && gemv_mt(R) == 1 && lean_shape(R, C, r, 2 * H, true, nullptr);
}

bool planes_supported(int64_t R_in, int64_t C_in, int r_in, int64_t R_out) {
  // in_proj reads planes with out_proj's or norm_prologue's parts (<= 128 of them); out_proj
  // writes them one tile (one group of 16 columns) per block.
  const int64_t out_blocks = sign_gemv_grid(R_out);
  return lean_env() && R_out == C_in && R_out % kKbCols == 0 && gemv_mt(R_out) == 1 &&
         out_blocks <= 128 && lean_shape(R_in, C_in, r_in, int(out_blocks), true, nullptr);
}

cudaError_t sign_gemv(const SignGemvArgs& a, cudaStream_t s, bool pdl) {
  if (a.B < 1 || a.B > kMaxBatch || a.r > kMaxRank || (a.conv_D > 0 && (a.conv_K < 1 || a.conv_K > 8)))
    return cudaErrorInvalidValue;
  if (a.parts && (a.nparts < 1 || a.nparts > kMaxParts || a.n_norm < 1)) return cudaErrorInvalidValue;
  const bool next = a.nxf != nullptr || a.nxq != nullptr, qin = a.xq != nullptr, qout = a.nxq != nullptr;
  if (next && (!a.parts || !a.res_in || !a.res_out || !a.nw || !a.nparts_out || a.nr < 0 || a.nr > kMaxRank ||
               (a.nr > 0 && !a.nV) || sign_gemv_grid(a.R) > kMaxParts))
    return cudaErrorInvalidValue;
  const int tiles = int(round_up(a.R, 16) / 16), nch = int(round_up(a.C, kChunkCols) / kChunkCols);
  const int mt = gemv_mt(a.R);
  const int KS = gemv_warps(nch, mt);
  const dim3 block{unsigned(32 * KS)};
  const int mode = next ? 2 : a.parts ? 1 : 0;
  // Register cap (TIGHT) for out_proj with the next layer's input (mode 2), the default; debug
  // switch DFSSM_CUDA_TIGHT=0 turns it off. Measured (H200, 1.3B, batch 1, same call): 0.881
  // ms/step capped against 0.911 uncapped; the trace (DFSSM_CUDA_TRACE) shows why: capped,
  // out_proj's blocks fit beside the SSM kernel's and all pass the PDL wait together (the last
  // 0.7 us after the first, against 2.6 uncapped). Capping in_proj as well only added spills to
  // its main loop and slowed batch 8 (1.735 vs 1.631 ms/step), so modes 0 and 1 are never capped.
  static const bool tight = [] {
    const char* e = std::getenv("DFSSM_CUDA_TIGHT");
    return !(e && std::atoi(e) == 0);
  }();
  const dim3 grid{unsigned(mt == 2 ? (tiles + 1) / 2 : tiles)};
  int qper = 0;
  const bool lean = a.lean && lean_env() && a.B == 1 && mode >= 1 && lean_shape(a.R, a.C, a.r, a.nparts, qin, &qper);
  if (qin && (!lean || !a.wq || !a.xq_exp || (mode == 2 && mt != 1))) return cudaErrorInvalidValue;  // planes: lean only
  if (qout && (!lean || mt != 1 || a.R % kKbCols != 0 || !a.nxq_exp)) return cudaErrorInvalidValue;
  if (lean) {
#define DFSSM_GEMV1(M, N, T) return launch(sign_gemv_b1_kernel<M, N, T>, grid, block, 0, s, pdl, a, tiles, nch, 0)
    if (qin && next) {  // out_proj on planes (one tile per block)
#define DFSSM_GEMVQ(T, QO) return launch(sign_gemv_b1_kernel<1, true, T, true, QO>, grid, block, 0, s, pdl, a, tiles, nch, qper)
      if (qout) {
        if (tight) DFSSM_GEMVQ(true, true);
        DFSSM_GEMVQ(false, true);
      }
      if (tight) DFSSM_GEMVQ(true, false);
      DFSSM_GEMVQ(false, false);
#undef DFSSM_GEMVQ
    }
    if (qin) {
      if (mt == 2) return launch(sign_gemv_b1_kernel<2, false, false, true>, grid, block, 0, s, pdl, a, tiles, nch, qper);
      return launch(sign_gemv_b1_kernel<1, false, false, true>, grid, block, 0, s, pdl, a, tiles, nch, qper);
    }
    if (qout) {
      if (tight) return launch(sign_gemv_b1_kernel<1, true, true, false, true>, grid, block, 0, s, pdl, a, tiles, nch, 0);
      return launch(sign_gemv_b1_kernel<1, true, false, false, true>, grid, block, 0, s, pdl, a, tiles, nch, 0);
    }
    if (mt == 2) {
      if (mode == 1) DFSSM_GEMV1(2, false, false);
      if (tight) DFSSM_GEMV1(2, true, true);
      DFSSM_GEMV1(2, true, false);
    }
    if (mode == 1) DFSSM_GEMV1(1, false, false);
    if (tight) DFSSM_GEMV1(1, true, true);
    DFSSM_GEMV1(1, true, false);
#undef DFSSM_GEMV1
  }
  if (qout) return cudaErrorInvalidValue;
#define DFSSM_GEMV(M, F, T) return launch(sign_gemv_kernel<M, F, T>, grid, block, 0, s, pdl, a, tiles, nch)
  if (mt == 2) {
    switch (mode) {
      case 0: DFSSM_GEMV(2, 0, false);
      case 1: DFSSM_GEMV(2, 1, false);
      default: if (tight) DFSSM_GEMV(2, 2, true); else DFSSM_GEMV(2, 2, false);
    }
  }
  switch (mode) {
    case 0: DFSSM_GEMV(1, 0, false);
    case 1: DFSSM_GEMV(1, 1, false);
    default: if (tight) DFSSM_GEMV(1, 2, true); else DFSSM_GEMV(1, 2, false);
  }
#undef DFSSM_GEMV
}

}  // namespace dfssm::kernels::cuda
