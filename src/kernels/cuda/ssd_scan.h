// The whole chunked SSD forward on CUDA, for passes without autograd (the teacher's forward, the
// student's activation-checkpointed first forward, evaluation): mamba_ssm's chunk-state /
// state-passing / chunk-scan decomposition in four kernels (or, ssd_scan_seq.cu, one sequential
// kernel per sequence after chunk_cb), on TF32 tensor cores with fp32 accumulation. The scalar reference twin is src/kernels/cpu/ssd_scan_ref.h; the LibTorch
// wrapper src/model/ssd_scan.cpp. Plain C++ header: the CUDA runtime only, no LibTorch.
//
// Math (chunks of T tokens; head h reads group gi = h / (H/G) of B and C; a_l = A_h·dt_l):
//   acs_l    = Σ_{k<=l} a_k                                   in-chunk cumulative sum
//   states_c = Σ_l exp(acs_{T-1} - acs_l)·dt_l·x_l ⊗ B_l        (P x N) per chunk and head
//   S_c      = exp(acs_{T-1} of chunk c-1)·S_{c-1} + states_{c-1}, S_0 = init (or 0)
//   y_l      = Σ_{s<=l} exp(acs_l - acs_s)·(C_l·B_s)·dt_s·x_s + exp(acs_l)·S_c·C_l + D_h·x_l
//   final    = the state after the last chunk.
// Positions past L (the last chunk's padding) read as dt = x = B = C = 0.
#pragma once

#ifndef DFSSM_CUDA_EMULATE  // tests/cuda_emu/cuda_emu.h stands in for it
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "kernels/ssd_scan_args.h"

