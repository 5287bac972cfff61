// Micro-benchmark (device only, not part of the build): what a persistent decode kernel would pay
// for its grid-wide synchronisations. A batch-1 Mamba-2 step has three all-to-all dependencies per
// layer (in_proj needs the whole normalised residual, the SSM step needs all of B and C, out_proj
// needs all of y): 144 at 48 layers. One block per SM (or two), 256 threads each:
//   sync:      a counting barrier (atomicAdd on one L2 word, then thread 0 spins with ld.acquire);
//   exchange:  the same barrier around a data dependency: each block writes 16 floats of a
//              2048-float vector, passes the barrier, reads the whole vector from L2 (ld.cg),
//              reduces it in the block, and its next write depends on the sum;
//   cg:        the exchange with cooperative_groups' grid.sync() (cooperative launch).
// nvcc -O3 -arch=sm_90 grid_barrier.cu -o grid_barrier && ./grid_barrier
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>

namespace cg = cooperative_groups;

__device__ unsigned g_arrived;  // blocks arrived, over all barriers of the launch (reset per launch)

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Barrier number `gen` (0, 1, ...): every block's writes before it are visible to every block after.
__device__ __forceinline__ void grid_barrier(unsigned& gen) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // cumulative: the block's writes (ordered by the barrier above) go first
    const unsigned target = (gen + 1) * gridDim.x;
    atomicAdd(&g_arrived, 1u);
    while (ld_acquire(&g_arrived) < target) {
    }
  }
  ++gen;
  __syncthreads();
}

__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) s += red[w];
  __syncthreads();
  return s;
}

template <int MODE>  // 0 sync, 1 exchange, 2 cg
__global__ void __launch_bounds__(256) bench(float* vec, int iters, float* sink) {
  __shared__ float red[8];
  unsigned gen = 0;
  float acc = float(blockIdx.x);
  for (int i = 0; i < iters; ++i) {
    float* cur = vec + (i & 1) * 4096;
    if (MODE > 0 && threadIdx.x < 16 && blockIdx.x * 16 + threadIdx.x < 2048) cur[blockIdx.x * 16 + threadIdx.x] = acc + threadIdx.x;
    if (MODE == 2) {
      cg::this_grid().sync();
    } else {
      grid_barrier(gen);
    }
    if (MODE > 0) {
      float s = 0.f;
      for (int j = threadIdx.x; j < 2048; j += blockDim.x) s += __ldcg(cur + j);
      acc = block_sum(s, red) * 1e-6f;
    }
  }
  if (threadIdx.x == 0) sink[blockIdx.x] = acc;
}

template <int MODE>
float run(int blocks, int iters, float* vec, float* sink) {
  const unsigned zero = 0;
  cudaMemcpyToSymbol(g_arrived, &zero, sizeof zero);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0);
  if (MODE == 2) {
    void* args[] = {&vec, &iters, &sink};
    cudaLaunchCooperativeKernel((void*)bench<MODE>, dim3(blocks), dim3(256), args, 0, nullptr);
  } else {
    bench<MODE><<<blocks, 256>>>(vec, iters, sink);
  }
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, e0, e1);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) printf("error: %s\n", cudaGetErrorString(err));
  return ms;
}

int main() {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  float *vec, *sink;
  cudaMalloc(&vec, 2 * 4096 * sizeof(float));
  cudaMemset(vec, 0, 2 * 4096 * sizeof(float));
  cudaMalloc(&sink, 1024 * sizeof(float));
  const int iters = 1440;  // 10 decode steps' worth of 144 synchronisations
  const char* names[] = {"sync", "exchange", "cg grid.sync + exchange"};
  for (const int per_sm : {1, 2}) {
    const int blocks = sms * per_sm;
    for (int mode = 0; mode < 3; ++mode) {
      float best = 1e30f;
      for (int rep = 0; rep < 5; ++rep) {  // the first launch warms up
        const float ms = mode == 0 ? run<0>(blocks, iters, vec, sink)
                         : mode == 1 ? run<1>(blocks, iters, vec, sink)
                                     : run<2>(blocks, iters, vec, sink);
        if (rep > 0 && ms < best) best = ms;
      }
      printf("%3d blocks x 256 threads, %-24s: %.3f us per synchronisation, %.4f ms per 144 (best of 4 launches of %d)\n",
             blocks, names[mode], 1000.f * best / iters, best * 144.f / iters, iters);
    }
  }
  return 0;
}
