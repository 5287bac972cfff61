// The chunked SSD forward in four kernels on TF32 tensor cores (ssd_scan.h has the math;
// kernels/cpu/ssd_scan_ref.cpp is the scalar twin). P = 64, N = 128, T in {64, 128, 256}.
//
// Memory layout (fp32, row-major): x (batch, L, H, P) and B, C (batch, L, G, N) with the row
// strides x_row / bc_row (in place in in_proj's output); dt (batch, L, H); y (batch, L, H, P).
// Workspace: acs (batch, H, chunks, T); states (batch, chunks, H, P, N), overwritten in place by
// the state entering each chunk; CB (batch, chunks, G, T, T).
//
// Kernels, in launch order (each block has 8 warps; the GEMM parts are TF32 tensor-core products
// with fp32 accumulators over K-slabs of 32; version 1 uses WMMA m16n16k8 fragments fed through
// registers, version 2 (the default at T <= 128, chunk_state and chunk_scan; 4'. below) raw
// mma.sync m16n8k8 fed by cp.async pipelines; DFSSM_SSD_SCAN_VERSION=1 selects version 1):
//   1. chunk_state (chunk, head, batch): acs by a block scan of A·dt; w_l = exp(acs_T-1 - acs_l)·
//      dt_l; states = (w∘x)ᵀ·B, a (P x T)·(T x N) product (ChunkOuter in ssd_scan_common.cuh).
//   2. state_pass (P·N/256, head, batch): one thread per state element walks the chunks:
//      entering_c = S; S = exp(acs_T-1 of c)·S + states_c; the final S is the final state.
//   3. chunk_cb (T/64, chunk x group, batch): CB = C·Bᵀ for 64 rows of the chunk, once per
//      group (the heads of a group share it).
//   4. chunk_scan (chunk, head, batch): y = (L∘CB∘dt + D·I)·x + (exp(acs)∘C)·Sᵀ. The masked
//      decay matrix is built slab by slab in shared memory, never in HBM; tiles above the
//      diagonal skip their MMAs; the D skip rides on its diagonal; full tiles go straight to y.
// Each K-slab's global loads are issued into registers before the previous slab's MMAs
// (RowsRegs in ssd_scan_common.cuh). The backward kernels are in ssd_scan_bwd.cu.
#include "kernels/cuda/ssd_scan_common.cuh"

#include <cstdlib>
#include <string>
#include <type_traits>

