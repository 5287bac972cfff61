// CUDA decode kernels (norm prologue, SSM step, int8 LM head, embedding rows, the launch-floor
// probe): what each computes and the memory layouts are in decode.h; the exact op definitions in
// src/kernels/cpu/ops.h (their `_ref` twins are the references the tests use). The packed-sign
// GEMVs are in sign_gemv.cu, the helpers all share in decode_common.cuh.
#include <cuda_fp16.h>

#include <algorithm>
#include <vector>

#include "kernels/cuda/decode.h"
#include "kernels/cuda/decode_common.cuh"

namespace dfssm::kernels::cuda {
namespace {

// ---- 1-bit planes of a row (decode.h "planes"), norm_prologue's fold output at batch 1 ----
// Warp w quantizes k-block kb = c0 / 128 + w of u = b ⊙ row (columns [c0, c1)): lane l holds
// columns 32t + l (t = 0..3), i.e. group 2t + (l >> 4) of the k-block: the group's max over its
// half-warp, e, q, and per (t, plane) one ballot whose halves are the two groups' planes.
__device__ void planes_out(const NormArgs& a, const float* row, int c0, int c1) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (warp >= (c1 - c0 + kKbCols - 1) / kKbCols) return;  // (no barrier follows)
  const int kb = c0 / kKbCols + warp, base = kb * kKbCols;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const int c = base + 32 * t + lane;
    const float u = c < c1 ? row[c] * (a.b ? a.b[c] : 1.f) : 0.f;
    int e;
    const uint32_t mine = plane_group16(u, e);
    const int G = base / 16 + 2 * t + (lane >> 4);
    reinterpret_cast<uint16_t*>(a.xq)[G * 16 + (lane & 15)] = uint16_t(mine);
    if ((lane & 15) == 0) a.xq_exp[G] = int8_t(e);
  }
}

// ---- norm + projection prologue --------------------------------------------------------------
// Latency-bound (a few KB per block). Everything that is not an activation (the norm weight, the
// field b and the low-rank V rows of this block's slice) is loaded into registers BEFORE the PDL
// wait, so with PDL those DRAM round trips overlap the previous kernel; after the wait the block
// reads only activations (L2-resident), and every thread issues all its loads before using them.
constexpr int kNormThreads = 512;
constexpr int kNormW4 = 4;  // float4 of w preloaded per thread: rows up to 4 * 4 * 512 = 8192
static_assert(kSliceCols <= kNormThreads, "one low-rank column and one fragment pair per thread");
constexpr int kMaxGroups = 64;

