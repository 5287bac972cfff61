// The arguments of the fused chunked-SSD forward (kernels/cuda/ssd_scan.h states the math) and of
// its scalar reference (kernels/cpu/ssd_scan_ref.h). Plain C++: no CUDA, no LibTorch.
#pragma once

#include <cstdint>

// The kernels (ssd_scan.cu) use the size helpers below on the device too.
#if defined(__CUDACC__)
#define DFSSM_HOST_DEVICE __host__ __device__
#else
#define DFSSM_HOST_DEVICE
#endif

namespace dfssm::kernels {

struct SsdScanArgs {
  // Inputs, fp32. x: (batch, L, H, P) whose (batch, l) rows are x_row floats apart; B and C:
  // (batch, L, G, N) with rows bc_row floats apart (slices of in_proj's output, read in place).
  const float* x = nullptr;
  int64_t x_row = 0;
  const float* dt = nullptr;  // (batch, L, H), contiguous
  const float* A = nullptr;   // (H)
  const float* B = nullptr;
  const float* C = nullptr;
  int64_t bc_row = 0;
  const float* D = nullptr;     // (H), or null: no skip term
  const float* init = nullptr;  // (batch, H, P, N), or null: a zero state
  // Outputs, fp32: y (batch, L, H, P) contiguous; final_state (batch, H, P, N).
  float* y = nullptr;
  float* final_state = nullptr;
  // The sequential no-grad forward only (ssd_scan_fwd_seq_cuda): when set, y is written here in
  // bf16 (round to nearest even), (batch, L, H, P) contiguous, and `y` is not written.
  void* y_bf16 = nullptr;
  // The sequential no-grad forward only: bf16 inputs (the conv's bf16 output, conv_train.h). When
  // x_bf16 is set, x, B and C are read as bf16 from x_bf16, B_bf16 and C_bf16 (x_row and bc_row
  // then count bf16 elements; a.x, a.B, a.C are not read) by version 4's kernel (ssd_scan_seq.cu).
  const uint16_t* x_bf16 = nullptr;
  const uint16_t* B_bf16 = nullptr;
  const uint16_t* C_bf16 = nullptr;
  // Workspace of the CUDA kernels (ssd_scan_workspace_floats; the reference ignores it): acs
  // (batch, H, chunks, T), states (batch, chunks, H, P, N), CB (batch, chunks, G, T, T).
  float* workspace = nullptr;
  int64_t batch = 0, L = 0;
  int H = 0, G = 1, P = 0, N = 0, T = 0;

  DFSSM_HOST_DEVICE int64_t chunks() const { return (L + T - 1) / T; }
  // The workspace's parts, in this order.
  DFSSM_HOST_DEVICE int64_t acs_floats() const { return batch * H * chunks() * T; }
  DFSSM_HOST_DEVICE int64_t states_floats() const { return batch * chunks() * H * int64_t(P) * N; }
  DFSSM_HOST_DEVICE int64_t cb_floats() const { return batch * chunks() * G * int64_t(T) * T; }
};

// The backward pass: the forward's inputs (`fwd`; its outputs and workspace are not read), the
// output gradient dy (batch, L, H, P) contiguous and d final_state (batch, H, P, N) or null.
// Gradients, fp32, overwritten: dx (batch, L, H, P) with rows dx_row floats apart, ddt (batch, L,
// H) contiguous, dB and dC (batch, L, G, N) with rows dbc_row floats apart (0: contiguous; a
// row stride lets the three be slices of one buffer, the gradient of the conv output they were
// read from); dA and dD (H); dinit (batch, H, P, N) when fwd.init is given.
// The CUDA backward also reads the forward's workspace (`fwd.workspace`, as the forward kernels
// left it: acs, the states entering each chunk, CB) and needs its own, `workspace`
// (ssd_scan_bwd_workspace_floats): the state gradients (batch, chunks, H, P, N), then dCB, the
// gradient through C·Bᵀ summed over each group's heads (batch, chunks, G, T, T), then
// dΛ per chunk (batch, H, chunks).
struct SsdScanGrads {
  const float* dy = nullptr;
  const float* dfinal = nullptr;
  float *dx = nullptr, *ddt = nullptr, *dA = nullptr, *dB = nullptr, *dC = nullptr, *dD = nullptr, *dinit = nullptr;
  float* workspace = nullptr;
  int64_t dx_row = 0, dbc_row = 0;  // row strides in floats; 0: contiguous (H·P, G·N)

  DFSSM_HOST_DEVICE int64_t dx_stride(const SsdScanArgs& a) const { return dx_row ? dx_row : int64_t(a.H) * a.P; }
  DFSSM_HOST_DEVICE int64_t dbc_stride(const SsdScanArgs& a) const { return dbc_row ? dbc_row : int64_t(a.G) * a.N; }
};

inline int64_t ssd_scan_workspace_floats(const SsdScanArgs& a) { return a.acs_floats() + a.states_floats() + a.cb_floats(); }
inline int64_t ssd_scan_bwd_workspace_floats(const SsdScanArgs& a) {
  return a.states_floats() + a.cb_floats() + a.batch * a.H * a.chunks();
}

}  // namespace dfssm::kernels
