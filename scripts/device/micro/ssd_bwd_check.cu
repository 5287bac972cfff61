// Device check without LibTorch (for a device call too short to build the gpu tests): the SSD
// backward at the 1.3B training shape (16 x 2048, 64 heads, one group, chunk 64) on the
// recomputation's workspace (ssd_scan_fwd_workspace_cuda), three ways:
//   v2 seq  version 2 (raw fragments, dΛ summed in chunk_bwd) after the sequential reverse pass,
//           the training default;
//   v2 two  version 2 after dstate_local + dstate_pass;
//   v1      version 1 (WMMA fragments; dΛ from dstate_pass): the reference here.
// Prints every gradient's relative L2 error against v1 and each way's mean time (2 warm-up calls,
// then 10, as the gpu tests' benches time them). Exit status 1 if an error exceeds 3e-3.
// nvcc -O3 -arch=sm_90 -std=c++17 -I src scripts/device/micro/ssd_bwd_check.cu src/kernels/cuda/ssd_scan.cu
//   src/kernels/cuda/ssd_scan_bwd.cu src/kernels/cuda/ssd_scan_seq.cu -o /tmp/sbc && /tmp/sbc
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "kernels/cuda/ssd_scan.h"
#include "micro_util.h"

using dfssm::kernels::SsdScanArgs;
using dfssm::kernels::SsdScanGrads;

namespace {
using micro::download;
using micro::normal;
using micro::upload;
using micro::zeros;

double rel_err(const std::vector<float>& a, const std::vector<float>& r) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += double(a[i] - r[i]) * (a[i] - r[i]), den += double(r[i]) * r[i];
  return std::sqrt(num / (den > 0 ? den : 1));
}
}  // namespace

int main() {
  const int64_t b = 16, L = 2048, H = 64, G = 1, P = 64, N = 128;
  const size_t nx = b * L * H * P, nbc = b * L * G * N, ndt = b * L * H, ns = b * H * P * N;
  std::vector<float> x(nx), B(nbc), C(nbc), dt(ndt), A(H), D(H), init(ns), dy(nx), dfin(ns);
  for (auto* v : {&x, &B, &C, &D, &init, &dy, &dfin})
    for (auto& e : *v) e = normal();
  for (auto& v : dt) v = std::log1p(std::exp(normal() - 2.f));
  for (auto& v : A) v = -std::exp(0.5f * normal());
  SsdScanArgs a;
  a.x = upload(x), a.x_row = H * P, a.dt = upload(dt), a.A = upload(A), a.B = upload(B), a.C = upload(C);
  a.bc_row = G * N, a.D = upload(D), a.init = upload(init);
  a.batch = b, a.L = L, a.H = int(H), a.G = int(G), a.P = int(P), a.N = int(N), a.T = 64;
  a.workspace = zeros(size_t(dfssm::kernels::ssd_scan_workspace_floats(a))), a.final_state = zeros(ns);
  dfssm::kernels::ssd_scan_set_seq(1);
  if (dfssm::kernels::ssd_scan_fwd_workspace_cuda(a, nullptr) != cudaSuccess) return printf("forward failed\n"), 2;

  SsdScanGrads g;
  g.dy = upload(dy), g.dfinal = upload(dfin);
  g.dx = zeros(nx), g.ddt = zeros(ndt), g.dA = zeros(H), g.dB = zeros(nbc), g.dC = zeros(nbc), g.dD = zeros(H);
  g.dinit = zeros(ns), g.workspace = zeros(size_t(dfssm::kernels::ssd_scan_bwd_workspace_floats(a)));
  if (!dfssm::kernels::ssd_scan_bwd_supported(a, g)) return printf("backward not supported\n"), 2;
  const char* names[] = {"dx", "ddt", "dA", "dB", "dC", "dD", "dinit"};
  const std::pair<float*, size_t> outs[] = {{g.dx, nx}, {g.ddt, ndt}, {g.dA, size_t(H)}, {g.dB, nbc},
                                            {g.dC, nbc}, {g.dD, size_t(H)}, {g.dinit, ns}};
  struct Way {
    const char* name;
    int version, seq;
  } ways[] = {{"v1 (reference)", 1, 0}, {"v2 seq (the default)", 2, 1}, {"v2 two kernels", 2, 0}};
  std::vector<std::vector<float>> ref;
  int rc = 0;
  for (const auto& w : ways) {
    dfssm::kernels::ssd_scan_set_version(w.version);
    dfssm::kernels::ssd_scan_set_seq(w.seq);
    if (dfssm::kernels::ssd_scan_bwd_cuda(a, g, nullptr) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
      return printf("%s: backward failed: %s\n", w.name, cudaGetErrorString(cudaGetLastError())), 2;
    std::vector<std::vector<float>> got;
    for (const auto& [p, n] : outs) got.push_back(download(p, n));
    for (int i = 0; i < 2; ++i) dfssm::kernels::ssd_scan_bwd_cuda(a, g, nullptr);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    cudaEventRecord(e0);
    for (int i = 0; i < 10; ++i) dfssm::kernels::ssd_scan_bwd_cuda(a, g, nullptr);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    printf("%-22s backward %.3f ms", w.name, ms / 10);
    if (ref.empty()) {
      ref = got;
    } else {
      for (size_t i = 0; i < got.size(); ++i) {
        const double e = rel_err(got[i], ref[i]);
        printf("  %s %.2e", names[i], e);
        if (!(e < 3e-3)) rc = 1;
      }
    }
    printf("\n");
  }
  printf("%s\n", rc == 0 ? "ok: every gradient within 3e-3 of version 1" : "FAILED: an error above 3e-3");
  return rc;
}