__global__ void __launch_bounds__(kNormThreads) norm_prologue_kernel(NormArgs a, int nsplit) {
  extern __shared__ float4 row4[];  // [n / 4]
  float* row = reinterpret_cast<float*>(row4);
  __shared__ float scratch[33];
  __shared__ float rs[kMaxGroups];
  __shared__ float red[kNormThreads / 32][kMaxRank];
  __shared__ float sst;  // Σx² of the row (fold)
  const int bseq = blockIdx.x, split = blockIdx.y, tid = threadIdx.x, nt = blockDim.x;
  const int n = a.n, n4 = n / 4;
  const int c0 = split * kSliceCols;
  const int cpad = (n + kChunkCols - 1) / kChunkCols * kChunkCols;
  const int c1 = min(c0 + kSliceCols, cpad);

  // ---- phase 0: weights into registers (before the wait) ----
  float4 wv[kNormW4];
  const float4* w4 = reinterpret_cast<const float4*>(a.w);
#pragma unroll
  for (int j = 0; j < kNormW4; ++j) {
    const int i = tid + j * nt;
    wv[j] = i < n4 ? w4[i] : make_float4(0, 0, 0, 0);
  }
  const int cf = c0 + 2 * tid;  // this thread's fragment pair (if cf < c1)
  float bf0 = 1.f, bf1 = 1.f;
  if (!a.plain && a.b && cf < c1) {
    bf0 = cf < n ? a.b[cf] : 0.f;
    bf1 = cf + 1 < n ? a.b[cf + 1] : 0.f;
  }
  const int cv = c0 + tid;  // this thread's low-rank column (if cv < min(c1, n))
  const bool has_v = !a.plain && a.V && a.r > 0 && cv < min(c1, n);
  int8_t vv[kMaxRank];
#pragma unroll
  for (int k = 0; k < kMaxRank; ++k) vv[k] = (has_v && k < a.r) ? a.V[int64_t(cv) * a.r + k] : int8_t(0);
  int64_t tok = 0;
  float esc = 0.f;

  pdl_trigger();
  pdl_wait();

  // ---- phase 1: the row (residual add, or the embedding row; or the gate) and its statistic ----
  if (a.mode == 0) {
    float ss = 0;
    if (a.tokens) {
      tok = a.tokens[bseq];
      esc = a.emb_scale[tok];
      const char4* e = reinterpret_cast<const char4*>(a.emb + tok * n);
#pragma unroll 4
      for (int i = tid; i < n4; i += nt) {
        const char4 q = e[i];
        const float4 v = make_float4(float(q.x) * esc, float(q.y) * esc, float(q.z) * esc, float(q.w) * esc);
        row4[i] = v;
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    } else {
      const float4* __restrict__ ri = reinterpret_cast<const float4*>(a.res_in + int64_t(bseq) * n);
      const float4* __restrict__ hi = a.hidden ? reinterpret_cast<const float4*>(a.hidden + int64_t(bseq) * n) : nullptr;
#pragma unroll 4
      for (int i = tid; i < n4; i += nt) {
        float4 v = ri[i];
        if (hi) {
          const float4 h = hi[i];
          v.x += h.x, v.y += h.y, v.z += h.z, v.w += h.w;
        }
        row4[i] = v;
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    }
    const float tot = block_sum(ss, scratch);  // (syncs: row is complete)
    // fold: the consumer applies 1/rms; here x ⊙ w only (multiplying by 1 is exact)
    const float rstd = a.fold ? 1.f : rsqrtf(tot / float(n) + a.eps);
    if (tid == 0) rs[0] = rstd, sst = tot;
    if (split == 0 && a.res_out) {
      float4* ro = reinterpret_cast<float4*>(a.res_out + int64_t(bseq) * n);
      for (int i = tid; i < n4; i += nt) ro[i] = row4[i];
    }
  } else {
    const float* y = a.y + int64_t(bseq) * n;
    const float* z = a.z + int64_t(bseq) * a.ldz;
    const int gs = n / a.G;
    if ((a.ldz & 3) == 0) {
      const float4* y4 = reinterpret_cast<const float4*>(y);
      const float4* z4 = reinterpret_cast<const float4*>(z);
#pragma unroll 4
      for (int i = tid; i < n4; i += nt) {
        const float4 yv = y4[i], zv = z4[i];
        row4[i] = make_float4(yv.x * silu(zv.x), yv.y * silu(zv.y), yv.z * silu(zv.z), yv.w * silu(zv.w));
      }
    } else {
#pragma unroll 4
      for (int i = tid; i < n; i += nt) row[i] = y[i] * silu(z[i]);
    }
    __syncthreads();
    for (int gi = 0; gi < a.G; ++gi) {
      float ss = 0;
      for (int i = gi * gs + tid; i < (gi + 1) * gs; i += nt) ss += row[i] * row[i];
      const float rstd = rsqrtf(block_sum(ss, scratch) / float(gs) + a.eps);
      if (tid == 0) rs[gi] = rstd;
    }
  }
  __syncthreads();  // rs visible; the row is complete

  // ---- phase 2: normalize (x = row · rstd(group) · w) ----
  const int gs4 = (n / a.G) / 4;  // mode 0: G is ignored (one group)
#pragma unroll
  for (int j = 0; j < kNormW4; ++j) {
    const int i = tid + j * nt;
    if (i < n4) {
      const float r = rs[a.mode == 0 ? 0 : i / gs4];
      float4 v = row4[i];
      v.x *= r * wv[j].x, v.y *= r * wv[j].y, v.z *= r * wv[j].z, v.w *= r * wv[j].w;
      row4[i] = v;
    }
  }
  for (int i = tid + kNormW4 * nt; i < n4; i += nt) {  // rows longer than kNormW4 * 4 * nt
    const float r = rs[a.mode == 0 ? 0 : i / gs4];
    const float4 w = w4[i];
    float4 v = row4[i];
    v.x *= r * w.x, v.y *= r * w.y, v.z *= r * w.z, v.w *= r * w.w;
    row4[i] = v;
  }
  __syncthreads();

  // ---- phase 3: outputs ----
  if (a.plain) {
    __half2* o = reinterpret_cast<__half2*>(a.out16) + int64_t(bseq) * (n / 2);
    for (int c = 2 * tid; c < n; c += 2 * nt) o[c / 2] = __floats2half2_rn(row[c], row[c + 1]);
    return;
  }
  if (a.xq) {  // fold, batch 1: planes of the block's k-blocks (warp w: k-block c0 / 128 + w)
    planes_out(a, row, c0, min(c1, n));
  } else if (cf < c1) {
    const float v0 = cf < n ? row[cf] * bf0 : 0.f;
    const float v1 = cf + 1 < n ? row[cf + 1] * bf1 : 0.f;
    const int s = cf >> 4, cc = cf & 15, t = (cc & 7) >> 1, hi = cc >> 3;
    reinterpret_cast<__half2*>(a.out16)[(int64_t(s) * 32 + bseq * 4 + t) * 2 + hi] = __floats2half2_rn(v0, v1);
  }
  if (a.V && a.r > 0) {
    const float x = has_v ? row[cv] : 0.f;
    const int lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
#pragma unroll
    for (int k = 0; k < kMaxRank; ++k)
      if (k < a.r) {
        const float s = warp_sum(float(vv[k]) * x);
        if (lane == 0) red[warp][k] = s;
      }
    __syncthreads();
    if (tid < a.r) {
      float s = 0;
      for (int w = 0; w < nw; ++w) s += red[w][tid];
      if (a.fold) a.parts[(int64_t(bseq) * (kMaxRank + 1) + tid) * kMaxParts + split] = s;
      else a.zp[(int64_t(bseq) * nsplit + split) * a.r + tid] = s;
    }
  }
  if (a.fold && tid == 0) a.parts[(int64_t(bseq) * (kMaxRank + 1) + a.r) * kMaxParts + split] = split == 0 ? sst : 0.f;
}

// ---- SSM step --------------------------------------------------------------------------------
constexpr int kSsmThreads = 256;
constexpr int kSsmPSplit = 2;

// FOLD: the folded gated norm (a separate instantiation, so the plain kernel is unchanged).
template <bool F16, bool FOLD>
__global__ void __launch_bounds__(kSsmThreads) ssm_step_kernel(SsmArgs a) {
  // fold: per local row j (= p - p0), its contributions to out_proj's parts
  __shared__ float contrib[FOLD ? (kSsmThreads / 32) * 4 : 1][kMaxRank + 1];
  __shared__ float ug[FOLD ? 32 : 1];  // fold + planes: the rows' out_proj inputs
  const int h = blockIdx.x, b = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  const int H = a.H, P = a.P, N = a.N, di = H * P;
  const int pb = P / gridDim.z, p0 = blockIdx.z * pb;
  trace_mark(a.trace, kEntry);
  // ---- before the wait: this layer's state (only this kernel writes it, once per step) and the
  // head's parameters. Each warp owns up to kPPW rows p; each lane n = 4*(lane + 32j), j = 0, 1.
  const float dt_bias = a.dt_bias[h], Ah = a.A[h], Dh = a.Dskip[h];
  char* sbase = static_cast<char*>(a.state) + int64_t(b) * a.state_seq_stride;
  constexpr int kPPW = 4;
  float4 s[kPPW][2];
#pragma unroll
  for (int i = 0; i < kPPW; ++i) {
    const int p = p0 + warp + i * nw;
    const bool okp = p < p0 + pb;
    const int64_t off = (int64_t(h) * P + (okp ? p : p0)) * N;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = 4 * (lane + 32 * j);
      if (!okp || n >= N) {
        s[i][j] = make_float4(0, 0, 0, 0);
      } else if (F16) {
        const uint2 raw = *reinterpret_cast<const uint2*>(reinterpret_cast<const __half*>(sbase) + off + n);
        const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
        const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
        s[i][j] = make_float4(lo.x, lo.y, hi.x, hi.y);
      } else {
        s[i][j] = *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(sbase) + off + n);
      }
    }
  }
  // fold: the gated norm's weight, out_proj's field b and V row (lane k holds V[c, k]) per row
  constexpr bool fold = FOLD;
  float gwv[kPPW], obv[kPPW], vk[kPPW];
#pragma unroll
  for (int i = 0; i < kPPW; ++i) {
    const int p = p0 + warp + i * nw;
    const int64_t c = int64_t(h) * P + (p < p0 + pb ? p : p0);
    gwv[i] = fold ? a.gw[c] : 0.f;
    obv[i] = fold && a.ob ? a.ob[c] : 1.f;
    vk[i] = fold && lane < a.orank ? float(a.oV[c * a.orank + lane]) : 0.f;
  }
  pdl_trigger();
  pdl_wait();
  trace_mark(a.trace, kWaited);
  // ---- after the wait: this token's activations ----
  const float* xbc = a.xbc + int64_t(b) * a.D;
  const float dt = fminf(fmaxf(softplus20(a.dt_raw[int64_t(b) * a.ld_dt + h] + dt_bias), a.dt_min), a.dt_max);
  const float dA = expf(dt * Ah);
  const int grp = h / (H / a.G);
  const float* Bv = xbc + di + grp * N;
  const float* Cv = xbc + di + a.G * N + grp * N;
  float4 Bn[2], Cn[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int n = 4 * (lane + 32 * j);
    Bn[j] = n < N ? make_float4(Bv[n], Bv[n + 1], Bv[n + 2], Bv[n + 3]) : make_float4(0, 0, 0, 0);
    Cn[j] = n < N ? make_float4(Cv[n], Cv[n + 1], Cv[n + 2], Cv[n + 3]) : make_float4(0, 0, 0, 0);
  }
  float xs[kPPW], zv[kPPW];
#pragma unroll
  for (int i = 0; i < kPPW; ++i) {
    const int p = p0 + warp + i * nw;
    xs[i] = p < p0 + pb ? xbc[h * P + p] : 0.f;
    zv[i] = fold && p < p0 + pb ? a.z[int64_t(b) * a.ldz + h * P + p] : 0.f;
  }
  if (a.trace) {  // (debug timeline only: the loads complete)
    volatile float sink = Bn[0].x + Cn[0].x + xs[0] + zv[0] + dA;
    (void)sink;
    __syncthreads();
    trace_mark(a.trace, kPhase1);
  }
  // The state update and each row's partial C·h, for all rows first, so that the rows' warp sums
  // run interleaved (warp_sum_n), then y, the gate and the outputs per row.
  float acc[kPPW];
#pragma unroll
  for (int i = 0; i < kPPW; ++i) {
    acc[i] = 0.f;
    const int p = p0 + warp + i * nw;
    if (p >= p0 + pb) continue;  // uniform per warp
    const float xdt = xs[i] * dt;
    const int64_t off = (int64_t(h) * P + p) * N;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int n = 4 * (lane + 32 * j);
      if (n >= N) continue;
      float4 v = s[i][j];
      v.x = v.x * dA + xdt * Bn[j].x;
      v.y = v.y * dA + xdt * Bn[j].y;
      v.z = v.z * dA + xdt * Bn[j].z;
      v.w = v.w * dA + xdt * Bn[j].w;
      if (F16) {
        __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
        uint2 raw;
        raw.x = *reinterpret_cast<uint32_t*>(&lo);
        raw.y = *reinterpret_cast<uint32_t*>(&hi);
        *reinterpret_cast<uint2*>(reinterpret_cast<__half*>(sbase) + off + n) = raw;
        const float2 l2 = __half22float2(lo), h2 = __half22float2(hi);  // y uses the rounded state
        v = make_float4(l2.x, l2.y, h2.x, h2.y);
      } else {
        *reinterpret_cast<float4*>(reinterpret_cast<float*>(sbase) + off + n) = v;
      }
      acc[i] += Cn[j].x * v.x + Cn[j].y * v.y + Cn[j].z * v.z + Cn[j].w * v.w;
    }
  }
  warp_sum_n<kPPW>(acc);  // every lane holds them
