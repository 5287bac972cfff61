// The chunked SSD backward in four kernels on TF32 tensor cores (the math: ssd_scan.h and
// docs/training.md "The SSD backward, chunk by chunk"; the scalar twin: ssd_scan_bwd_ref in
// kernels/cpu/ssd_scan_ref.cpp). P = 64, N = 128, T in {64, 128}.
//
// It reads the forward's workspace as ssd_scan.cu left it (acs, the state S entering each chunk,
// CB per chunk and group) and its own: dstates (batch, chunks, H, P, N), dCB (batch, chunks, G,
// T, T), dΛ (batch, H, chunks). Gradients (fp32, contiguous): dx (batch, L, H, P), ddt (batch, L,
// H), dB and dC (batch, L, G, N) written; dA, dD (H) accumulated with atomics (zeroed first).
//
// Kernels, in launch order (8 warps per block):
//   1. dstate_local (chunk, head, batch): dSin_c = Σ_l e_l·dy_l ⊗ C_l (P x N), e_l = exp(acs_l):
//      the chunk's output's gradient with respect to the state entering it.
//   2. dstate_pass (P·N/256, head, batch): walks the chunks backwards with the gradient dS of the
//      state leaving chunk c: dstates[c] = dS; dΛ_c = Σ dS∘e^Λ∘S_c (warp sums, one barrier per
//      8 chunks, an atomic per block and chunk; version 1 only); dS <- dSin_c + e^Λ·dS.
//      The last dS is the initial state's gradient.
//   3. chunk_bwd (chunk, head, batch), ~180 KB of shared memory at T = 128 (one block per SM),
//      ~100 KB at T = 64 (two), in steps:
//      1. Z = B·dSᵀ and Yoff = C·Sᵀ (T x P, K = N): dx_l = w_l·Z_l + D·dy_l, dw_l = x_l·Z_l,
//         dacs from y_off and w (a warp per row);
//      2. G = dy·xᵀ (T x T, lower tiles only); a warp per row l: Pm = exp(acs_l - acs_s)·G
//         (s <= l) gives dacs (row sums with CB and dt), ddt (column sums), and dCB += Pm∘dt
//         (atomics: the sum over the group's heads); the row is left as M∘dt =
//         exp(acs_l - acs_s)·CB·dt_s;
//      3. dx += (M∘dt)ᵀ·dy from shared memory; dx to HBM;
//      4. dacs_{T-1} += dΛ, a reverse block scan gives ddt += A·rev and dA, dD (atomics).
//      Version 2 sums dΛ_c = e^Λ·Σ dS∘S itself in step 1 (its slabs hold both, in fp32), so
//      that the reverse pass need not read S.
// At T = 64 (version 2, unless DFSSM_SSD_FWD_SEQ=0) kernels 1 and 2 are one sequential kernel per
// (head, batch) that keeps dS on the chip (ssd_scan_seq.cu, ssd_dstates_seq_kernel).
// dstate_local (ChunkOuterV2), chunk_bwd and dbc at T = 64 (dbc_v2_kernel) run version 2 by
// default: cp.async pipelines and raw mma.sync fragments (ssd_scan.h: ssd_scan_version).
//   4. dbc (which of dB/dC x 64 columns of N, chunk, batch x group): dC and dB as one GEMM per
//      chunk and group each, over K = T + (H/G)·P: dCB (or its transpose) times the chunk's B (or
//      C) rows, plus every head's scaled dy (or x) times its state S (or dS). The T x T x N
//      products run once per group instead of once per head (the first version of this
//      backward did them per head, with 2·T·N atomics per head and chunk: 18.4 ms per call
//      at T = 128, against 4.06 + 2.10 ms for chunk_bwd and dbc at T = 64; 16 x 2048 x 64
//      heads, H200).
#include <cstdlib>
#include <utility>

#include "kernels/cuda/ssd_scan_common.cuh"

#include <type_traits>

namespace dfssm::kernels {
namespace {
using namespace scan_detail;

struct BwdWs {
  float *dstates, *dcb, *dlam;
};
__device__ inline BwdWs split_bwd_ws(const SsdScanArgs& a, const SsdScanGrads& g) {
  float* dcb = g.workspace + a.states_floats();
  return {g.workspace, dcb, dcb + a.cb_floats()};
}

// ---- 1. the chunk's own state gradient ------------------------------------------------------------
// Outer: ChunkOuter<T> (version 1) or ChunkOuterV2<T> (cp.async, dynamic shared memory).
template <int T, class Outer>
__global__ void __launch_bounds__(kThreads, 2) dstate_local_kernel(SsdScanArgs a, SsdScanGrads g) {
  const int c = blockIdx.x, h = blockIdx.y, t = threadIdx.x;
  const int64_t b = blockIdx.z, nc = a.chunks(), l0 = int64_t(c) * T;
  const int gi = h / (a.H / a.G);
  const Ws ws = split_ws(a);
  const BwdWs bw = split_bwd_ws(a, g);
  __shared__ float e[T];
  Outer outer{g.dy + int64_t(h) * P_, a.C + int64_t(gi) * N_, int64_t(a.H) * P_, a.bc_row, b, a.L, l0};
  if constexpr (!std::is_same_v<Outer, ChunkOuter<T>>) {
    DFSSM_DYN_SMEM(outer_smem, ChunkOuterV2<T>::kFloats);
    outer.smem = outer_smem;
  }
  outer.load(0);
  if (t < T) e[t] = expf(ws.acs[((b * a.H + h) * nc + c) * T + t]);
  __syncthreads();
  outer.run(e, bw.dstates + ((b * nc + c) * a.H + h) * int64_t(P_) * N_);
}

// ---- 2. reverse state passing ----------------------------------------------------------------------
// DLAM: also dΛ (version 1; version 2's chunk_bwd sums it, so there S is not read here).
template <bool DLAM>
__global__ void __launch_bounds__(kThreads, 4) dstate_pass_kernel(SsdScanArgs a, SsdScanGrads g) {
  constexpr int kGroup = 8;  // chunks whose loads are issued, and whose dΛ sums are reduced, together
  const int64_t PN = int64_t(P_) * N_, e = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int h = blockIdx.y, t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int64_t b = blockIdx.z, nc = a.chunks(), cstride = int64_t(a.H) * PN;
  const Ws ws = split_ws(a);
  const BwdWs bw = split_bwd_ws(a, g);
  // Warp partial sums of dΛ, double-buffered so that one barrier per group suffices: a buffer
  // is rewritten two groups later, after every reader of it has passed the next group's barrier.
  __shared__ float red[2][kWarps * kGroup];
  float D = g.dfinal ? g.dfinal[(b * a.H + h) * PN + e] : 0.f;
  const float* acs = ws.acs + (b * a.H + h) * nc * a.T + (a.T - 1);
  float* ds = bw.dstates + (b * nc * a.H + h) * PN + e;  // chunk c at ds[c * cstride]
  const float* S = ws.states + (b * nc * a.H + h) * PN + e;
  float* dlam = bw.dlam + (b * a.H + h) * nc;
  int buf = 0;
  for (int64_t c1 = nc - 1; c1 >= 0; c1 -= kGroup, buf ^= 1) {
    float din[kGroup], sv[kGroup], el[kGroup], part[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int64_t c = c1 - j;
      din[j] = c >= 0 ? ds[c * cstride] : 0.f;
      sv[j] = DLAM && c >= 0 ? S[c * cstride] : 0.f;
      el[j] = c >= 0 ? expf(acs[c * a.T]) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      const int64_t c = c1 - j;
      part[j] = 0.f;
      if (c < 0) continue;
      ds[c * cstride] = D;  // the gradient of the state leaving chunk c
      part[j] = D * el[j] * sv[j];
      D = din[j] + el[j] * D;
    }
    if constexpr (DLAM) {
      // dΛ_c = Σ_e D_c·exp(Λ_c)·S_c over the block's elements: warp shuffles, then one barrier.
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) part[j] += __shfl_xor_sync(0xffffffffu, part[j], o);
      }
      if (lane == 0)
#pragma unroll
        for (int j = 0; j < kGroup; ++j) red[buf][warp * kGroup + j] = part[j];
      __syncthreads();
      if (t < kGroup && c1 - t >= 0) {
        float sum = 0.f;
        for (int w = 0; w < kWarps; ++w) sum += red[buf][w * kGroup + t];
        atomicAdd(dlam + (c1 - t), sum);
      }
    }
  }
  if (g.dinit) g.dinit[(b * a.H + h) * PN + e] = D;
}

