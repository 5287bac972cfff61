// One AdamW update of an fp32 tensor in place (adamw.h has the math). Layout: p, g, m, v
// contiguous fp32 (n each), scale one fp32 on the device; gscale and run (optional) one fp32 each
// on the device: the gradient-clip coefficient and the step's go/skip flag, decided on the device so
// that the host does not wait for the gradient norm before launching the update.
// A grid-stride elementwise pass: 28 bytes per element (read p, g, m, v; write p, m, v), where
// the ATen version made eleven passes and eleven launches per tensor (~100 bytes per element).
#include "kernels/cuda/adamw.h"

namespace dfssm::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) adamw_kernel(float* __restrict__ p, const float* __restrict__ g,
                                                         float* __restrict__ m, float* __restrict__ v,
                                                         const float* __restrict__ scale, int64_t n, AdamWCoef c,
                                                         const float* __restrict__ gscale, const float* __restrict__ run) {
  if (run != nullptr && *run == 0.f) return;  // a skipped step leaves p, m and v as they are
  const float step_lr = *scale * c.lr;
  const float gs = gscale != nullptr ? *gscale : 1.f;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads) {
    // g·gs is the clipped gradient (gs = 1 exactly when not clipped): the same product the host's
    // in-place clip forms first.
    const float gi = gscale != nullptr ? g[i] * gs : g[i];
    const float mi = m[i] * c.b1 + c.omb1 * gi;
    const float vi = v[i] * c.b2 + c.omb2 * gi * gi;
    m[i] = mi, v[i] = vi;
    const float denom = sqrtf(vi / c.bc2) + c.eps;
    p[i] = p[i] * c.decay - (mi / c.bc1) / denom * step_lr;
  }
}

}  // namespace

cudaError_t adamw_step_cuda(float* p, const float* g, float* m, float* v, const float* scale, int64_t n,
                            const AdamWCoef& c, cudaStream_t stream, const float* gscale, const float* run) {
  if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
  // Enough blocks to fill an H100/H200 several times over; the grid-stride loop covers the rest.
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = unsigned(want < 132 * 16 ? want : 132 * 16);
  adamw_kernel<<<blocks, kThreads, 0, stream>>>(p, g, m, v, scale, n, c, gscale, run);
  return cudaGetLastError();
}

}  // namespace dfssm::kernels
