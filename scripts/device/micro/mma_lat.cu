// Micro-benchmark (device only, not part of the build): latency and throughput of one warp's
// mma.sync shapes on this GPU: fp16 m16n8k16 (f32 acc) and the 1-bit m16n8k128 / m16n8k256
// (and.popc, s32 acc). nvcc -O3 -arch=sm_90 mma_lat.cu -o mma_lat && ./mma_lat
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>

template <int KIND, int CHAINS>
__global__ void bench(uint32_t seed, int iters, long long* cycles, uint32_t* sink) {
  uint32_t a0 = seed ^ threadIdx.x, a1 = a0 * 3, a2 = a0 * 5, a3 = a0 * 7, b0 = a0 * 11, b1 = a0 * 13;
  int c[CHAINS][4];
  float f[CHAINS][4];
  for (int i = 0; i < CHAINS; ++i)
    for (int j = 0; j < 4; ++j) c[i][j] = 0, f[i][j] = 0.f;
  __syncwarp();
  long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int i = 0; i < CHAINS; ++i) {
      if (KIND == 0)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(f[i][0]), "+f"(f[i][1]), "+f"(f[i][2]), "+f"(f[i][3])
                     : "r"(a0 & 0x3fff3fff), "r"(a1 & 0x3fff3fff), "r"(a2 & 0x3fff3fff), "r"(a3 & 0x3fff3fff), "r"(b0 & 0x3fff3fff), "r"(b1 & 0x3fff3fff));
      else if (KIND == 1)
        asm volatile("mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                     : "+r"(c[i][0]), "+r"(c[i][1]), "+r"(c[i][2]), "+r"(c[i][3])
                     : "r"(a0), "r"(a1), "r"(b0));
      else
        asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+r"(c[i][0]), "+r"(c[i][1]), "+r"(c[i][2]), "+r"(c[i][3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
  }
  long long t1 = clock64();
  uint32_t s = 0;
  for (int i = 0; i < CHAINS; ++i)
    for (int j = 0; j < 4; ++j) s += c[i][j] + __float_as_uint(f[i][j]);
  sink[threadIdx.x] = s;
  if (threadIdx.x == 0) *cycles = t1 - t0;
}

template <int KIND, int CHAINS>
void run(const char* name, int warps) {
  long long* dc; uint32_t* ds;
  cudaMalloc(&dc, 8); cudaMalloc(&ds, 4096 * 4);
  const int iters = 1024;
  bench<KIND, CHAINS><<<1, 32 * warps>>>(1u, iters, dc, ds);
  bench<KIND, CHAINS><<<1, 32 * warps>>>(1u, iters, dc, ds);
  long long cyc = 0; cudaMemcpy(&cyc, dc, 8, cudaMemcpyDeviceToHost);
  const double per = double(cyc) / (iters * CHAINS);
  std::printf("%-18s chains %2d warps %2d: %.2f cycles per mma per warp (%s)\n", name, CHAINS, warps, per,
              cudaGetErrorString(cudaGetLastError()));
  cudaFree(dc); cudaFree(ds);
}

int main() {
  run<0, 1>("f16 m16n8k16", 1); run<0, 8>("f16 m16n8k16", 1); run<0, 8>("f16 m16n8k16", 4); run<0, 8>("f16 m16n8k16", 16);
  run<1, 1>("b1 m16n8k128", 1); run<1, 8>("b1 m16n8k128", 1); run<1, 8>("b1 m16n8k128", 4); run<1, 8>("b1 m16n8k128", 16);
  run<2, 1>("b1 m16n8k256", 1); run<2, 8>("b1 m16n8k256", 1); run<2, 8>("b1 m16n8k256", 4); run<2, 8>("b1 m16n8k256", 16);
  return 0;
}