namespace dfssm::kernels {
namespace {
using namespace scan_detail;

// ---- 1. chunk states ---------------------------------------------------------------------------
// Outer: ChunkOuter<T> (version 1: register-staged WMMA) or ChunkOuterV2<T> (cp.async into
// dynamic shared memory, raw mma.sync).
template <int T, class Outer>
__global__ void __launch_bounds__(kThreads, 2) chunk_state_kernel(SsdScanArgs a) {
  const int c = blockIdx.x, h = blockIdx.y, t = threadIdx.x;
  const int64_t b = blockIdx.z, nc = a.chunks(), l0 = int64_t(c) * T;
  const int gi = h / (a.H / a.G);
  const Ws ws = split_ws(a);
  __shared__ float w[T], warp_tot[kWarps], total;
  Outer outer{a.x + int64_t(h) * P_, a.B + int64_t(gi) * N_, a.x_row, a.bc_row, b, a.L, l0};
  if constexpr (!std::is_same_v<Outer, ChunkOuter<T>>) {
    DFSSM_DYN_SMEM(outer_smem, ChunkOuterV2<T>::kFloats);
    outer.smem = outer_smem;
  }
  outer.load(0);  // in flight during the scan

  // Phase 1: acs (written for kernels 2 and 4) and the weights w_l.
  const bool in = t < T && l0 + t < a.L;
  const float dtl = in ? a.dt[(b * a.L + l0 + t) * a.H + h] : 0.f;
  const float cs = block_scan(a.A[h] * dtl, warp_tot);
  if (t == T - 1) total = cs;
  __syncthreads();
  if (t < T) {
    ws.acs[((b * a.H + h) * nc + c) * T + t] = cs;
    w[t] = expf(total - cs) * dtl;
  }
  __syncthreads();

  // Phase 2: states (P x N) = (w∘x)ᵀ·B.
  outer.run(w, ws.states + ((b * nc + c) * a.H + h) * int64_t(P_) * N_);
}

// ---- 2. state passing --------------------------------------------------------------------------
// The chunks' states and decays are loaded kGroup at a time before any is used (the stores of
// entering states would otherwise keep each load behind the previous chunk's store: one DRAM
// round trip per chunk).
__global__ void __launch_bounds__(kThreads) state_pass_kernel(SsdScanArgs a) {
  constexpr int kGroup = 8;
  const int64_t PN = int64_t(P_) * N_, e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z, nc = a.chunks(), cstride = int64_t(a.H) * PN;
  const Ws ws = split_ws(a);
  float S = a.init ? a.init[(b * a.H + h) * PN + e] : 0.f;
  const float* acs = ws.acs + (b * a.H + h) * nc * a.T + (a.T - 1);
  float* st = ws.states + (b * nc * a.H + h) * PN + e;  // chunk c at st[c * cstride]
  for (int64_t c0 = 0; c0 < nc; c0 += kGroup) {
    float s[kGroup], d[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const bool ok = c0 + j < nc;
      s[j] = ok ? st[(c0 + j) * cstride] : 0.f;
      d[j] = ok ? acs[(c0 + j) * a.T] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (c0 + j >= nc) break;
      st[(c0 + j) * cstride] = S;  // the state entering chunk c0 + j
      S = expf(d[j]) * S + s[j];
    }
  }
  a.final_state[(b * a.H + h) * PN + e] = S;
}

// ---- 3. CB = C·Bᵀ per group ----------------------------------------------------------------------
// cb_out: (batch, chunks, G, T, T) (the workspace's CB part; ssd_scan_seq.cu passes its own).
template <int T>
__global__ void __launch_bounds__(kThreads, T <= 128 ? 2 : 1) chunk_cb_kernel(SsdScanArgs a, float* cb_out) {
  constexpr int R = 64, PER_WARP = (R / 16) * (T / 16) / kWarps;  // 16x16 tiles per warp
  const int t = threadIdx.x, warp = t >> 5, r0 = blockIdx.x * R;
  const int64_t b = blockIdx.z, nc = a.chunks();
  const int c = int(blockIdx.y / a.G), gi = int(blockIdx.y % a.G);
  const int64_t l0 = int64_t(c) * T;
  __shared__ __align__(128) float cs[R * LDK];
  __shared__ __align__(128) float bs[T * LDK];
  FragC acc[PER_WARP];
#pragma unroll
  for (int i = 0; i < PER_WARP; ++i) wmma::fill_fragment(acc[i], 0.f);
  for (int n0 = 0; n0 < N_; n0 += KS) {
    load_rows<R, KS>(cs, LDK, a.C + int64_t(gi) * N_ + n0, a.bc_row, b, a.L, l0 + r0, Unscaled{});
    load_rows<T, KS>(bs, LDK, a.B + int64_t(gi) * N_ + n0, a.bc_row, b, a.L, l0, Unscaled{});
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < KS; kk += 8)
#pragma unroll
      for (int i = 0; i < PER_WARP; ++i) {
        const int tile = warp + kWarps * i, tm = tile % (R / 16), tn = tile / (R / 16);
        FragArow fa;
        FragBcol fb;  // B(n, s) = bs[s][n]
        load_tf32(fa, cs + tm * 16 * LDK + kk, LDK);
        load_tf32(fb, bs + tn * 16 * LDK + kk, LDK);
        wmma::mma_sync(acc[i], fa, fb, acc[i]);
      }
    __syncthreads();
  }
  float* out = cb_out + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
#pragma unroll
  for (int i = 0; i < PER_WARP; ++i) {
    const int tile = warp + kWarps * i, tm = tile % (R / 16), tn = tile / (R / 16);
    wmma::store_matrix_sync(out + int64_t(r0 + tm * 16) * T + tn * 16, acc[i], T, wmma::mem_row_major);
  }
}

// ---- 4. chunk scan: the output -------------------------------------------------------------------
// D·x rides on the masked matrix's diagonal (M[l][l] += D), so the epilogue reads no x. Each
// slab's global loads (CB, x; then C, S) are issued before the previous slab's MMAs.
template <int T>
__global__ void __launch_bounds__(kThreads, T <= 128 ? 2 : 1) chunk_scan_kernel(SsdScanArgs a) {
  constexpr int PER_WARP = (T / 16) * (P_ / 16) / kWarps;  // 16x16 output tiles per warp
  constexpr int BUF1 = T * LDK + KS * LDX, BUF2 = T * LDK + P_ * LDK, BUF3 = kWarps * 16 * LDE;
  constexpr int BUF = BUF1 > BUF2 ? (BUF1 > BUF3 ? BUF1 : BUF3) : (BUF2 > BUF3 ? BUF2 : BUF3);
  // A warp's tiles share one column block tn (the B fragment) and step through row blocks.
  static_assert(kWarps % (P_ / 16) == 0, "tile assignment");
  const int c = blockIdx.x, h = blockIdx.y, t = threadIdx.x, warp = t >> 5;
  const int tn = warp % (P_ / 16), tm0 = warp / (P_ / 16);
  constexpr int TM_STEP = kWarps / (P_ / 16);
  const int64_t b = blockIdx.z, nc = a.chunks(), l0 = int64_t(c) * T;
  const int gi = h / (a.H / a.G);
  const Ws ws = split_ws(a);
  __shared__ __align__(128) float buf[BUF];
  __shared__ float acs[T], dts[T];

  const float* cb = ws.cb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
  const float* xsrc = a.x + int64_t(h) * P_;
  const float* csrc = a.C + int64_t(gi) * N_;
  const float* S = ws.states + ((b * nc + c) * a.H + h) * int64_t(P_) * N_;
  RowsRegs<T, KS> mr;   // CB[:, s0 .. s0 + KS), then (phase 2) C[:, n0 .. n0 + KS)
  RowsRegs<KS, P_> xr;  // x rows s0 .. s0 + KS
  RowsRegs<P_, KS> sr;  // phase 2: S[:, n0 .. n0 + KS)
  mr.load(cb, T, T);
  xr.load_seq(xsrc, a.x_row, b, a.L, l0);
  if (t < T) {
    acs[t] = ws.acs[((b * a.H + h) * nc + c) * T + t];
    dts[t] = l0 + t < a.L ? a.dt[(b * a.L + l0 + t) * a.H + h] : 0.f;
  }
  const float D = a.D ? a.D[h] : 0.f;
  __syncthreads();
  FragC acc[PER_WARP];
#pragma unroll
  for (int i = 0; i < PER_WARP; ++i) wmma::fill_fragment(acc[i], 0.f);

  // Phase 1: y += (L∘CB∘dt + D·I)·x, K-slabs over the source positions s.
  float* ms = buf;            // T x KS: the masked, decayed CB
  float* xs = buf + T * LDK;  // KS x P
  for (int s0 = 0; s0 < T; s0 += KS) {
#pragma unroll
    for (int j = 0; j < mr.kPer; ++j) {
      const int i = t + j * kThreads, r = i / (KS / 4), q = (i % (KS / 4)) * 4;
      const float v[4] = {mr.v[j].x, mr.v[j].y, mr.v[j].z, mr.v[j].w};
      float m[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int s = s0 + q + k;
        m[k] = s <= r ? expf(acs[r] - acs[s]) * v[k] * dts[s] + (s == r ? D : 0.f) : 0.f;
      }
      st4(ms + r * LDK + q, make_float4(m[0], m[1], m[2], m[3]));
    }
    xr.store(xs, LDX, Unscaled{});
    __syncthreads();
    if (s0 + KS < T) {
      mr.load(cb + s0 + KS, T, T);
      xr.load_seq(xsrc, a.x_row, b, a.L, l0 + s0 + KS);
    } else {  // phase 2's first slab
      mr.load_seq(csrc, a.bc_row, b, a.L, l0);
      sr.load(S, N_, P_);
    }
#pragma unroll 2
    for (int kk = 0; kk < KS; kk += 8) {
      FragBrow fb;
      load_tf32(fb, xs + kk * LDX + tn * 16, LDX);
#pragma unroll
      for (int i = 0; i < PER_WARP; ++i) {
        const int tm = tm0 + TM_STEP * i;
        if (s0 + kk >= (tm + 1) * 16) continue;  // above the diagonal: all zeros
        FragArow fa;
        load_tf32(fa, ms + tm * 16 * LDK + kk, LDK);
        wmma::mma_sync(acc[i], fa, fb, acc[i]);
      }
    }
    __syncthreads();
  }

  // Phase 2: y += (exp(acs)∘C)·Sᵀ with S the state entering the chunk, K-slabs over n.
  float* cs = buf;            // T x KS
  float* ss = buf + T * LDK;  // P x KS: S[p][n0 + k]
  for (int n0 = 0; n0 < N_; n0 += KS) {
    mr.store(cs, LDK, [&](int r) { return expf(acs[r]); });
    sr.store(ss, LDK, Unscaled{});
    __syncthreads();
    if (n0 + KS < N_) {
      mr.load_seq(csrc + n0 + KS, a.bc_row, b, a.L, l0);
      sr.load(S + n0 + KS, N_, P_);
    }
#pragma unroll 2
    for (int kk = 0; kk < KS; kk += 8) {
      FragBcol fb;  // B(n, p) = ss[p][n]
      load_tf32(fb, ss + tn * 16 * LDK + kk, LDK);
#pragma unroll
      for (int i = 0; i < PER_WARP; ++i) {
        const int tm = tm0 + TM_STEP * i;
        FragArow fa;
        load_tf32(fa, cs + tm * 16 * LDK + kk, LDK);
        wmma::mma_sync(acc[i], fa, fb, acc[i]);
      }
    }
    __syncthreads();
  }

  // Epilogue: tiles whose 16 rows are all inside L go straight to y (rows H·P floats apart);
  // the last chunk's partial tile is staged through shared memory and written row by row.
  float* stage = buf + warp * 16 * LDE;
  const int64_t ld = int64_t(a.H) * P_;
#pragma unroll
  for (int i = 0; i < PER_WARP; ++i) {
    const int tm = tm0 + TM_STEP * i;
    const int64_t lt = l0 + tm * 16;
    store_tile_rows(a.y + ((b * a.L + lt) * a.H + h) * int64_t(P_) + tn * 16, acc[i], ld, a.L - lt, stage);
  }
}

// ---- 4'. chunk scan, version 2 (the default; DFSSM_SSD_SCAN_VERSION=1 runs 4.) ---------------
// The same product, y = [M | exp(acs)∘C]·[x ; Sᵀ] with M = L∘CB∘dt + D·I, as one K loop of
// T/32 + N/32 slabs of 32, but fed by a STAGES-deep cp.async pipeline: slab j + STAGES - 1 is in
// flight while slab j is multiplied, with no register staging (version 1 keeps one slab in
// registers, which left the kernel waiting on L2/DRAM with ~7% tensor-core use). The operands'
// transforms are applied to the raw mma.sync fragments in registers: M's decay, mask, dt and D
// per element of CB's A fragment; exp(acs) per row of C's. Warp w owns the 16-row strip
// w / (8 / (T/16)) of y, all of P at T = 128 or half of it at T = 64; strips skip the slabs and
// k-steps above their diagonal.
// Shared memory per stage: an A slab (T rows x 32, row stride LDA = 36: conflict-free A fragments)
// and a B slab: x rows (32 x 64, stride 72: conflict-free B fragments) or S rows (64 x 32, stride 36).
namespace scan2 {
constexpr int LDA = KS + 4, LDXB = P_ + 8, LDSB = KS + 4, BSLAB = KS * LDXB;
static_assert(BSLAB == P_ * LDSB, "the x and S slabs share a buffer");
template <int T>
constexpr int kStageFloats = T * LDA + BSLAB;
template <int T, int STAGES>
constexpr int kSmemBytes = STAGES * kStageFloats<T> * 4;
}  // namespace scan2

template <int T, int STAGES>
__global__ void __launch_bounds__(kThreads, 2) chunk_scan_v2_kernel(SsdScanArgs a) {
  using namespace scan2;
  constexpr int NS1 = T / KS, NSL = NS1 + N_ / KS;           // phase-1 slabs, all slabs
  constexpr int WPS = kWarps / (T / 16), NT = (P_ / 8) / WPS;  // warps per strip, n-tiles per warp
  static_assert(WPS >= 1 && NT >= 1, "T in {64, 128}");
  const int c = blockIdx.x, h = blockIdx.y, t = threadIdx.x, warp = t >> 5, lane = t & 31;
  const int g = lane >> 2, q = lane & 3;
  const int r0 = (warp / WPS) * 16, p0 = (warp % WPS) * NT * 8;
  const int64_t b = blockIdx.z, nc = a.chunks(), l0 = int64_t(c) * T;
  const int gi = h / (a.H / a.G);
  const Ws ws = split_ws(a);
  DFSSM_DYN_SMEM(smem, STAGES * kStageFloats<T>);
  __shared__ float acs[T], dts[T];

  const float* cb = ws.cb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
  const float* xsrc = a.x + (b * a.L + l0) * a.x_row + int64_t(h) * P_;
  const float* csrc = a.C + (b * a.L + l0) * a.bc_row + int64_t(gi) * N_;
  const float* S = ws.states + ((b * nc + c) * a.H + h) * int64_t(P_) * N_;
  const int64_t valid = a.L - l0;  // rows of this chunk inside L

  // Slab j into stage j % STAGES: 16-byte pieces, T * 8 of the A slab then 512 of the B slab.
  auto load_slab = [&](int j) {
    float* As = smem + (j % STAGES) * kStageFloats<T>;
    float* Bs = As + T * LDA;
    for (int i = t; i < T * 8 + 512; i += kThreads) {
      if (i < T * 8) {
        const int r = i >> 3, k4 = (i & 7) * 4;
        if (j < NS1)
          cp_async16(As + r * LDA + k4, cb + r * T + j * KS + k4, true);
        else
          cp_async16(As + r * LDA + k4, r < valid ? csrc + r * a.bc_row + (j - NS1) * KS + k4 : csrc, r < valid);
      } else if (j < NS1) {  // x rows j*KS + [0, 32), 64 floats each
        const int e = i - T * 8, r = e >> 4, p4 = (e & 15) * 4, l = j * KS + r;
        cp_async16(Bs + r * LDXB + p4, l < valid ? xsrc + l * a.x_row + p4 : xsrc, l < valid);
      } else {  // S rows p, columns n0 + [0, 32)
        const int e = i - T * 8, p = e >> 3, k4 = (e & 7) * 4;
        cp_async16(Bs + p * LDSB + k4, S + p * N_ + (j - NS1) * KS + k4, true);
      }
    }
  };
#pragma unroll
  for (int j = 0; j < STAGES - 1; ++j) {
    if (j < NSL) load_slab(j);
    cp_async_commit();
  }
  if (t < T) {
    acs[t] = ws.acs[((b * a.H + h) * nc + c) * T + t];
    dts[t] = l0 + t < a.L ? a.dt[(b * a.L + l0 + t) * a.H + h] : 0.f;
  }
  const float D = a.D ? a.D[h] : 0.f;
  __syncthreads();
  const int rA = r0 + g, rB = rA + 8;
  const float acsA = acs[rA], acsB = acs[rB];
  float acc[NT][4] = {};

  for (int j = 0; j < NSL; ++j) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // slab j landed for every thread; stage (j - 1) % STAGES is free
    if (j + STAGES - 1 < NSL) load_slab(j + STAGES - 1);
    cp_async_commit();
    const float* As = smem + (j % STAGES) * kStageFloats<T>;
    const float* Bs = As + T * LDA;
    if (j < NS1) {
      // Phase 1: M·x over source positions s = j*KS + kk + [0, 8).
      if (j * KS > r0 + 15) continue;  // the whole slab is above this strip's diagonal
#pragma unroll
      for (int kk = 0; kk < KS; kk += 8) {
        const int s0 = j * KS + kk;
        if (s0 > r0 + 15) break;
        const int sA = s0 + q, sB = sA + 4;
        const float aS = acs[sA], aT = acs[sB], dS = dts[sA], dT = dts[sB];
        auto m = [&](int r, float ar, int s, float as, float ds) {
          const float v = As[r * LDA + (s - j * KS)];
          return s <= r ? expf(ar - as) * v * ds + (s == r ? D : 0.f) : 0.f;
        };
        const uint32_t fa[4] = {to_tf32(m(rA, acsA, sA, aS, dS)), to_tf32(m(rB, acsB, sA, aS, dS)),
                                to_tf32(m(rA, acsA, sB, aT, dT)), to_tf32(m(rB, acsB, sB, aT, dT))};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int p = p0 + nt * 8 + g;
          const uint32_t fb[2] = {to_tf32(Bs[(kk + q) * LDXB + p]), to_tf32(Bs[(kk + q + 4) * LDXB + p])};
          mma_tf32(acc[nt], fa, fb);
        }
      }
    } else {
      // Phase 2: (exp(acs)∘C)·Sᵀ over state columns n = (j - NS1)*KS + kk + [0, 8).
      const float eA = expf(acsA), eB = expf(acsB);
#pragma unroll
      for (int kk = 0; kk < KS; kk += 8) {
        const uint32_t fa[4] = {to_tf32(As[rA * LDA + kk + q] * eA), to_tf32(As[rB * LDA + kk + q] * eB),
                                to_tf32(As[rA * LDA + kk + q + 4] * eA), to_tf32(As[rB * LDA + kk + q + 4] * eB)};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int p = p0 + nt * 8 + g;
          const uint32_t fb[2] = {to_tf32(Bs[p * LDSB + kk + q]), to_tf32(Bs[p * LDSB + kk + q + 4])};
          mma_tf32(acc[nt], fa, fb);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: rows rA and rB of y (those inside L), two adjacent columns per fragment half.
  const int64_t ld = int64_t(a.H) * P_;
  float* yrow = a.y + (b * a.L + l0) * ld + int64_t(h) * P_;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int col = p0 + nt * 8 + 2 * q;
    if (rA < valid) st2(yrow + rA * ld + col, acc[nt][0], acc[nt][1]);
    if (rB < valid) st2(yrow + rB * ld + col, acc[nt][2], acc[nt][3]);
  }
}

// with_y = false: everything but chunk_scan (the workspace and the final state; y untouched).
template <int T>
cudaError_t launch(const SsdScanArgs& a, cudaStream_t stream, bool with_y) {
  const auto nc = unsigned(a.chunks()), H = unsigned(a.H), Bz = unsigned(a.batch);
  bool v2 = false;  // version 2 exists for T <= 128 only
  if constexpr (T <= 128) {
    v2 = ssd_scan_version() == 2;
    if (v2)
      if (const auto e = launch_dyn(chunk_state_kernel<T, ChunkOuterV2<T>>, dim3(nc, H, Bz),
                                    ChunkOuterV2<T>::kFloats * 4, stream, a);
          e != cudaSuccess)
        return e;
  }
  if (!v2) DFSSM_LAUNCH((chunk_state_kernel<T, ChunkOuter<T>>), dim3(nc, H, Bz), stream, a);
  if (const auto e = cudaGetLastError(); e != cudaSuccess) return e;
  DFSSM_LAUNCH(state_pass_kernel, dim3(P_ * N_ / kThreads, H, Bz), stream, a);
  if (const auto e = cudaGetLastError(); e != cudaSuccess) return e;
  DFSSM_LAUNCH(chunk_cb_kernel<T>, dim3(T / 64, nc * unsigned(a.G), Bz), stream, a,
               a.workspace + a.acs_floats() + a.states_floats());
  if (const auto e = cudaGetLastError(); e != cudaSuccess || !with_y) return e;
  if constexpr (T <= 128) {
    constexpr int kStages = T == 128 ? 3 : 4;
    if (v2) return launch_dyn(chunk_scan_v2_kernel<T, kStages>, dim3(nc, H, Bz), scan2::kSmemBytes<T, kStages>, stream, a);
  }
  DFSSM_LAUNCH(chunk_scan_kernel<T>, dim3(nc, H, Bz), stream, a);
  return cudaGetLastError();
}

int g_scan_version = 0;  // 0: not read yet

bool aligned(const void* p, uintptr_t n) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

int ssd_scan_version() {
  if (g_scan_version == 0) {
    const char* e = std::getenv("DFSSM_SSD_SCAN_VERSION");
    g_scan_version = e && std::string(e) == "1" ? 1 : 2;
  }
  return g_scan_version;
}
void ssd_scan_set_version(int v) { g_scan_version = v == 1 ? 1 : v == 2 ? 2 : 0; }

bool ssd_scan_inputs_ok(const SsdScanArgs& a) {
  return a.P == P_ && a.N == N_ && (a.T == 64 || a.T == 128 || a.T == 256) && a.G > 0 && a.H % a.G == 0 &&
         a.batch > 0 && a.batch <= 65535 && a.L > 0 && a.H <= 65535 && a.chunks() * a.G <= 65535 &&
         a.x_row % 4 == 0 && a.bc_row % 4 == 0 && aligned(a.x, 16) && aligned(a.B, 16) && aligned(a.C, 16) &&
         aligned(a.init, 16) && aligned(a.workspace, 256) && a.x && a.dt && a.A && a.B && a.C && a.workspace;
}

bool ssd_scan_supported(const SsdScanArgs& a) {
  return ssd_scan_inputs_ok(a) && a.y && !a.y_bf16 && a.final_state;  // (y_bf16: the sequential kernel's)
}

namespace {
cudaError_t launch_any(const SsdScanArgs& a, cudaStream_t stream, bool with_y) {
  switch (a.T) {
    case 64: return launch<64>(a, stream, with_y);
    case 128: return launch<128>(a, stream, with_y);
    default: return launch<256>(a, stream, with_y);
  }
}
}  // namespace

cudaError_t ssd_chunk_cb64_cuda(const SsdScanArgs& a, float* cb, cudaStream_t stream) {
  DFSSM_LAUNCH(chunk_cb_kernel<64>, dim3(1, unsigned(a.chunks()) * unsigned(a.G), unsigned(a.batch)), stream, a, cb);
  return cudaGetLastError();
}

cudaError_t ssd_scan_fwd_cuda(const SsdScanArgs& a, cudaStream_t stream) {
  if (!ssd_scan_supported(a)) return cudaErrorInvalidValue;
  return launch_any(a, stream, true);
}

cudaError_t ssd_scan_fwd_workspace_cuda(const SsdScanArgs& a, cudaStream_t stream) {
  if (!ssd_scan_inputs_ok(a) || !a.final_state) return cudaErrorInvalidValue;
  // At T = 64 one sequential kernel replaces chunk_state + state_pass (ssd_scan_seq.cu).
  if (ssd_scan_seq_enabled() && ssd_scan_states_seq_supported(a)) return ssd_scan_states_seq_cuda(a, stream);
  return launch_any(a, stream, false);
}

}  // namespace dfssm::kernels