namespace dfssm::kernels {

// Whether the CUDA kernels take this shape: P == 64, N == 128, T in {64, 128, 256}, H % G == 0,
// x_row and bc_row multiples of 4, every pointer 16-byte aligned, the workspace 256-byte
// aligned and at least ssd_scan_workspace_floats(a) long.
bool ssd_scan_supported(const SsdScanArgs& a);
// The same without the outputs (y, final_state): what the backward needs of `a`.
bool ssd_scan_inputs_ok(const SsdScanArgs& a);

// Which kernels run at T <= 128 for chunk_scan, chunk_state (forward) and dstate_local
// (backward): 2 (the default; cp.async pipelines into shared memory, raw mma.sync fragments) or 1
// (register-staged WMMA; DFSSM_SSD_SCAN_VERSION=1). T = 256 always runs version 1.
// ssd_scan_set_version(1 | 2) overrides the environment (tests, A/B benches); 0 re-reads it.
int ssd_scan_version();
void ssd_scan_set_version(int v);

// Runs the four kernels on `stream`. Returns the first launch error.
cudaError_t ssd_scan_fwd_cuda(const SsdScanArgs& a, cudaStream_t stream);
// The same without chunk_scan: the workspace the backward reads and the final state, not y
// (a.y is neither needed nor written). For a recomputation that already has y (an activation-
// checkpointed block that kept its first forward's SSD output, src/model/recompute.h): chunk_scan
// is the forward's most expensive kernel.
cudaError_t ssd_scan_fwd_workspace_cuda(const SsdScanArgs& a, cudaStream_t stream);

// The same forward as one kernel per (head, batch) sequence that keeps the state on the chip
// (ssd_scan_seq.cu): y and final_state only, for passes that keep nothing for a backward. a.T is
// not used (the kernels chunk by 64); a.workspace (16-byte aligned, ssd_scan_seq_workspace_floats)
// receives CB per 64-position chunk and group. Supported: P == 64, N == 128, H % G == 0, batch
// <= 65535, ceil(L / 64)·G <= 65535, x_row and bc_row multiples of 4, x / B / C 16-byte aligned,
// init / y / final_state 8-byte aligned. With a.y_bf16 (4-byte aligned) y is written there in
// bf16 instead (a.y may be null); the other forwards reject a.y_bf16.
// ssd_scan_seq_enabled(): on unless DFSSM_SSD_FWD_SEQ=0 (then the no-grad forward runs the four
// kernels); ssd_scan_set_seq(1 | 0) overrides it (tests, A/B benches), -1 re-reads it.
inline int64_t ssd_scan_seq_workspace_floats(const SsdScanArgs& a) { return a.batch * ((a.L + 63) / 64) * a.G * 64 * 64; }
bool ssd_scan_seq_supported(const SsdScanArgs& a);
// (ssd_scan.cu, for ssd_scan_seq.cu) CB = C·Bᵀ per chunk and group into cb (batch, chunks, G, 64,
// 64); a.T must be 64.
cudaError_t ssd_chunk_cb64_cuda(const SsdScanArgs& a, float* cb, cudaStream_t stream);
// ssd_scan_fwd_workspace_cuda's result at T = 64 (the workspace the backward reads: acs bit for
// bit, the entering states and the final state up to TF32 rounding, CB bit for bit) by one
// sequential kernel per (head, batch) that keeps the state on the chip, then chunk_cb. The
// workspace call takes this path when a.T == 64 and ssd_scan_seq_enabled().
bool ssd_scan_states_seq_supported(const SsdScanArgs& a);
cudaError_t ssd_scan_states_seq_cuda(const SsdScanArgs& a, cudaStream_t stream);
cudaError_t ssd_scan_fwd_seq_cuda(const SsdScanArgs& a, cudaStream_t stream);
// (ssd_scan_seq.cu, for ssd_scan_bwd.cu) The backward's reverse state pass at T = 64 as one
// sequential kernel per (head, batch): dstates (batch, chunks, H, P, N: the gradient of the state
// leaving each chunk) and g.dinit, as dstate_local + dstate_pass leave them (up to TF32
// rounding); not dΛ, which chunk_bwd version 2 sums itself. The backward takes this path at
// version 2 when ssd_scan_seq_enabled().
bool ssd_scan_dstates_seq_supported(const SsdScanArgs& a, const SsdScanGrads& g);
cudaError_t ssd_scan_dstates_seq_cuda(const SsdScanArgs& a, const SsdScanGrads& g, float* dstates,
                                      cudaStream_t stream);
bool ssd_scan_seq_enabled();
void ssd_scan_set_seq(int on);
// ssd_scan_fwd_seq_cuda's kernel version: 2 (TF32 operands, ldmatrix fragments, fast
// exponentials; the default), 1 (scalar fragment loads, expf) or 3 (bf16 operands, as mamba_ssm's
// chunk_scan with bf16 inputs: y within ~3e-3 relative instead of ~4e-4), from
// DFSSM_SSD_SEQ_VERSION (or DFSSM_SSD_SEQ_V1=1); set here for A/B benches and tests; -1 re-reads
// the environment. Version 4 is version 3 on bf16 x, B and C (a.x_bf16, ssd_scan_args.h): inputs
// in bf16 always run it (CB then from chunk_cb_bf16, not ssd_chunk_cb64_cuda); at version 4 (the
// default) the model's no-grad passes whose in_proj output is bf16 have the conv write bf16 for it;
// fp32 inputs then run version 2.
void ssd_scan_set_seq_version(int v);
int ssd_scan_seq_version();
// The sequential states kernel and reverse state pass with bf16 operands (1, the default since
// 2026-12-05: the stored states stay fp32, within ~3e-3 relative instead of ~4e-4) or TF32 (0,
// from DFSSM_SSD_STATES_BF16=0); -1 re-reads the environment.
void ssd_scan_set_states_bf16(int on);

// The backward (ssd_scan_bwd.cu): T in {64, 128}; `a` as given to the forward, whose workspace
// must still hold what the forward left there; g.workspace 256-byte aligned and at least
// ssd_scan_bwd_workspace_floats(a) long; dD and dinit optional. dB, dC, dA and dD are sums of
// per-chunk atomics: their last bits vary from run to run.
bool ssd_scan_bwd_supported(const SsdScanArgs& a, const SsdScanGrads& g);
// Version 2's chunk_bwd and dB/dC kernels with their TF32 operands truncated by the tensor cores
// instead of rounded by cvt.rna first (1, the default since 2026-12-05: fewer instructions, about
// twice the rounding error) or rounded (0, from DFSSM_SSD_BWD_TF32_TRUNC=0); -1 re-reads the
// environment.
bool ssd_scan_bwd_trunc();
void ssd_scan_set_bwd_trunc(int on);
cudaError_t ssd_scan_bwd_cuda(const SsdScanArgs& a, const SsdScanGrads& g, cudaStream_t stream);

}  // namespace dfssm::kernels