#pragma unroll
  for (int i = 0; i < kPPW; ++i) {
    const int p = p0 + warp + i * nw;
    if (p >= p0 + pb) continue;  // uniform per warp
    const float y = acc[i] + Dh * xs[i];
    if (lane == 0) a.y[int64_t(b) * di + h * P + p] = y;
    if constexpr (fold) {  // gate, out_proj fragment, parts contributions
      const float g = y * silu_fast(zv[i]), gx = gwv[i] * g;
      const int c = h * P + p, jl = p - p0;
      if (lane == 0) {
        if (a.xq) {
          ug[jl] = obv[i] * gx;  // (quantized below, a group of 16 rows at a time)
        } else {
          const int s16 = c >> 4, cc = c & 15, t = (cc & 7) >> 1, hi = cc >> 3;
          reinterpret_cast<__half*>(a.xf)[((int64_t(s16) * 32 + b * 4 + t) * 2 + hi) * 2 + (c & 1)] =
              __float2half_rn(obv[i] * gx);
        }
        contrib[jl][a.orank] = g * g;
      }
      if (lane < a.orank) contrib[jl][lane] = vk[i] * gx;
    }
  }
  if (a.trace) {
    __syncthreads();
    trace_mark(a.trace, kCompute);
  }
  if constexpr (fold) {  // this block's parts: per k, its rows in a fixed order
    __syncthreads();
    if (a.xq && warp == 0) {  // planes (decode.h): lane l = row p0 + l, group (h*P + p0) / 16 + l / 16
      int e;
      const uint32_t mine = plane_group16(lane < pb ? ug[lane] : 0.f, e);
      const int G = (h * P + p0) / 16 + (lane >> 4);
      if (lane < pb) {
        reinterpret_cast<uint16_t*>(a.xq)[G * 16 + (lane & 15)] = uint16_t(mine);
        if ((lane & 15) == 0) a.xq_exp[G] = int8_t(e);
      }
    }
    const int part = blockIdx.x * gridDim.z + blockIdx.z;
    if (int(threadIdx.x) <= a.orank) {  // (unrolled, four chains: a serial loop of dependent
      float s4[4] = {0.f, 0.f, 0.f, 0.f};   // shared-memory loads cost ~0.5 us per layer)
#pragma unroll
      for (int j = 0; j < (kSsmThreads / 32) * kPPW; ++j)
        if (j < pb) s4[j & 3] += contrib[j][threadIdx.x];
      a.parts[(int64_t(b) * (kMaxRank + 1) + threadIdx.x) * kMaxParts + part] = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    }
  }
  if (a.trace) {
    __syncthreads();
    trace_mark(a.trace, kEpilogue);
  }
}