// The k-th lower-triangular 16x16 tile (row-major order) of an NT x NT tile grid.
__device__ __forceinline__ void tri_tile(int k, int& tm, int& tn) {
  tm = 0;
  while ((tm + 1) * (tm + 2) / 2 <= k) ++tm;
  tn = k - tm * (tm + 1) / 2;
}

template <int T>
struct BwdSmem {  // chunk_bwd's dynamic shared memory, in floats (offsets keep 32-byte alignment)
  static constexpr int LDT = T + 4;
  // Step 1's two half-slab buffers: B, C (T rows each), dS, S (P rows each) of 16 floats, row
  // stride 20 (≡ 20 mod 32: conflict-free fragment rows; 80 bytes keep cp.async's 16-byte alignment).
  static constexpr int KH = 16, LDH = KH + 4, HSLAB = (2 * T + 2 * P_) * LDH;
  static constexpr int BIG_A = 2 * HSLAB, BIG_G = T * LDT, BIG_Y = T * LDX;
  static constexpr int BIG = BIG_A > BIG_G ? (BIG_A > BIG_Y ? BIG_A : BIG_Y) : (BIG_G > BIG_Y ? BIG_G : BIG_Y);
  static constexpr int SLAB = kWarps * (T > 16 * LDE ? T : 16 * LDE);  // column sums, then staging tiles
  static constexpr int FLOATS = 3 * T * LDX + BIG + SLAB + 4 * T + kWarps + 8;
  static_assert(SLAB >= kWarps * 16 * LDE, "the epilogue's staging tiles fit in the slab");
  static_assert(SLAB >= kWarps * T, "step 2's per-warp column sums fit in the slab");
};

