#pragma once
// The chunked SSD forward plus the D skip as four CUDA kernels (kernels/cuda/ssd_scan.h), for
// passes that need no gradient: the teacher's forward, the student's activation-checkpointed
// first forward, evaluation. It reads x, B and C in place from the conv output and never builds
// the (chunk x chunk) matrices or the permuted copies of the ATen path (ssd.cpp) in HBM.
// Its GEMMs run on TF32 tensor cores (fp32 accumulation): outputs differ from the fp32 ATen path
// at the ~1e-3 relative level.
//
// Off by default until measured on a GPU: the debug switch DFSSM_SSD_SCAN=1 turns it on.
#include <ATen/ATen.h>

#include <utility>

namespace dfssm {

// Whether ssd_scan_fused can run: the switch is on, a CUDA build, fp32 CUDA tensors, headdim 64,
// d_state 128, chunk 64, 128 or 256, and no input needs a gradient.
bool ssd_scan_fused_available(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                              const at::Tensor& C, const at::Tensor& D, int64_t chunk);

// Tests flip the switch (default: DFSSM_SSD_SCAN, off when unset).
void set_ssd_scan_enabled(bool on);

// x (b,l,h,p), dt (b,l,h), A (h), B and C (b,l,g,n), D (h) or undefined, initial_state (b,h,p,n)
// or undefined. Returns y + D·x (b,l,h,p) and the final state (b,h,p,n), both fp32.
std::pair<at::Tensor, at::Tensor> ssd_scan_fused(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                 const at::Tensor& B, const at::Tensor& C, const at::Tensor& D,
                                                 int64_t chunk, const at::Tensor& initial_state);

}  // namespace dfssm