// ---- int8 LM head ----------------------------------------------------------------------------
// Tile of 16 rows per block; the block's 4 warps split d. Per 64-column chunk c, lane (g, t)
// reads 16 bytes of row g (and of row g + 8) at column 64c + 16t; mma step s (0..3) of the chunk
// uses its bytes 4s..4s+3, i.e. physical columns 64c + 16t + 4s + (0, 1, 2, 3) stand for the
// mma's k = (2t, 2t+1, 2t+8, 2t+9), and the activation operand is read with the same mapping.
constexpr int kLmWarps = 4;

__device__ __forceinline__ void i8x4_to_half2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;  // x + 128 as unsigned bytes
  lo = __byte_perm(u, 0x64646464u, 0x5140);  // halves 1024 + u0, 1024 + u1
  hi = __byte_perm(u, 0x64646464u, 0x7362);
  const __half2 bias = __half2half2(__ushort_as_half(0x6480));  // 1152
  __half2 l = __hsub2(*reinterpret_cast<__half2*>(&lo), bias);
  __half2 h = __hsub2(*reinterpret_cast<__half2*>(&hi), bias);
  lo = *reinterpret_cast<uint32_t*>(&l);
  hi = *reinterpret_cast<uint32_t*>(&h);
}

__global__ void __launch_bounds__(kLmWarps * 32) lm_head_kernel(LmHeadArgs a) {
  __shared__ float red[kLmWarps][4][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t r0 = int64_t(blockIdx.x) * 16 + g, r1 = r0 + 8;
  const int nchunk = int(a.d / 64), per = (nchunk + kLmWarps - 1) / kLmWarps;
  const int c0 = min(warp * per, nchunk), c1 = min(c0 + per, nchunk);
  const uint4* q0 = reinterpret_cast<const uint4*>(a.q + r0 * a.d) + t;
  const uint4* q1 = reinterpret_cast<const uint4*>(a.q + r1 * a.d) + t;
  const bool ok0 = r0 < a.V, ok1 = r1 < a.V;
  constexpr int U = 8;  // chunks of weights in flight per warp (all of them at d = 2048)
  uint4 wa[U], wb[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int c = c0 + u;
    wa[u] = (c < c1 && ok0) ? __ldg(q0 + c * 4) : make_uint4(0, 0, 0, 0);
    wb[u] = (c < c1 && ok1) ? __ldg(q1 + c * 4) : make_uint4(0, 0, 0, 0);
  }
  pdl_trigger();
  pdl_wait();
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const bool active = g < a.B;
  const uint2* x = reinterpret_cast<const uint2*>(static_cast<const __half*>(a.x16) + int64_t(g) * a.d) + 4 * t;
  for (int cb = c0; cb < c1; cb += U) {
    uint4 na[U], nb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = cb + U + u;
      na[u] = (c < c1 && ok0) ? __ldg(q0 + c * 4) : make_uint4(0, 0, 0, 0);
      nb[u] = (c < c1 && ok1) ? __ldg(q1 + c * 4) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int c = cb + u;
      if (c >= c1) break;
      const uint32_t A0[4] = {wa[u].x, wa[u].y, wa[u].z, wa[u].w};
      const uint32_t A1[4] = {wb[u].x, wb[u].y, wb[u].z, wb[u].w};
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint2 bx = active ? x[c * 16 + s] : make_uint2(0, 0);
        uint32_t a0, a2, a1, a3;
        i8x4_to_half2x2(A0[s], a0, a2);  // row g: k (2t, 2t+1) and (2t+8, 2t+9)
        i8x4_to_half2x2(A1[s], a1, a3);  // row g + 8
        mma16816(acc, a0, a1, a2, a3, bx.x, bx.y);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) wa[u] = na[u], wb[u] = nb[u];
  }
  if (warp > 0)
#pragma unroll
    for (int j = 0; j < 4; ++j) red[warp][j][lane] = acc[j];
  __syncthreads();
  if (warp != 0) return;
  for (int w = 1; w < kLmWarps; ++w)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j] += red[w][j][lane];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t row = j >= 2 ? r1 : r0;
    const int n = 2 * t + (j & 1);
    if (row < a.V && n < a.B) a.logits[int64_t(n) * a.V + row] = a.scale[row] * acc[j];
  }
}

