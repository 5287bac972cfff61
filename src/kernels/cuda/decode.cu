// CUDA decode kernels: what each computes and the memory layouts are in decode.h; the exact op
// definitions in src/kernels/cpu/ops.h (their `_ref` twins are the references the tests use).
//
// Every kernel starts with `griddepcontrol.launch_dependents` and waits (`griddepcontrol.wait`)
// before it reads anything the previous kernel wrote. Launched with programmatic dependent
// launch (pdl = true), the next kernel's blocks start while this one runs and issue their
// weight loads (weights are never written) before they wait: launch latency and the first DRAM
// round trip overlap the previous kernel. Without PDL both instructions are no-ops.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "kernels/cuda/decode.h"

namespace dfssm::kernels::cuda {
namespace {

__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

__device__ __forceinline__ unsigned long long gtimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// Debug timeline (TraceSlot): block 0 records its phases, every block the min / max ones.
__device__ __forceinline__ void trace_mark(unsigned long long* tr, int slot) {
  if (!tr || threadIdx.x != 0) return;
  const unsigned long long t = gtimer();
  if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) tr[slot] = t;
  if (slot == kEntry) atomicMin(tr + kFirstEntry, t);
  if (slot == kWaited) atomicMax(tr + kLastWaited, t);
  if (slot == kEpilogue) atomicMax(tr + kLastExit, t);
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplus20(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// N warp sums at once, their butterflies interleaved (N independent shuffles per round instead of
// N chains of 5 dependent rounds: at batch 1 each round's ~30-cycle latency is on the critical
// path). Each value is summed exactly as warp_sum would.
template <int N>
__device__ __forceinline__ void warp_sum_n(float (&v)[N]) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
}
// silu with the fast reciprocal (no IEEE-division slow path on the critical path; ~2 ulp).
__device__ __forceinline__ float silu_fast(float x) { return __fdividef(x, 1.0f + __expf(-x)); }

// Block-wide sum (any blockDim multiple of 32, <= 1024); every thread gets the total.
__device__ float block_sum(float v, float* scratch /* >= 33 floats */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be in use by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float t = 0;
  for (int i = 0; i < nw; ++i) t += scratch[i];  // fixed order: deterministic
  return t;
}

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Bits 15 and 31 of w (one sign each) as a half2 of ±1: (w & 0x80008000) ^ 0xBC00BC00 in one
// LOP3 (nvcc emitted an AND and an XOR: 3 instructions per register with the shift, now 2; the
// expansion is most of the 1-bit GEMV's instructions at batch 1).
__device__ __forceinline__ uint32_t sign_half2(uint32_t w) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(r) : "r"(w), "n"(0x80008000u), "n"(0xBC00BC00u));
  return r;
}

