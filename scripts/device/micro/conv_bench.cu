// Device micro benchmark without LibTorch: the training conv1d + SiLU kernels
// (src/kernels/cuda/conv_train.cu) at the 1.3B training shape (16 x 2048, conv_dim 4352, K = 4, a
// bf16 column slice of in_proj's 8512-wide output), version 1 and version 2 in several
// configurations (V channels per thread, U timesteps' loads in flight, T threads per block).
// Prints each one's mean time (3 warm-up launches, then 20), its DRAM bytes over that time, and
// its relative L2 error against version 1 (forward: out; backward: dx, and dw/dbias summed from
// `partial`). Exit status 1 if an error exceeds 1e-5 (dx in bf16: 1e-2).
// nvcc -O3 -arch=sm_90 -std=c++17 -I src scripts/device/micro/conv_bench.cu -o /tmp/cb && /tmp/cb
#include "kernels/cuda/conv_train.cu"
#include "micro_util.h"

#include <cmath>
#include <cstdio>
#include <vector>

// Inside the kernels' own anonymous namespace: nvcc's host stubs for template kernels of an
// anonymous namespace must be instantiated from it.
namespace dfssm::kernels {
namespace {
constexpr int64_t B = 16, L = 2048, C = 4352, LD = 8512, K = 4, OFF = 4096;
using bf = __nv_bfloat16;

using micro::normal;
double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) d += double(a[i] - b[i]) * (a[i] - b[i]), r += double(b[i]) * b[i];
  return std::sqrt(d / r);
}
std::vector<float> to_f(const std::vector<bf>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = __bfloat162float(v[i]);
  return o;
}
// dw and dbias (C x (K+1)) summed over partial's rows.
std::vector<float> sums(const float* partial, int64_t rows) {
  const auto p = micro::download(partial, size_t(rows * C * (K + 1)));
  std::vector<float> s(size_t(C * (K + 1)), 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < C * (K + 1); ++i) s[size_t(i)] += p[size_t(r * C * (K + 1) + i)];
  return s;
}

template <typename F>
float time_ms(F launch) {
  for (int i = 0; i < 3; ++i) launch();
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  cudaEventRecord(a);
  for (int i = 0; i < 20; ++i) launch();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms / 20;
}

struct Bufs {
  bf *x, *dx;
  float *w, *bias, *out, *dout, *partial;
  int64_t prow;
};

bool bad = false;
std::vector<float> ref_out, ref_dx, ref_s;

template <int V, int U, int T>
void fwd(const Bufs& d, const char* name) {
  const dim3 grid = grid_v2(int(C), V, T, dim3(1, unsigned((L + kFwdRun - 1) / kFwdRun), unsigned(B)));
  cudaMemset(d.out, 0, size_t(B * L * C) * 4);
  const float ms = time_ms([&] {
    conv_fwd_v2_kernel<bf, K, V, U, T><<<grid, T>>>(d.x + OFF, LD, d.w, d.bias, d.out, L, int(C));
  });
  const double e = rel(micro::download(d.out, size_t(B * L * C)), ref_out);
  const double gb = double(B * L * C) * (2 + 4) / 1e9;
  std::printf("fwd %-22s %.4f ms  %.2f TB/s  out err %.2e\n", name, ms, gb / ms, e);
  bad |= !(e < 1e-5);
}

template <int V, int U, int T>
void bwd(const Bufs& d, const char* name) {
  const dim3 grid = grid_v2(int(C), V, T, dim3(1, unsigned((L + kBwdRun - 1) / kBwdRun), unsigned(B)));
  cudaMemset(d.dx, 0, size_t(B * L * C) * 2);
  const float ms = time_ms([&] {
    conv_bwd_v2_kernel<bf, K, V, U, T><<<grid, T>>>(d.x + OFF, LD, d.w, d.bias, d.dout, d.dx, d.partial, L, int(C));
  });
  const double ex = rel(to_f(micro::download(d.dx, size_t(B * L * C))), ref_dx), es = rel(sums(d.partial, d.prow), ref_s);
  const double gb = double(B * L * C) * (2 + 4 + 2) / 1e9;
  std::printf("bwd %-22s %.4f ms  %.2f TB/s  dx err %.2e  dw/db err %.2e\n", name, ms, gb / ms, ex, es);
  bad |= !(ex < 1e-2 && es < 1e-5);
}