__global__ void embed_rows_kernel(const int32_t* __restrict__ tokens, const int8_t* __restrict__ emb,
                                  const float* __restrict__ scale, int64_t d, float* __restrict__ out) {
  const int64_t t = blockIdx.x, tok = tokens[t];
  const float sc = scale[tok];
  const char4* e = reinterpret_cast<const char4*>(emb + tok * d);
  float4* o = reinterpret_cast<float4*>(out + t * d);
  for (int64_t i = threadIdx.x; i < d / 4; i += blockDim.x) {
    const char4 q = e[i];
    o[i] = make_float4(float(q.x) * sc, float(q.y) * sc, float(q.z) * sc, float(q.w) * sc);
  }
}

// The launch-floor probe's kernel (launch_floor_ms).
__global__ void empty_chain_kernel(int* flag) {
  pdl_trigger();
  pdl_wait();
  if (blockIdx.x == 0 && threadIdx.x == 0) flag[0] += 1;
}

}  // namespace

cudaError_t embed_rows(const int32_t* tokens, int64_t T, const int8_t* emb, const float* scale, int64_t d, float* out,
                       cudaStream_t s) {
  if (T < 0 || d % 4 != 0) return cudaErrorInvalidValue;
  if (T == 0) return cudaSuccess;
  embed_rows_kernel<<<unsigned(T), 128, 0, s>>>(tokens, emb, scale, d, out);
  return cudaGetLastError();
}