template <typename F, typename... Args>
cudaError_t launch(F kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl, Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

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
  if (cf < c1) {
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
  // This thread's first output of the epilogue and first task of the parts reduction: itself, or
  // (spread, experiment DFSSM_CUDA_SPREAD=1) lane * KS + warp, so that at batch 1 the few outputs
  // of a block run on every warp instead of all on warp 0 (ncu: out_proj's warps spend 44% of
  // their stalls at a barrier waiting for it). A permutation of the block's threads.
  const int me = p.spread ? lane * KS + warp : int(threadIdx.x);
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
    if (p.conv_D > 0 && row >= p.conv_lo && row < p.conv_lo + p.conv_D) {
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
      p.conv_out[int64_t(n) * D + ch] = silu(cacc);
    }
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
template <int MT, bool NEXT, bool TIGHT>
__global__ void __launch_bounds__(MT == 2 ? 128 : 256, (TIGHT || (MT == 2 && !NEXT)) ? (MT == 2 ? 4 : 2) : (MT == 2 ? 3 : 1))
    sign_gemv_b1_kernel(SignGemvArgs p, int tiles, int nch) {
  constexpr int NOUT = MT * 16;
  constexpr int kU = kB1Sums(MT);  // parts' sums per warp (KS >= 4 / 8 warps)
  __shared__ alignas(16) unsigned char epi_raw[NOUT * sizeof(EpiOperands)];
  EpiOperands* epi = reinterpret_cast<EpiOperands*>(epi_raw);
  __shared__ float red[8][NOUT];
  __shared__ float zs[kMaxRank];
  __shared__ float rstd_s;
  __shared__ float contrib[NEXT ? NOUT : 1][kMaxRank + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, KS = blockDim.x >> 5;
  const int o = threadIdx.x;  // this thread's epilogue output (if o < NOUT): tile o >> 4, row o & 15
  const int tile0 = blockIdx.x * MT;
  const int per = nch / KS, ch0 = warp * per, ch1 = ch0 + per;
  const uint4* W = reinterpret_cast<const uint4*>(p.w);
  const uint2* XF = reinterpret_cast<const uint2*>(p.xf);
  const int R1 = p.r + 1;
  trace_mark(p.trace, kEntry);

  // ---- pre-wait: weights ----
  uint4 cur[MT], nxt[MT];
  load_sign_chunk<MT>(W, tile0, tiles, nch, ch0, ch1, cur);
  load_sign_chunk<MT>(W, tile0, tiles, nch, ch0 + 1, ch1, nxt);
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
  uint2 bxa[16], bxb[16];
  load_x_chunk(XF, ch0, ch1, active, bxa);
  load_x_chunk(XF, ch0 + 1, ch1, active, bxb);
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
  sign_mma_chunks<MT>(W, XF, tile0, tiles, nch, ch0, ch1, active, cur, nxt, bxa, bxb, acc);

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
  if (has_row) {
    const EpiOperands& e = epi[o];
    float sum = 0.f;
    for (int w = 0; w < KS; ++w) sum += red[w][o];
    float lr[4] = {0.f, 0.f, 0.f, 0.f};  // four chains (one per byte of a U word)
#pragma unroll
    for (int w = 0; w < kMaxRank / 4; ++w)
      if (4 * w < p.r)
#pragma unroll
        for (int j = 0; j < 4; ++j) lr[j] += float(unpack_i8(e.u4, 4 * w + j)) * zs[4 * w + j];
    const float v = rstd_s * (e.a * sum + ((lr[0] + lr[1]) + (lr[2] + lr[3])));
    if (p.conv_D > 0 && row >= p.conv_lo && row < p.conv_lo + p.conv_D) {
      const int64_t ch = row - p.conv_lo, D = p.conv_D;
      const int K = p.conv_K;
      float cacc = e.cb;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (k + 1 < K) cacc += e.wv[k] * e.sv[k];
        else if (k + 1 == K) cacc += e.wv[k] * v;
      }
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (k + 1 < K) p.conv_state[k * D + ch] = e.sv[k];
      p.conv_state[(K - 1) * D + ch] = v;
      p.conv_out[ch] = silu_fast(cacc);
    }
    p.y[row] = v;
    if constexpr (NEXT) {  // residual, and the next layer's in_proj input (column `row` of it)
      const float x = res + v;
      p.res_out[row] = x;
      const float xw = e.nw * x;
      const int c = int(row), s16 = c >> 4, cc = c & 15, t = (cc & 7) >> 1, hi = cc >> 3;
      reinterpret_cast<__half*>(p.nxf)[((int64_t(s16) * 32 + t) * 2 + hi) * 2 + (c & 1)] = __float2half_rn(e.nb * xw);
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

// ---- SSM step --------------------------------------------------------------------------------
constexpr int kSsmThreads = 256;
constexpr int kSsmPSplit = 2;

// FOLD: the folded gated norm (a separate instantiation, so the plain kernel is unchanged).
template <bool F16, bool FOLD>
__global__ void __launch_bounds__(kSsmThreads) ssm_step_kernel(SsmArgs a) {
  // fold: per local row j (= p - p0), its contributions to out_proj's parts
  __shared__ float contrib[FOLD ? (kSsmThreads / 32) * 4 : 1][kMaxRank + 1];
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
        const int s16 = c >> 4, cc = c & 15, t = (cc & 7) >> 1, hi = cc >> 3;
        reinterpret_cast<__half*>(a.xf)[((int64_t(s16) * 32 + b * 4 + t) * 2 + hi) * 2 + (c & 1)] =
            __float2half_rn(obv[i] * gx);
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

cudaError_t repack_signs(const uint8_t* codes, int64_t row_bytes, int64_t R, int64_t C, void* out, cudaStream_t s) {
  const int64_t tiles = round_up(R, 16) / 16, nch = round_up(C, kChunkCols) / kChunkCols;
  const int64_t nwords = tiles * nch * 32 * 4;
  const int threads = 256;
  repack_signs_kernel<<<unsigned((nwords + threads - 1) / threads), threads, 0, s>>>(
      codes, row_bytes, R, C, nch, nwords, static_cast<uint32_t*>(out));
  return cudaGetLastError();
}

int norm_splits(const NormArgs& a) {
  return a.plain ? 1 : int(round_up(a.n, kChunkCols) + kSliceCols - 1) / kSliceCols;
}

cudaError_t norm_prologue(const NormArgs& a, int B, cudaStream_t s, bool pdl) {
  if (B < 1 || B > kMaxBatch || a.r > kMaxRank || a.n % 4 != 0 || a.G < 1 ||
      (a.mode == 1 && (a.G > kMaxGroups || a.n % (4 * a.G) != 0)) || (a.plain && a.n % 2) ||
      (a.fold && (a.mode != 0 || a.plain || !a.parts || norm_splits(a) > kMaxParts))) {
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

int ssm_parts(int H) { return H * kSsmPSplit; }

cudaError_t sign_gemv(const SignGemvArgs& a, cudaStream_t s, bool pdl) {
  if (a.B < 1 || a.B > kMaxBatch || a.r > kMaxRank || (a.conv_D > 0 && (a.conv_K < 1 || a.conv_K > 8)))
    return cudaErrorInvalidValue;
  if (a.parts && (a.nparts < 1 || a.nparts > kMaxParts || a.n_norm < 1)) return cudaErrorInvalidValue;
  const bool next = a.nxf != nullptr;
  if (next && (!a.parts || !a.res_in || !a.res_out || !a.nw || !a.nparts_out || a.nr < 0 || a.nr > kMaxRank ||
               (a.nr > 0 && !a.nV) || sign_gemv_grid(a.R) > kMaxParts))
    return cudaErrorInvalidValue;
  const int tiles = int(round_up(a.R, 16) / 16), nch = int(round_up(a.C, kChunkCols) / kChunkCols);
  const int mt = gemv_mt(a.R);
  int KS = 1;  // warps splitting the chunks: at least 2 chunks per warp where possible
  for (int k : {8, 4, 2})
    if (nch % k == 0 && nch / k >= 2 && (mt == 1 || k <= 4)) {  // (MT = 2: launch bound 128 threads)
      KS = k;
      break;
    }
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
  static const bool lean_env = [] {  // debug switch: DFSSM_CUDA_LEAN=0 runs the general kernel at batch 1
    const char* e = std::getenv("DFSSM_CUDA_LEAN");
    return !(e && std::atoi(e) == 0);
  }();
  if (a.lean && lean_env && a.B == 1 && mode >= 1 && a.nparts <= 128 && KS >= (mt == 2 ? 4 : 8) &&
      nch % (2 * KS) == 0 && a.r + 1 <= kB1Sums(mt) * KS) {
#define DFSSM_GEMV1(M, N, T) return launch(sign_gemv_b1_kernel<M, N, T>, grid, block, 0, s, pdl, a, tiles, nch)
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

cudaError_t ssm_step(const SsmArgs& a, int B, cudaStream_t s, bool pdl) {
  if (B < 1 || a.N % 4 != 0 || a.N > 256 || a.P % kSsmPSplit != 0 || a.P / kSsmPSplit > (kSsmThreads / 32) * 4 ||
      a.H % a.G != 0)
    return cudaErrorInvalidValue;
  if (a.xf && (a.G != 1 || !a.z || !a.gw || !a.parts || a.orank < 0 || a.orank > kMaxRank ||
               (a.orank > 0 && !a.oV) || ssm_parts(a.H) > kMaxParts))
    return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.H), unsigned(B), kSsmPSplit);
  const dim3 block(kSsmThreads);
  if (a.xf)
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