// ---- 3. the chunk's gradients ------------------------------------------------------------------------
// RAW (version 2, the default): the three GEMMs on raw mma.sync fragments read with plain shared
// loads (frag_a_rows & co.); version 1 on WMMA fragments, whose loads nvcc emits on generic
// addresses (ncu at 16 x 2048 x 64 heads, T = 64, H200: 3.77 ms and 2.08G instructions per call
// in version 1, 3.09 ms and 1.58G in version 2).
// TR (DFSSM_SSD_BWD_TF32_TRUNC, version 2 only; the default since 2026-12-05): the fragments take the
// fp32 values as they are, without cvt.rna.tf32 (two SASS instructions per element, most of this
// kernel's instructions by the per-instruction profile): the tensor cores read a .tf32 operand's
// top 19 bits, i.e. round toward zero instead of to nearest (~2x the rounding error, still at
// TF32's precision). That reading is my understanding of the hardware, not yet checked on a GPU:
// the GPU test compares this path with the rounded one.
template <int T, bool RAW, bool TR = false>
__global__ void __launch_bounds__(kThreads, T == 64 ? 2 : 1) chunk_bwd_kernel(SsdScanArgs a, SsdScanGrads g) {
  using SM = BwdSmem<T>;
  constexpr int LDT = SM::LDT, NT = T / 16;
  constexpr int TP = NT * (P_ / 16) / kWarps;           // T x P output tiles per warp
  constexpr int NLOW = NT * (NT + 1) / 2, TL = (NLOW + kWarps - 1) / kWarps;  // lower T x T tiles
  constexpr int TM_STEP = kWarps / (P_ / 16);
  DFSSM_DYN_SMEM(smem, SM::FLOATS);
  float* dys = smem;             // T x P: dy of the chunk
  float* xsm = dys + T * LDX;    // T x P: x
  float* zs = xsm + T * LDX;     // T x P: Z, then dx's start
  float* big = zs + T * LDX;     // step 1's slabs, then Yoff (T x P), then G, then M∘dt (T x T)
  float* slab = big + SM::BIG;   // the column sums of step 2, then the staging tiles
  float* acs = slab + SM::SLAB;
  float* dts = acs + T;
  float* dacs = dts + T;
  float* ddts = dacs + T;
  float* warp_tot = ddts + T;
  float* bcast = warp_tot + kWarps;

  const int c = blockIdx.x, h = blockIdx.y, t = threadIdx.x, warp = t >> 5, lane = t & 31;
  const int tn = warp % (P_ / 16), tm0 = warp / (P_ / 16);
  const int fg = lane >> 2, ft = lane & 3;  // RAW: the lane's row / column in an mma fragment
  const int64_t b = blockIdx.z, nc = a.chunks(), l0 = int64_t(c) * T;
  const int gi = h / (a.H / a.G);
  const Ws ws = split_ws(a);
  const BwdWs bw = split_bwd_ws(a, g);
  const int64_t yrow = int64_t(a.H) * P_, dxr = g.dx_stride(a), sidx = ((b * nc + c) * a.H + h) * int64_t(P_) * N_;
  const float* bsrc = a.B + int64_t(gi) * N_;
  const float* csrc = a.C + int64_t(gi) * N_;
  const float* Sg = ws.states + sidx;
  const float* dSg = bw.dstates + sidx;
  const float* cbg = ws.cb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
  float* dcb = bw.dcb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
  const float Ah = a.A[h], Dh = a.D ? a.D[h] : 0.f;

  if (t < T) {
    acs[t] = ws.acs[((b * a.H + h) * nc + c) * T + t];
    dts[t] = l0 + t < a.L ? a.dt[(b * a.L + l0 + t) * a.H + h] : 0.f;
    dacs[t] = 0.f;
    ddts[t] = 0.f;
  }
  {  // every load in flight at once, then the stores
    RowsRegs<T, P_> ry, rx;
    ry.load_seq(g.dy + int64_t(h) * P_, yrow, b, a.L, l0);
    rx.load_seq(a.x + int64_t(h) * P_, a.x_row, b, a.L, l0);
    ry.store(dys, LDX, Unscaled{});
    rx.store(xsm, LDX, Unscaled{});
  }

  // RAW: this thread's share of Σ dS∘S over the chunk (dΛ_c = exp(Λ_c)·Σ dS∘S, the gradient of
  // the chunk's total decay), summed in step 1 from the slabs' fp32 values: piece e of dS (rows
  // 2T + p) and piece e + kThreads of S (rows 2T + P + p: 4P pieces = kThreads later) are both
  // this thread's copies.
  float sds = 0.f;
  // Step 1: Z = B·dSᵀ, Yoff = C·Sᵀ over K-slabs of 16 n, double-buffered: slab i + 1's four
  // operands land by cp.async while slab i is multiplied (one global round trip per slab before).
  {
    constexpr int KH = SM::KH, LDH = SM::LDH, HSLAB = SM::HSLAB;
    const int64_t valid = a.L - l0;
    auto load_half = [&](int i) {  // n = 16·i + [0, 16): B, C rows (T), dS, S rows (P); 4 pieces per row
      float* base = big + (i & 1) * HSLAB;
      const int n0 = i * KH;
      for (int e = t; e < (2 * T + 2 * P_) * 4; e += kThreads) {
        const int r = e >> 2, k4 = (e & 3) * 4;
        float* dst = base + r * LDH + k4;
        if (r < 2 * T) {
          const int l = r % T;
          const float* src = (r < T ? bsrc : csrc) + (b * a.L + l0) * a.bc_row;
          cp_async16(dst, l < valid ? src + l * a.bc_row + n0 + k4 : src, l < valid);
        } else {
          const int p = (r - 2 * T) % P_;
          cp_async16(dst, (r < 2 * T + P_ ? dSg : Sg) + p * N_ + n0 + k4, true);
        }
      }
      cp_async_commit();
    };
    FragC az[TP], ay[TP];
    float rz[RAW ? TP : 1][2][4] = {}, ry[RAW ? TP : 1][2][4] = {};  // RAW: 16 x 16 tiles as two n-halves
    if constexpr (!RAW)
#pragma unroll
      for (int i = 0; i < TP; ++i) wmma::fill_fragment(az[i], 0.f), wmma::fill_fragment(ay[i], 0.f);
    load_half(0);
    static_assert(4 * P_ == kThreads && (2 * T * 4) % kThreads == 0, "dS and S pieces of one thread");
    for (int i = 0; i < N_ / KH; ++i) {
      if (i + 1 < N_ / KH) {
        load_half(i + 1);  // into the other buffer, free since the barrier ending slab i - 1
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      if constexpr (RAW) {
        // dΛ's share from the pieces this thread copied (visible to it after its wait). The
        // fragment loads below round to TF32 per element: rounding each slab once in place here
        // measured 0.45 ms slower per backward call (16 x 2048 x 64 heads, H200; an extra
        // shared-memory pass between the wait and the barrier).
        float* base = big + (i & 1) * HSLAB;
        for (int e = t + 2 * T * 4; e < (2 * T + P_) * 4; e += kThreads) {
          const float4 d = ld4(base + (e >> 2) * LDH + (e & 3) * 4), v = ld4(base + ((e >> 2) + P_) * LDH + (e & 3) * 4);
          sds += (d.x * v.x + d.y * v.y) + (d.z * v.z + d.w * v.w);
        }
      }
      __syncthreads();  // slab i landed for every thread
      const float* bsl = big + (i & 1) * HSLAB;
      const float* csl = bsl + T * LDH;
      const float* dsl = csl + T * LDH;
      const float* ssl = dsl + P_ * LDH;
      if constexpr (RAW) {
#pragma unroll
        for (int kk = 0; kk < KH; kk += 8) {
          uint32_t bd[2][2], bs[2][2];  // B(n, p) = dS[p][n], S[p][n] for p in the tile's two n-halves
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            frag_b_nmajor<TR>(bd[hh], dsl + (tn * 16 + hh * 8) * LDH + kk, LDH, fg, ft);
            frag_b_nmajor<TR>(bs[hh], ssl + (tn * 16 + hh * 8) * LDH + kk, LDH, fg, ft);
          }
#pragma unroll
          for (int j = 0; j < TP; ++j) {
            const int tm = tm0 + TM_STEP * j;
            uint32_t fa[4];
            frag_a_rows<TR>(fa, bsl + tm * 16 * LDH + kk, LDH, fg, ft);
            mma_tf32(rz[j][0], fa, bd[0]);
            mma_tf32(rz[j][1], fa, bd[1]);
            frag_a_rows<TR>(fa, csl + tm * 16 * LDH + kk, LDH, fg, ft);
            mma_tf32(ry[j][0], fa, bs[0]);
            mma_tf32(ry[j][1], fa, bs[1]);
          }
        }
      } else {
#pragma unroll
        for (int kk = 0; kk < KH; kk += 8) {
          FragBcol fd, fs;  // B(n, p) = dS[p][n], S[p][n]
          load_tf32(fd, dsl + tn * 16 * LDH + kk, LDH);
          load_tf32(fs, ssl + tn * 16 * LDH + kk, LDH);
#pragma unroll
          for (int j = 0; j < TP; ++j) {
            const int tm = tm0 + TM_STEP * j;
            FragArow fa;
            load_tf32(fa, bsl + tm * 16 * LDH + kk, LDH);
            wmma::mma_sync(az[j], fa, fd, az[j]);
            load_tf32(fa, csl + tm * 16 * LDH + kk, LDH);
            wmma::mma_sync(ay[j], fa, fs, ay[j]);
          }
        }
      }
      __syncthreads();  // slab i consumed: its buffer may be refilled
    }
#pragma unroll
    for (int i = 0; i < TP; ++i) {
      const int tm = tm0 + TM_STEP * i;
      if constexpr (RAW) {
        store_c_tile(zs + tm * 16 * LDX + tn * 16, LDX, rz[i], fg, ft);
        store_c_tile(big + tm * 16 * LDX + tn * 16, LDX, ry[i], fg, ft);
      } else {
        wmma::store_matrix_sync(zs + tm * 16 * LDX + tn * 16, az[i], LDX, wmma::mem_row_major);
        wmma::store_matrix_sync(big + tm * 16 * LDX + tn * 16, ay[i], LDX, wmma::mem_row_major);
      }
    }
  }
  __syncthreads();
  const float lam = acs[T - 1];
  float lam_part = RAW ? expf(lam) * sds : 0.f, dD_part = 0.f;  // RAW: dΛ's share (step 1)
  {  // a warp per row, its lanes over p
    for (int l = warp; l < T; l += kWarps) {
      float dw = 0.f, yo = 0.f;
#pragma unroll
      for (int j = 0; j < P_ / 32; ++j) {
        const int p = lane + 32 * j;
        const float dyv = dys[l * LDX + p], xv = xsm[l * LDX + p];
        dw += xv * zs[l * LDX + p];
        yo += dyv * big[l * LDX + p];
        dD_part += dyv * xv;
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        dw += __shfl_xor_sync(0xffffffffu, dw, o);
        yo += __shfl_xor_sync(0xffffffffu, yo, o);
      }
      const float wdec = expf(lam - acs[l]), w = wdec * dts[l];
      if (lane == 0) {
        dacs[l] += expf(acs[l]) * yo - dw * w;
        ddts[l] += dw * wdec;
        lam_part += dw * w;
      }
#pragma unroll
      for (int j = 0; j < P_ / 32; ++j) {
        const int p = lane + 32 * j;
        zs[l * LDX + p] = w * zs[l * LDX + p] + Dh * dys[l * LDX + p];
      }
    }
  }
  __syncthreads();

  // Step 2: G = dy·xᵀ on the lower tiles, into big (row stride LDT).
  if constexpr (RAW) {
    float rg[TL][2][4] = {};
    int tms[TL], tqs[TL];  // this warp's lower tiles k = warp + kWarps·j (k < NLOW)
#pragma unroll
    for (int j = 0; j < TL; ++j) tri_tile(warp + kWarps * j, tms[j], tqs[j]);
#pragma unroll
    for (int kk = 0; kk < P_; kk += 8) {
#pragma unroll
      for (int j = 0; j < TL; ++j) {
        if (warp + kWarps * j >= NLOW) continue;
        uint32_t fa[4], fb[2];
        frag_a_rows<TR>(fa, dys + tms[j] * 16 * LDX + kk, LDX, fg, ft);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {  // B(p, s) = x[s][p]
          frag_b_nmajor<TR>(fb, xsm + (tqs[j] * 16 + hh * 8) * LDX + kk, LDX, fg, ft);
          mma_tf32(rg[j][hh], fa, fb);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < TL; ++j)
      if (warp + kWarps * j < NLOW) store_c_tile(big + tms[j] * 16 * LDT + tqs[j] * 16, LDT, rg[j], fg, ft);
  } else {
    FragC ag[TL];
    int tms[TL], tqs[TL];  // this warp's lower tiles k = warp + kWarps·j (k < NLOW)
#pragma unroll
    for (int j = 0; j < TL; ++j) {
      wmma::fill_fragment(ag[j], 0.f);
      tri_tile(warp + kWarps * j, tms[j], tqs[j]);
    }
#pragma unroll
    for (int kk = 0; kk < P_; kk += 8) {
#pragma unroll
      for (int j = 0; j < TL; ++j) {
        if (warp + kWarps * j >= NLOW) continue;
        FragArow fa;
        FragBcol fb;  // B(p, s) = x[s][p]
        load_tf32(fa, dys + tms[j] * 16 * LDX + kk, LDX);
        load_tf32(fb, xsm + tqs[j] * 16 * LDX + kk, LDX);
        wmma::mma_sync(ag[j], fa, fb, ag[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < TL; ++j)
      if (warp + kWarps * j < NLOW)
        wmma::store_matrix_sync(big + tms[j] * 16 * LDT + tqs[j] * 16, ag[j], LDT, wmma::mem_row_major);
  }
  __syncthreads();
  // Pm = exp(acs_l - acs_s)·G (0 above the diagonal): dacs_l += Σ_s CB·Pm·dt_s; per column
  // ddt_s += Σ_l M·G = Σ_l CB·Pm and dacs_s -= dt_s·(the same); dCB += Pm∘dt. big's row is
  // then overwritten with M∘dt for step 3.
  {  // a warp per row, lane j's columns lane + 32j; column sums per warp
    constexpr int NJ = T / 32;
    float csum[NJ];
#pragma unroll
    for (int j = 0; j < NJ; ++j) csum[j] = 0.f;
    // The next row's C·Bᵀ loads are issued before this row's work: the atomics below keep the
    // compiler from hoisting them, and each would otherwise cost an L2 round trip per row.
    float cbn[NJ];
#pragma unroll
    for (int j = 0; j < NJ; ++j) cbn[j] = cbg[int64_t(warp) * T + lane + 32 * j];
    for (int l = warp; l < T; l += kWarps) {
      float cbv[NJ], gv[NJ];
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        cbv[j] = cbn[j];
        if (l + kWarps < T) cbn[j] = cbg[int64_t(l + kWarps) * T + lane + 32 * j];
        gv[j] = big[l * LDT + lane + 32 * j];
      }
      float q = 0.f;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int s = lane + 32 * j;
        // Above the diagonal, big holds whatever shared memory held before (step 2 stores only
        // the lower tiles): select, never multiply by 0, or a stale NaN/Inf leaks into dacs.
        const float ex = s <= l ? expf(acs[l] - acs[s]) : 0.f, pm = s <= l ? ex * gv[j] : 0.f;
        // Pm is needed only here (dCB below): the row becomes step 3's operand
        // M∘dt = exp(acs_l - acs_s)·CB·dt_s.
        // (Stored in fp32 and rounded to TF32 by the fragment loads: rounding it here instead
        // measured 0.03 ms slower per backward call at 16 x 2048 x 64 heads, H200.)
        big[l * LDT + s] = ex * cbv[j] * dts[s];
        const float cp = cbv[j] * pm;
        q += cp * dts[s];
        csum[j] += cp;
        if (s <= l) atomicAdd(dcb + l * T + s, pm * dts[s]);  // dCB: the sum over the group's heads
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
      if (lane == 0) dacs[l] += q;
    }
    float* colp = slab;  // kWarps x T: each warp's column sums (the slab is free until step 3)
#pragma unroll
    for (int j = 0; j < NJ; ++j) colp[warp * T + lane + 32 * j] = csum[j];
    __syncthreads();
    if (t < T) {
      float cs = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) cs += colp[w * T + t];
      ddts[t] += cs;
      dacs[t] -= dts[t] * cs;
    }
  }

  // Step 3: dx = zs + (M∘dt)ᵀ·dy, M∘dt in big (the row pass above).
  if constexpr (RAW) {
    float rx[TP][2][4];
#pragma unroll
    for (int i = 0; i < TP; ++i) load_c_tile(rx[i], zs + (tm0 + TM_STEP * i) * 16 * LDX + tn * 16, LDX, fg, ft);
    __syncthreads();  // every row of big is written
#pragma unroll 4
    for (int kk = 0; kk < T; kk += 8) {
      uint32_t fb[2][2];  // B(l, p) = dy[l][p]
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) frag_b_kmajor<TR>(fb[hh], dys + kk * LDX + tn * 16 + hh * 8, LDX, fg, ft);
#pragma unroll
      for (int i = 0; i < TP; ++i) {
        const int tm = tm0 + TM_STEP * i;
        if (kk + 8 <= tm * 16) continue;  // every l < every s of the tile: zeros
        uint32_t fa[4];                   // A(s, l) = big[l][s]
        frag_a_cols<TR>(fa, big + kk * LDT + tm * 16, LDT, fg, ft);
        mma_tf32(rx[i][0], fa, fb[0]);
        mma_tf32(rx[i][1], fa, fb[1]);
      }
    }
    // dx rows of the tile inside L, straight from the fragments (two adjacent columns per store).
#pragma unroll
    for (int i = 0; i < TP; ++i) {
      const int64_t lt = l0 + (tm0 + TM_STEP * i) * 16;
      float* dst = g.dx + (b * a.L + lt) * dxr + h * int64_t(P_) + tn * 16 + 2 * ft;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        if (lt + fg < a.L) st2(dst + fg * dxr + hh * 8, rx[i][hh][0], rx[i][hh][1]);
        if (lt + fg + 8 < a.L) st2(dst + (fg + 8) * dxr + hh * 8, rx[i][hh][2], rx[i][hh][3]);
      }
    }
  } else {
    FragC ax[TP];
#pragma unroll
    for (int i = 0; i < TP; ++i) {
      const int tm = tm0 + TM_STEP * i;
      wmma::load_matrix_sync(ax[i], zs + tm * 16 * LDX + tn * 16, LDX, wmma::mem_row_major);
    }
    {
      __syncthreads();  // every row of big is written
#pragma unroll 4
      for (int kk = 0; kk < T; kk += 8) {
        FragBrow fb;  // B(l, p) = dy[l][p]
        load_tf32(fb, dys + kk * LDX + tn * 16, LDX);
#pragma unroll
        for (int i = 0; i < TP; ++i) {
          const int tm = tm0 + TM_STEP * i;
          if (kk + 8 <= tm * 16) continue;  // every l < every s of the tile: zeros
          FragAcol fa;                      // A(s, l) = big[l][s]
          load_tf32(fa, big + kk * LDT + tm * 16, LDT);
          wmma::mma_sync(ax[i], fa, fb, ax[i]);
        }
      }
    }
    __syncthreads();
    float* stage = slab + warp * 16 * LDE;
#pragma unroll
    for (int i = 0; i < TP; ++i) {
      const int tm = tm0 + TM_STEP * i;
      const int64_t lt = l0 + tm * 16;
      store_tile_rows(g.dx + (b * a.L + lt) * dxr + h * int64_t(P_) + tn * 16, ax[i], dxr, a.L - lt, stage);
    }
  }
  __syncthreads();

  // dB and dC: dbc_kernel, once every head's block has added its share of dCB.

  // Step 4: dΛ, the reverse cumulative sum of dacs, ddt, dA, dD.
  const float lam_sum = block_sum(lam_part, warp_tot, bcast);
  // (RAW computed dΛ in step 1; version 1 reads the reverse pass's.)
  if (t == 0) dacs[T - 1] += (RAW ? 0.f : bw.dlam[(b * a.H + h) * nc + c]) + lam_sum;
  __syncthreads();
  const int k = T - 1 - t;  // thread t carries position k: the inclusive scan is Σ_{k' >= k}
  const float rev = block_scan(t < T ? dacs[k] : 0.f, warp_tot);
  float dA_part = 0.f;
  if (t < T && l0 + k < a.L) {
    g.ddt[(b * a.L + l0 + k) * a.H + h] = ddts[k] + Ah * rev;
    dA_part = dts[k] * rev;
  }
  __syncthreads();
  const float dA_sum = block_sum(dA_part, warp_tot, bcast);
  const float dD_sum = block_sum(dD_part, warp_tot, bcast);
  if (t == 0) {
    atomicAdd(g.dA + h, dA_sum);
    if (g.dD) atomicAdd(g.dD + h, dD_sum);
  }
}

// ---- 4. dB and dC per chunk and group, as one GEMM each ---------------------------------------------
// With dCB[l][s] = Σ_h Pm_h[l][s]·dt_h[s] (summed over the group's heads by chunk_bwd):
//   dC[l] = Σ_s dCB[l][s]·B_s + Σ_h e_h[l]·Σ_p dy_h[l][p]·S_h[p]           e_h = exp(acs_h)
//   dB[s] = Σ_l dCB[l][s]·C_l + Σ_h dt_h[s]·e^(Λ_h-acs_h[s])·Σ_p x_h[s][p]·dS_h[p]
// i.e. out (T x N) = A (T x K)·X (K x N) with K = T + (H/G)·P: the first T of K from dCB (dB:
// transposed) times the chunk's rows of B (dC) or C (dB); then, per head, its dy (dC) or x (dB)
// columns scaled per row times its state S (dC) or state gradient dS (dB), P x N. One block per
// (which, 64 columns of N; chunk; batch x group): 8 warps, warp (wm, wn) owns rows
// wm·T/4 .. of the T x 64 tile and 32 columns; K-slabs of 32, the next slab's loads in registers
// while the current one is multiplied. Plain stores: each output element has one owner.
constexpr int kDbcCols = 64;  // the block's columns of N
constexpr int LDD = kDbcCols + 4;

// A K-slab of A, T rows x KS columns, in registers between its loads and its store: either the
// rows of a (T x *) matrix scaled per row (per-head part, dCB for dC) or KS rows of dCB stored
// transposed (dB's first part). The two mappings hold the same number of float4s.
template <int T>
struct ASlab {
  static constexpr int kPer = T * KS / 4 / kThreads;
  static_assert(kPer * kThreads * 4 == T * KS, "the slab divides over the block");
  float4 v[kPer];
  // Rows 0..T-1 (those at or past `valid` read as zeros), KS floats each from src.
  __device__ __forceinline__ void load(const float* src, int64_t stride, int64_t valid) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * kThreads, r = i / (KS / 4), q = (i % (KS / 4)) * 4;
      v[j] = r < valid ? ld4(src + r * stride + q) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
  // dst[r][k] (row stride LDK), times sc[r] when sc is given.
  __device__ __forceinline__ void store(float* dst, const float* sc) const {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * kThreads, r = i / (KS / 4), q = (i % (KS / 4)) * 4;
      const float f = sc ? sc[r] : 1.f;
      st4(dst + r * LDK + q, make_float4(v[j].x * f, v[j].y * f, v[j].z * f, v[j].w * f));
    }
  }
  // Transposed: KS rows of T floats (row stride `stride`), stored as dst[m][k] = src[k][m].
  __device__ __forceinline__ void load_t(const float* src, int64_t stride) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * kThreads, k = i / (T / 4), m = (i % (T / 4)) * 4;
      v[j] = ld4(src + k * stride + m);
    }
  }
  __device__ __forceinline__ void store_t(float* dst) const {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * kThreads, k = i / (T / 4), m = (i % (T / 4)) * 4;
      dst[m * LDK + k] = v[j].x, dst[(m + 1) * LDK + k] = v[j].y;
      dst[(m + 2) * LDK + k] = v[j].z, dst[(m + 3) * LDK + k] = v[j].w;
    }
  }
};