int norm_splits(const NormArgs& a) {
  return a.plain ? 1 : int(round_up(a.n, kChunkCols) + kSliceCols - 1) / kSliceCols;
}

cudaError_t norm_prologue(const NormArgs& a, int B, cudaStream_t s, bool pdl) {
  if (B < 1 || B > kMaxBatch || a.r > kMaxRank || a.n % 4 != 0 || a.G < 1 ||
      (a.mode == 1 && (a.G > kMaxGroups || a.n % (4 * a.G) != 0)) || (a.plain && a.n % 2) ||
      (a.fold && (a.mode != 0 || a.plain || !a.parts || norm_splits(a) > kMaxParts)) ||
      (a.xq && (!a.fold || B != 1 || !a.xq_exp || a.n % kKbCols != 0))) {
    return cudaErrorInvalidValue;
  }
  const int ns = norm_splits(a);
  const size_t smem = size_t(a.n) * sizeof(float);
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(norm_prologue_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
  }
  return launch(norm_prologue_kernel, dim3(unsigned(B), unsigned(ns)), dim3(kNormThreads), smem, s, pdl, a, ns);
}

int ssm_parts(int H) { return H * kSsmPSplit; }

cudaError_t ssm_step(const SsmArgs& a, int B, cudaStream_t s, bool pdl) {
  if (B < 1 || a.N % 4 != 0 || a.N > 256 || a.P % kSsmPSplit != 0 || a.P / kSsmPSplit > (kSsmThreads / 32) * 4 ||
      a.H % a.G != 0)
    return cudaErrorInvalidValue;
  if ((a.xf || a.xq) && (a.G != 1 || !a.z || !a.gw || !a.parts || a.orank < 0 || a.orank > kMaxRank ||
                        (a.orank > 0 && !a.oV) || ssm_parts(a.H) > kMaxParts))
    return cudaErrorInvalidValue;
  if (a.xq && (B != 1 || !a.xq_exp || (a.P / kSsmPSplit) % 16 != 0 || a.P / kSsmPSplit > 32))
    return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.H), unsigned(B), kSsmPSplit);
  const dim3 block(kSsmThreads);
  if (a.xf || a.xq)
    return a.f16 ? launch(ssm_step_kernel<true, true>, grid, block, 0, s, pdl, a)
                 : launch(ssm_step_kernel<false, true>, grid, block, 0, s, pdl, a);
  return a.f16 ? launch(ssm_step_kernel<true, false>, grid, block, 0, s, pdl, a)
               : launch(ssm_step_kernel<false, false>, grid, block, 0, s, pdl, a);
}

