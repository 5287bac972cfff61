// The chunked SSD forward in four kernels on TF32 tensor cores (ssd_scan.h has the math;
// kernels/cpu/ssd_scan_ref.cpp is the scalar twin). P = 64, N = 128, T in {64, 128, 256}.
//
// Memory layout (fp32, row-major): x (batch, L, H, P) and B, C (batch, L, G, N) with the row
// strides x_row / bc_row (in place in in_proj's output); dt (batch, L, H); y (batch, L, H, P).
// Workspace: acs (batch, H, chunks, T); states (batch, chunks, H, P, N), overwritten in place by
// the state entering each chunk; CB (batch, chunks, G, T, T).
//
// Kernels, in launch order (each block has 8 warps; the GEMM parts are WMMA m16n16k8 TF32
// fragments with fp32 accumulators, fed from shared memory in K-slabs of 32):
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

namespace dfssm::kernels {
namespace {
using namespace scan_detail;

// ---- 1. chunk states ---------------------------------------------------------------------------
template <int T>
__global__ void __launch_bounds__(kThreads, 2) chunk_state_kernel(SsdScanArgs a) {
  const int c = blockIdx.x, h = blockIdx.y, t = threadIdx.x;
  const int64_t b = blockIdx.z, nc = a.chunks(), l0 = int64_t(c) * T;
  const int gi = h / (a.H / a.G);
  const Ws ws = split_ws(a);
  __shared__ float w[T], warp_tot[kWarps], total;
  ChunkOuter<T> outer{a.x + int64_t(h) * P_, a.B + int64_t(gi) * N_, a.x_row, a.bc_row, b, a.L, l0};
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
template <int T>
__global__ void __launch_bounds__(kThreads, T <= 128 ? 2 : 1) chunk_cb_kernel(SsdScanArgs a) {
  constexpr int R = 64, PER_WARP = (R / 16) * (T / 16) / kWarps;  // 16x16 tiles per warp
  const int t = threadIdx.x, warp = t >> 5, r0 = blockIdx.x * R;
  const int64_t b = blockIdx.z, nc = a.chunks();
  const int c = int(blockIdx.y / a.G), gi = int(blockIdx.y % a.G);
  const int64_t l0 = int64_t(c) * T;
  const Ws ws = split_ws(a);
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
  float* out = ws.cb + ((b * nc + c) * a.G + gi) * int64_t(T) * T;
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

template <int T>
cudaError_t launch(const SsdScanArgs& a, cudaStream_t stream) {
  const auto nc = unsigned(a.chunks()), H = unsigned(a.H), Bz = unsigned(a.batch);
  DFSSM_LAUNCH(chunk_state_kernel<T>, dim3(nc, H, Bz), stream, a);
  if (const auto e = cudaGetLastError(); e != cudaSuccess) return e;
  DFSSM_LAUNCH(state_pass_kernel, dim3(P_ * N_ / kThreads, H, Bz), stream, a);
  if (const auto e = cudaGetLastError(); e != cudaSuccess) return e;
  DFSSM_LAUNCH(chunk_cb_kernel<T>, dim3(T / 64, nc * unsigned(a.G), Bz), stream, a);
  if (const auto e = cudaGetLastError(); e != cudaSuccess) return e;
  DFSSM_LAUNCH(chunk_scan_kernel<T>, dim3(nc, H, Bz), stream, a);
  return cudaGetLastError();
}

bool aligned(const void* p, uintptr_t n) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

bool ssd_scan_inputs_ok(const SsdScanArgs& a) {
  return a.P == P_ && a.N == N_ && (a.T == 64 || a.T == 128 || a.T == 256) && a.G > 0 && a.H % a.G == 0 &&
         a.batch > 0 && a.batch <= 65535 && a.L > 0 && a.H <= 65535 && a.chunks() * a.G <= 65535 &&
         a.x_row % 4 == 0 && a.bc_row % 4 == 0 && aligned(a.x, 16) && aligned(a.B, 16) && aligned(a.C, 16) &&
         aligned(a.init, 16) && aligned(a.workspace, 256) && a.x && a.dt && a.A && a.B && a.C && a.workspace;
}

bool ssd_scan_supported(const SsdScanArgs& a) { return ssd_scan_inputs_ok(a) && a.y && a.final_state; }

cudaError_t ssd_scan_fwd_cuda(const SsdScanArgs& a, cudaStream_t stream) {
  if (!ssd_scan_supported(a)) return cudaErrorInvalidValue;
  switch (a.T) {
    case 64: return launch<64>(a, stream);
    case 128: return launch<128>(a, stream);
    default: return launch<256>(a, stream);
  }
}

}  // namespace dfssm::kernels