// Shared memory: the A and X slabs, then the per-head row scales (H/G x T floats).
template <int T>
constexpr int dbc_smem_floats(int hpg) {
  return T * LDK + KS * LDD + hpg * T;
}

template <int T>
__global__ void __launch_bounds__(kThreads, 2) dbc_kernel(SsdScanArgs a, SsdScanGrads g) {
  constexpr int MI = T / 64;  // 16-row fragments per warp
  constexpr int NS1 = T / KS, SPH = P_ / KS;
  DFSSM_DYN_SMEM(smem, dbc_smem_floats<T>(256));  // the emulator's static size: up to 256 heads per group
  float* as = smem;                // T x KS, row stride LDK
  float* xs = as + T * LDK;        // KS x 64, row stride LDD
  float* scl = xs + KS * LDD;      // (head of the group, row): the per-head part's row scales
  const bool is_db = blockIdx.x & 1;
  const int n0 = (blockIdx.x >> 1) * kDbcCols, c = blockIdx.y, warp = threadIdx.x >> 5;
  const int hpg = a.H / a.G, gi = blockIdx.z % a.G;
  const int64_t b = blockIdx.z / a.G, nc = a.chunks(), l0 = int64_t(c) * T, NS = NS1 + int64_t(hpg) * SPH;
  const int wm = warp >> 1, wn = warp & 1;
  const Ws ws = split_ws(a);
  const BwdWs bw = split_bwd_ws(a, g);
  const float* dcb = bw.dcb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
  const float* x1 = (is_db ? a.C : a.B) + int64_t(gi) * N_ + n0;               // rows (b, l), stride bc_row
  const float* a2 = is_db ? a.x : g.dy;                                         // rows (b, l), per head P floats
  const int64_t a2_row = is_db ? a.x_row : int64_t(a.H) * P_;
  const float* x2 = (is_db ? bw.dstates : ws.states) + (b * nc + c) * a.H * int64_t(P_) * N_ + n0;  // (h, p) rows
  ASlab<T> ar;
  RowsRegs<KS, kDbcCols> xr;
  auto load = [&](int64_t k) {
    if (k < NS1) {
      if (is_db) ar.load_t(dcb + k * KS * T, T);
      else ar.load(dcb + k * KS, T, T);
      xr.load_seq(x1, a.bc_row, b, a.L, l0 + k * KS);
      return;
    }
    const int64_t h = gi * int64_t(hpg) + (k - NS1) / SPH, p0 = ((k - NS1) % SPH) * KS;
    ar.load(a2 + (b * a.L + l0) * a2_row + h * P_ + p0, a2_row, a.L - l0);
    xr.load(x2 + (h * P_ + p0) * N_, N_, KS);
  };
  load(0);
  // The row scales of every head of the group: dC: exp(acs_r); dB: dt_r·exp(Λ - acs_r) with
  // Λ = acs_{T-1} (dt reads 0 past L). Their loads overlap the first slab's.
  for (int i = threadIdx.x; i < hpg * T; i += kThreads) {
    const int hh = i / T, r = i % T;
    const int64_t h = gi * int64_t(hpg) + hh;
    const float* acs_h = ws.acs + ((b * a.H + h) * nc + c) * T;
    scl[i] = is_db ? (l0 + r < a.L ? a.dt[(b * a.L + l0 + r) * a.H + h] : 0.f) * expf(acs_h[T - 1] - acs_h[r])
                   : expf(acs_h[r]);
  }
  FragC acc[MI][2];
#pragma unroll
  for (int i = 0; i < MI; ++i) wmma::fill_fragment(acc[i][0], 0.f), wmma::fill_fragment(acc[i][1], 0.f);
  load(0);
  for (int64_t k = 0; k < NS; ++k) {
    __syncthreads();  // the previous slab is consumed
    if (k < NS1 && is_db) ar.store_t(as);
    else ar.store(as, k < NS1 ? nullptr : scl + ((k - NS1) / SPH) * T);
    xr.store(xs, LDD, Unscaled{});
    __syncthreads();
    if (k + 1 < NS) load(k + 1);
#pragma unroll
    for (int kk = 0; kk < KS; kk += 8) {
      FragBrow fb[2];
      load_tf32(fb[0], xs + kk * LDD + wn * 32, LDD);
      load_tf32(fb[1], xs + kk * LDD + wn * 32 + 16, LDD);
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int r0 = (wm * MI + i) * 16;
        if (k < NS1) {  // dCB is lower triangular: dC's A(l, s) is 0 for s > l, dB's A(s, l) for s > l
          const int k0 = int(k) * KS + kk;
          if (!is_db && k0 >= r0 + 16) continue;
          if (is_db && r0 >= k0 + 8) continue;
        }
        FragArow fa;
        load_tf32(fa, as + r0 * LDK + kk, LDK);
        wmma::mma_sync(acc[i][0], fa, fb[0], acc[i][0]);
        wmma::mma_sync(acc[i][1], fa, fb[1], acc[i][1]);
      }
    }
  }
  // Epilogue: plain stores into (batch, L, G, N); rows past L through a staging tile.
  __syncthreads();
  float* out = (is_db ? g.dB : g.dC) + int64_t(gi) * N_ + n0;
  const int64_t orow = g.dbc_stride(a);
  float* stage = as + warp * 16 * LDE;
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t lt = l0 + (wm * MI + i) * 16;
      store_tile_rows(out + (b * a.L + lt) * orow + wn * 32 + j * 16, acc[i][j], orow, a.L - lt, stage);
    }
}