cudaError_t lm_head_i8(const LmHeadArgs& a, cudaStream_t s, bool pdl) {
  if (a.B < 1 || a.B > kMaxBatch || a.d % 64 != 0) return cudaErrorInvalidValue;
  const unsigned blocks = unsigned((a.V + 15) / 16);
  return launch(lm_head_kernel, dim3(blocks), dim3(kLmWarps * 32), 0, s, pdl, a);
}

cudaError_t launch_floor_ms(int kernels, int blocks, int threads, bool pdl, int reps, float* ms_per_chain) {
  if (kernels < 1 || blocks < 1 || threads < 1 || reps < 1 || !ms_per_chain) return cudaErrorInvalidValue;
  int* flag = nullptr;
  cudaStream_t s = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  cudaError_t err = cudaMalloc(&flag, sizeof(int));
  if (err == cudaSuccess) err = cudaMemset(flag, 0, sizeof(int));
  if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  if (err == cudaSuccess) {
    for (int k = 0; k < kernels && err == cudaSuccess; ++k)
      err = launch(empty_chain_kernel, dim3(unsigned(blocks)), dim3(unsigned(threads)), 0, s, pdl, flag);
    const cudaError_t e2 = cudaStreamEndCapture(s, &graph);
    if (err == cudaSuccess) err = e2;
  }
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
  if (err == cudaSuccess) err = cudaEventCreate(&e0);
  if (err == cudaSuccess) err = cudaEventCreate(&e1);
  std::vector<float> t;
  for (int b = 0; b < 6 && err == cudaSuccess; ++b) {  // batch 0 warms up
    err = cudaEventRecord(e0, s);
    for (int r = 0; r < reps && err == cudaSuccess; ++r) err = cudaGraphLaunch(exec, s);
    if (err == cudaSuccess) err = cudaEventRecord(e1, s);
    if (err == cudaSuccess) err = cudaEventSynchronize(e1);
    float ms = 0;
    if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, e0, e1);
    if (b > 0) t.push_back(ms / float(reps));
  }
  if (err == cudaSuccess) {
    std::sort(t.begin(), t.end());
    *ms_per_chain = t[t.size() / 2];
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  if (s) cudaStreamDestroy(s);
  if (flag) cudaFree(flag);
  return err;
}

}  // namespace dfssm::kernels::cuda