int run() {
  Bufs d;
  const size_t nx = size_t(B * L * LD), n = size_t(B * L * C);
  d.prow = conv_silu_bwd_partial_size(B, L, int(C), int(K)) / (C * (K + 1));
  std::vector<bf> hx(nx);
  for (auto& v : hx) v = __float2bfloat16(normal());
  std::vector<float> hw(static_cast<size_t>(C * K)), hb(static_cast<size_t>(C)), hd(n);
  for (auto& v : hw) v = 0.5f * normal();
  for (auto& v : hb) v = 0.5f * normal();
  for (auto& v : hd) v = normal();
  cudaMalloc(&d.x, nx * 2), cudaMalloc(&d.dx, n * 2), cudaMalloc(&d.w, hw.size() * 4), cudaMalloc(&d.bias, hb.size() * 4);
  cudaMalloc(&d.out, n * 4), cudaMalloc(&d.dout, n * 4), cudaMalloc(&d.partial, size_t(d.prow * C * (K + 1)) * 4);
  cudaMemcpy(d.x, hx.data(), nx * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(d.w, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d.bias, hb.data(), hb.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d.dout, hd.data(), n * 4, cudaMemcpyHostToDevice);
  // Version 1: the reference (and its time).
  const dim3 g1f(unsigned((C + kThreads - 1) / kThreads), unsigned((L + kFwdRun - 1) / kFwdRun), unsigned(B));
  const dim3 g1b(g1f.x, unsigned((L + kBwdRun - 1) / kBwdRun), unsigned(B));
  const float f1 = time_ms([&] { conv_fwd_kernel<bf, K><<<g1f, kThreads>>>(d.x + OFF, LD, d.w, d.bias, d.out, L, int(C)); });
  ref_out = micro::download(d.out, n);
  const float b1 = time_ms([&] {
    conv_bwd_kernel<bf, K><<<g1b, kThreads>>>(d.x + OFF, LD, d.w, d.bias, d.dout, d.dx, d.partial, L, int(C));
  });
  ref_dx = to_f(micro::download(d.dx, n)), ref_s = sums(d.partial, d.prow);
  std::printf("fwd %-22s %.4f ms  %.2f TB/s\n", "v1", f1, double(n) * 6 / 1e9 / f1);
  std::printf("bwd %-22s %.4f ms  %.2f TB/s\n", "v1", b1, double(n) * 8 / 1e9 / b1);
  fwd<4, 8, 64>(d, "V4 U8 T64 (first v2)");
  fwd<4, 4, 64>(d, "V4 U4 T64");
  fwd<4, 2, 64>(d, "V4 U2 T64");
  fwd<4, 4, 128>(d, "V4 U4 T128");
  fwd<2, 8, 128>(d, "V2 U8 T128");
  fwd<2, 4, 128>(d, "V2 U4 T128 (default)");
  fwd<2, 2, 128>(d, "V2 U2 T128");
  fwd<2, 4, 64>(d, "V2 U4 T64");
  fwd<2, 4, 256>(d, "V2 U4 T256");
  fwd<1, 4, 128>(d, "V1 U4 T128");
  fwd<1, 8, 128>(d, "V1 U8 T128");
  bwd<4, 4, 64>(d, "V4 U4 T64 (first v2)");
  bwd<4, 2, 64>(d, "V4 U2 T64");
  bwd<4, 1, 64>(d, "V4 U1 T64");
  bwd<2, 2, 128>(d, "V2 U2 T128");
  bwd<2, 1, 128>(d, "V2 U1 T128 (default)");
  bwd<1, 4, 128>(d, "V1 U4 T128");
  bwd<1, 2, 128>(d, "V1 U2 T128");
  bwd<1, 4, 64>(d, "V1 U4 T64");
  bwd<1, 4, 256>(d, "V1 U4 T256");
  bwd<1, 1, 128>(d, "V1 U1 T128");
  {  // The public entry points (what the model calls): the launcher's choice and grid.
    cudaMemset(d.out, 0, n * 4), cudaMemset(d.dx, 0, n * 2);
    const float fa = time_ms([&] {
      conv_silu_fwd_cuda(d.x + OFF, ConvDtype::bf16, LD, d.w, d.bias, d.out, B, L, int(C), int(K), nullptr);
    });
    const float ba = time_ms([&] {
      conv_silu_bwd_cuda(d.x + OFF, ConvDtype::bf16, LD, d.w, d.bias, d.dout, d.dx, d.partial, B, L, int(C), int(K),
                         nullptr);
    });
    const double eo = rel(micro::download(d.out, n), ref_out), ex = rel(to_f(micro::download(d.dx, n)), ref_dx),
                 es = rel(sums(d.partial, d.prow), ref_s);
    std::printf("fwd %-22s %.4f ms  %.2f TB/s  out err %.2e\n", "conv_silu_fwd_cuda", fa, double(n) * 6 / 1e9 / fa, eo);
    std::printf("bwd %-22s %.4f ms  %.2f TB/s  dx err %.2e  dw/db err %.2e\n", "conv_silu_bwd_cuda", ba,
                double(n) * 8 / 1e9 / ba, ex, es);
    bad |= !(eo < 1e-5 && ex < 1e-2 && es < 1e-5);
  }
  const cudaError_t e = cudaDeviceSynchronize();
  std::printf("%s\n", e == cudaSuccess ? (bad ? "ERRORS ABOVE BOUND" : "ok") : cudaGetErrorString(e));
  return e != cudaSuccess || bad;
}
}  // namespace
}  // namespace dfssm::kernels

int main() { return dfssm::kernels::run(); }