// ---- 4'. dB and dC, version 2 (T = 64, the default; DFSSM_SSD_SCAN_VERSION=1 runs 4.) ----------
// The same GEMM, out (T x 64 columns) = A·X over K = T + (H/G)·P, fed by a 4-stage cp.async
// pipeline instead of one register-staged slab. A's transforms happen on the raw mma.sync
// fragments: dB's dCBᵀ is read transposed from the raw dCB rows in shared memory, and each
// head's per-row scale multiplies its A elements. Warp (wm, wn) owns rows 16·wm.. and columns
// 32·wn.. (4 n-tiles of 8). Per stage: the A slab, T x 32 at row stride 36 (or dCB's 32 rows of T
// at stride T + 8 for dB), and the X slab, 32 x 64 at stride 72 (conflict-free fragments).
namespace dbc2 {
constexpr int LDA = KS + 4, LDAT = 64 + 8, LDX2 = kDbcCols + 8, STAGES = 4;
constexpr int A_FLOATS = 64 * LDA > KS * LDAT ? 64 * LDA : KS * LDAT, STAGE = A_FLOATS + KS * LDX2;
constexpr int smem_floats(int hpg) { return STAGES * STAGE + hpg * 64; }
}  // namespace dbc2

// TR: the fragments' values as they are, as chunk_bwd_kernel's TR.
template <bool TR = false>
__global__ void __launch_bounds__(kThreads, 2) dbc_v2_kernel(SsdScanArgs a, SsdScanGrads g) {
  using namespace dbc2;
  constexpr int T = 64, NS1 = T / KS, SPH = P_ / KS;
  static_assert(KS * LDAT <= A_FLOATS && T * LDA <= A_FLOATS, "A slab fits");
  DFSSM_DYN_SMEM(smem, smem_floats(256));  // the emulator's static size: up to 256 heads per group
  float* scl = smem + STAGES * STAGE;       // (head of the group, row): the per-head row scales
  const bool is_db = blockIdx.x & 1;
  const int n0 = (blockIdx.x >> 1) * kDbcCols, c = blockIdx.y, t = threadIdx.x, warp = t >> 5, lane = t & 31;
  const int gq = lane >> 2, q = lane & 3;
  const int hpg = a.H / a.G, gi = blockIdx.z % a.G;
  const int64_t b = blockIdx.z / a.G, nc = a.chunks(), l0 = int64_t(c) * T;
  const int NS = NS1 + hpg * SPH;
  const int r0 = (warp >> 1) * 16, c0 = (warp & 1) * 32;
  const Ws ws = split_ws(a);
  const BwdWs bw = split_bwd_ws(a, g);
  const float* dcb = bw.dcb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
  const float* x1 = (is_db ? a.C : a.B) + (b * a.L + l0) * a.bc_row + int64_t(gi) * N_ + n0;
  const int64_t a2_row = is_db ? a.x_row : int64_t(a.H) * P_;
  const float* a2 = (is_db ? a.x : g.dy) + (b * a.L + l0) * a2_row;
  const float* x2 = (is_db ? bw.dstates : ws.states) + (b * nc + c) * a.H * int64_t(P_) * N_ + n0;
  const int64_t valid = a.L - l0;

  // Slab k into stage k % STAGES: 512 pieces of 16 bytes for A, 512 for X.
  auto load_slab = [&](int k) {
    float* As = smem + (k % STAGES) * STAGE;
    float* Xs = As + A_FLOATS;
    for (int i = t; i < 1024; i += kThreads) {
      if (i < 512) {
        if (k < NS1 && is_db) {  // dCB rows k·KS + [0, 32), T floats each, as they are
          const int r = i >> 4, m4 = (i & 15) * 4;
          cp_async16(As + r * LDAT + m4, dcb + (k * KS + r) * T + m4, true);
        } else if (k < NS1) {  // dCB[:, k·KS + [0, 32)]
          const int r = i >> 3, k4 = (i & 7) * 4;
          cp_async16(As + r * LDA + k4, dcb + r * T + k * KS + k4, true);
        } else {  // head h's dy (dC) or x (dB) rows, columns p0 + [0, 32)
          const int hh = (k - NS1) / SPH, p0 = ((k - NS1) % SPH) * KS, r = i >> 3, k4 = (i & 7) * 4;
          const float* src = a2 + (int64_t(gi) * hpg + hh) * P_ + p0 + k4;
          cp_async16(As + r * LDA + k4, r < valid ? src + r * a2_row : a2, r < valid);
        }
      } else {
        const int e = i - 512, r = e >> 4, n4 = (e & 15) * 4;
        if (k < NS1) {  // rows k·KS + r of B (dC) or C (dB)
          const int l = k * KS + r;
          cp_async16(Xs + r * LDX2 + n4, l < valid ? x1 + l * a.bc_row + n4 : x1, l < valid);
        } else {  // state (dC) or state-gradient (dB) rows h·P + p0 + r
          const int hh = (k - NS1) / SPH, p0 = ((k - NS1) % SPH) * KS;
          cp_async16(Xs + r * LDX2 + n4, x2 + ((int64_t(gi) * hpg + hh) * P_ + p0 + r) * N_ + n4, true);
        }
      }
    }
  };
#pragma unroll
  for (int k = 0; k < STAGES - 1; ++k) {
    if (k < NS) load_slab(k);
    cp_async_commit();
  }
  // The row scales of every head of the group: dC: exp(acs_r); dB: dt_r·exp(Λ - acs_r) with
  // Λ = acs_{T-1} (dt reads 0 past L). Their loads overlap the first slabs'.
  for (int i = t; i < hpg * T; i += kThreads) {
    const int hh = i / T, r = i % T;
    const int64_t h = gi * int64_t(hpg) + hh;
    const float* acs_h = ws.acs + ((b * a.H + h) * nc + c) * T;
    scl[i] = is_db ? (r < valid ? a.dt[(b * a.L + l0 + r) * a.H + h] : 0.f) * expf(acs_h[T - 1] - acs_h[r])
                   : expf(acs_h[r]);
  }
  const int rA = r0 + gq, rB = rA + 8;
  float acc[4][4] = {};
  for (int k = 0; k < NS; ++k) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // slab k landed for every thread (and, at k = 0, the scales); stage k - 1 is free
    if (k + STAGES - 1 < NS) load_slab(k + STAGES - 1);
    cp_async_commit();
    const float* As = smem + (k % STAGES) * STAGE;
    const float* Xs = As + A_FLOATS;
    float sA = 1.f, sB = 1.f;
    if (k >= NS1) {
      const float* sc = scl + ((k - NS1) / SPH) * T;
      sA = sc[rA], sB = sc[rB];
    }
#pragma unroll
    for (int kk = 0; kk < KS; kk += 8) {
      uint32_t fa[4];
      if (k < NS1) {
        // dCB is lower triangular: dC's A(l, s) is 0 for s > l, dB's A(l, s) = dCB(s, l) for l > s.
        const int k0 = k * KS + kk;
        if (!is_db && k0 > r0 + 15) break;
        if (is_db && r0 > k0 + 7) continue;
        if (is_db) {
          fa[0] = op_tf32<TR>(As[(kk + q) * LDAT + rA]), fa[1] = op_tf32<TR>(As[(kk + q) * LDAT + rB]);
          fa[2] = op_tf32<TR>(As[(kk + q + 4) * LDAT + rA]), fa[3] = op_tf32<TR>(As[(kk + q + 4) * LDAT + rB]);
        } else {
          fa[0] = op_tf32<TR>(As[rA * LDA + kk + q]), fa[1] = op_tf32<TR>(As[rB * LDA + kk + q]);
          fa[2] = op_tf32<TR>(As[rA * LDA + kk + q + 4]), fa[3] = op_tf32<TR>(As[rB * LDA + kk + q + 4]);
        }
      } else {
        fa[0] = op_tf32<TR>(sA * As[rA * LDA + kk + q]), fa[1] = op_tf32<TR>(sB * As[rB * LDA + kk + q]);
        fa[2] = op_tf32<TR>(sA * As[rA * LDA + kk + q + 4]), fa[3] = op_tf32<TR>(sB * As[rB * LDA + kk + q + 4]);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int n = c0 + ni * 8 + gq;
        const uint32_t fb[2] = {op_tf32<TR>(Xs[(kk + q) * LDX2 + n]), op_tf32<TR>(Xs[(kk + q + 4) * LDX2 + n])};
        mma_tf32(acc[ni], fa, fb);
      }
    }
  }
  cp_async_wait<0>();
  // Epilogue: rows inside L of (batch, L, G, N).
  const int64_t orow = g.dbc_stride(a);
  float* out = (is_db ? g.dB : g.dC) + (b * a.L + l0) * orow + int64_t(gi) * N_ + n0;
#pragma unroll
  for (int ni = 0; ni < 4; ++ni) {
    const int n = c0 + ni * 8 + 2 * q;
    if (rA < valid) st2(out + rA * orow + n, acc[ni][0], acc[ni][1]);
    if (rB < valid) st2(out + rB * orow + n, acc[ni][2], acc[ni][3]);
  }
}

template <int T>
cudaError_t launch_bwd(const SsdScanArgs& a, const SsdScanGrads& g, cudaStream_t stream) {
  const auto nc = unsigned(a.chunks()), H = unsigned(a.H), Bz = unsigned(a.batch);
  const BwdWs bw{g.workspace, g.workspace + a.states_floats(), g.workspace + a.states_floats() + a.cb_floats()};
  const bool v2 = ssd_scan_version() == 2;
  // (dΛ's atomics: version 1 only.)
  for (const auto& [p, n] : {std::pair<float*, size_t>{g.dA, size_t(a.H) * 4}, {g.dD, size_t(a.H) * 4},
                             {bw.dcb, size_t(a.cb_floats()) * 4}, {v2 ? nullptr : bw.dlam, size_t(a.batch * a.H) * nc * 4}})
    if (p)
      if (const auto e = cudaMemsetAsync(p, 0, n, stream); e != cudaSuccess) return e;
  // Debug switch DFSSM_SSD_BWD_SEQ=0: the two kernels even where the sequential one runs (an A/B of
  // this kernel alone; DFSSM_SSD_FWD_SEQ=0 turns off every sequential SSD kernel).
  static const bool bwd_seq = [] {
    const char* e = std::getenv("DFSSM_SSD_BWD_SEQ");
    return !(e && e[0] == '0');
  }();
  if (T == 64 && v2 && bwd_seq && ssd_scan_seq_enabled() && ssd_scan_dstates_seq_supported(a, g)) {
    // One sequential kernel per (head, batch) instead of dstate_local + dstate_pass (ssd_scan_seq.cu).
    if (const auto e = ssd_scan_dstates_seq_cuda(a, g, bw.dstates, stream); e != cudaSuccess) return e;
  } else {
    if (v2) {
      if (const auto e = launch_dyn(dstate_local_kernel<T, ChunkOuterV2<T>>, dim3(nc, H, Bz),
                                    ChunkOuterV2<T>::kFloats * 4, stream, a, g);
          e != cudaSuccess)
        return e;
    } else {
      DFSSM_LAUNCH((dstate_local_kernel<T, ChunkOuter<T>>), dim3(nc, H, Bz), stream, a, g);
      if (const auto e = cudaGetLastError(); e != cudaSuccess) return e;
    }
    if (v2)
      DFSSM_LAUNCH(dstate_pass_kernel<false>, dim3(P_ * N_ / kThreads, H, Bz), stream, a, g);
    else
      DFSSM_LAUNCH(dstate_pass_kernel<true>, dim3(P_ * N_ / kThreads, H, Bz), stream, a, g);
    if (const auto e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  const bool tr = v2 && ssd_scan_bwd_trunc();
  const int bwd_smem = BwdSmem<T>::FLOATS * int(sizeof(float));
  if (const auto e = tr   ? launch_dyn(chunk_bwd_kernel<T, true, true>, dim3(nc, H, Bz), bwd_smem, stream, a, g)
                     : v2 ? launch_dyn(chunk_bwd_kernel<T, true>, dim3(nc, H, Bz), bwd_smem, stream, a, g)
                          : launch_dyn(chunk_bwd_kernel<T, false>, dim3(nc, H, Bz), bwd_smem, stream, a, g);
      e != cudaSuccess)
    return e;
  const dim3 dbc_grid(2 * (N_ / kDbcCols), nc, Bz * unsigned(a.G));
  if (T == 64 && v2)
    return tr ? launch_dyn(dbc_v2_kernel<true>, dbc_grid, dbc2::smem_floats(a.H / a.G) * 4, stream, a, g)
              : launch_dyn(dbc_v2_kernel<false>, dbc_grid, dbc2::smem_floats(a.H / a.G) * 4, stream, a, g);
  return launch_dyn(dbc_kernel<T>, dbc_grid, dbc_smem_floats<T>(a.H / a.G) * int(sizeof(float)), stream, a, g);
}

}  // namespace

namespace {
// Truncated TF32 operands: the default since the H100 run of 2026-12-05 (see states_bf16 in
// ssd_scan_seq.cu; +383 tokens/s alone on the H200); DFSSM_SSD_BWD_TF32_TRUNC=0 rounds them.
int g_bwd_trunc = -1;  // -1: not read yet
}  // namespace
bool ssd_scan_bwd_trunc() {
  if (g_bwd_trunc < 0) {
    const char* e = std::getenv("DFSSM_SSD_BWD_TF32_TRUNC");
    g_bwd_trunc = e && e[0] == '0' ? 0 : 1;
  }
  return g_bwd_trunc == 1;
}
void ssd_scan_set_bwd_trunc(int on) { g_bwd_trunc = on < 0 ? -1 : on ? 1 : 0; }

bool ssd_scan_bwd_supported(const SsdScanArgs& a, const SsdScanGrads& g) {
  return ssd_scan_inputs_ok(a) && (a.T == 64 || a.T == 128) && g.dy && g.dx && g.ddt && g.dA && g.dB && g.dC &&
         g.workspace && (g.dinit == nullptr || a.init != nullptr) &&
         reinterpret_cast<uintptr_t>(g.dx) % 32 == 0 && reinterpret_cast<uintptr_t>(g.dy) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(g.workspace) % 256 == 0 &&
         // dx, dB and dC rows start 32 bytes aligned (WMMA tile stores), each row as wide as its data
         reinterpret_cast<uintptr_t>(g.dB) % 32 == 0 && reinterpret_cast<uintptr_t>(g.dC) % 32 == 0 &&
         g.dx_stride(a) % 8 == 0 && g.dbc_stride(a) % 8 == 0 && g.dx_stride(a) >= int64_t(a.H) * a.P &&
         g.dbc_stride(a) >= int64_t(a.G) * a.N;
}

cudaError_t ssd_scan_bwd_cuda(const SsdScanArgs& a, const SsdScanGrads& g, cudaStream_t stream) {
  if (!ssd_scan_bwd_supported(a, g)) return cudaErrorInvalidValue;
  return a.T == 64 ? launch_bwd<64>(a, g, stream) : launch_bwd<128>(a, g, stream);
}

}  // namespace dfssm::kernels
