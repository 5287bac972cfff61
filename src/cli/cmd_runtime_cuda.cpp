// `dfssm generate --device cuda` and `dfssm bench --device cuda`: the runtime's CUDA backend
// (runtime/cuda/cuda_session.h). Built only with dfssm_runtime_cuda; cmd_runtime.cpp forwards
// here when it sees `--device cuda`.
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>

#include "cli/args.h"
#include "cli/runtime_cli.h"
#include "core/error.h"
#include "kernels/cuda/decode.h"
#include "quant/quant_config.h"
#include "runtime/cuda/cuda_session.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer.h"

namespace dfssm::cli {

namespace {
runtime::CudaSessionOptions cuda_options(const Args& args) {
  runtime::CudaSessionOptions o;
  o.state_dtype = args.get("state-dtype", "f32");
  o.cuda_graph = !args.has("no-graph");
  o.pdl = !args.has("no-pdl");
  o.fold_norms = !args.has("no-fold");
  o.planes_batch1 = !args.has("no-planes");
  o.device = int(args.get_int("gpu", 0));
  o.int8_prefill = !args.has("no-int8-prefill");
  o.prefill_chunk = args.get_int("prefill-chunk", o.prefill_chunk);
  DFSSM_CHECK(o.prefill_chunk >= 1, "--prefill-chunk must be >= 1");
  (void)args.get("device", "cuda");
  return o;
}

// Device-to-device copy bandwidth (bytes read + written per second), 1 GiB, median of 5.
double copy_bandwidth_gbs() {
  const size_t n = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) return 0;
  cudaMemset(a, 1, n);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> t;
  for (int i = 0; i < 6; ++i) {
    cudaEventRecord(e0);
    cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i > 0) t.push_back(ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  std::sort(t.begin(), t.end());
  return 2.0 * double(n) / (t[t.size() / 2] / 1e3) / 1e9;
}
// The launch floor of a decode step: the same number of dependent kernels with empty bodies
// (kernels/cuda/decode.h launch_floor_ms), at the decode kernels' typical grid and at one block.
void launch_floor(int64_t kernels, double step_ms, bool pdl) {
  float full = 0, one = 0;
  int sms = 0, dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (kernels::cuda::launch_floor_ms(int(kernels), sms, 256, pdl, 20, &full) != cudaSuccess ||
      kernels::cuda::launch_floor_ms(int(kernels), 1, 32, pdl, 20, &one) != cudaSuccess) {
    std::printf("  launch floor: probe failed\n");
    return;
  }
  std::printf("  launch floor: %lld empty dependent kernels in a graph (%s): %.4f ms at %d x 256 threads (%.2f us each), "
              "%.4f ms at 1 x 32 -> kernel bodies ~%.4f ms of the %.4f ms step\n",
              (long long)kernels, pdl ? "PDL" : "no PDL", full, sms, 1e3 * full / double(kernels), one,
              step_ms - double(full), step_ms);
}
// Debug switch DFSSM_CUDA_TRACE=1: the timeline of one graph-replayed step (CudaSession::
// trace_step), per kernel kind averaged over the layers but the first and last two, in us:
// gap = first block's entry after the previous kernel's last exit (negative: pre-launched by
// PDL), wait = block 0's PDL wait release after the previous kernel's last exit, then block 0's
// phases, tail = last exit after block 0's, total = last exit after the previous last exit.
void print_trace(const std::vector<std::pair<std::string, std::vector<uint64_t>>>& tr) {
  namespace kc = kernels::cuda;
  if (tr.size() < 12) return;
  struct Acc {
    double gap = 0, wait = 0, lastwait = 0, p1 = 0, comp = 0, epi = 0, tail = 0, total = 0;
    int n = 0;
  };
  std::map<std::string, Acc> acc;
  for (size_t i = 3; i + 6 < tr.size(); ++i) {
    const auto& t = tr[i].second;
    const double prev = double(tr[i - 1].second[kc::kLastExit]);
    Acc& a = acc[tr[i].first];
    a.gap += (double(t[kc::kFirstEntry]) - prev) / 1e3;
    a.wait += (double(t[kc::kWaited]) - prev) / 1e3;
    a.lastwait += (double(t[kc::kLastWaited]) - double(t[kc::kWaited])) / 1e3;
    a.p1 += (double(t[kc::kPhase1]) - double(t[kc::kWaited])) / 1e3;
    a.comp += (double(t[kc::kCompute]) - double(t[kc::kPhase1])) / 1e3;
    a.epi += (double(t[kc::kEpilogue]) - double(t[kc::kCompute])) / 1e3;
    a.tail += (double(t[kc::kLastExit]) - double(t[kc::kEpilogue])) / 1e3;
    a.total += (double(t[kc::kLastExit]) - prev) / 1e3;
    a.n++;
  }
  std::printf("  trace (graph replay, us, mean over %d layers): kernel: gap | wait | last wait - block 0's | "
              "phase1 | compute | epilogue | tail | total\n",
              acc.begin()->second.n);
  for (const auto& [k, a] : acc)
    std::printf("    %-8s %6.2f | %5.2f | %5.2f | %5.2f | %5.2f | %5.2f | %5.2f | %5.2f\n", k.c_str(), a.gap / a.n,
                a.wait / a.n, a.lastwait / a.n, a.p1 / a.n, a.comp / a.n, a.epi / a.n, a.tail / a.n, a.total / a.n);
}
}  // namespace

int cmd_generate_cuda(int argc, char** argv) {
  auto switches = kGenerateSwitches;
  switches.insert({"no-graph", "no-pdl", "no-int8-prefill", "no-fold", "no-planes"});
  const Args args(argc, argv, switches);
  GenerateJob job = generate_job(args);
  const auto copt = cuda_options(args);
  const std::string tok_file = args.get("tokenizer", "");
  args.check_unused();
  DFSSM_CHECK(args.positionals().empty(), "unexpected argument '", args.positionals()[0], "'");
  const auto t_load = Clock::now();
  load_generate_job(job, args.has("verify"), tok_file);
  runtime::CudaSession session(job.model, 1, copt);
  const double load_ms = ms_since(t_load);
  const GenerateStats st = run_generation(session, job);
  std::fprintf(stderr,
               "[dfssm generate] load+upload %.0f ms | prompt %zu tokens, prefill %.1f ms (%.1f tokens/s) | generated "
               "%lld tokens in %.1f ms (%.2f tokens/s) | cuda (%s), graph %s, pdl %s\n",
               load_ms, job.ids.size(), st.prefill_ms, double(job.ids.size()) / st.prefill_ms * 1e3, st.generated,
               st.gen_ms, st.generated > 0 ? double(st.generated) / st.gen_ms * 1e3 : 0.0,
               session.device_name().c_str(), copt.cuda_graph ? "on" : "off", copt.pdl ? "on" : "off");
  return 0;
}

int cmd_bench_cuda(int argc, char** argv) {
  Args args(argc, argv, {"random", "no-membw", "no-graph", "no-pdl", "no-int8-prefill", "no-fold", "no-planes"});
  const auto o = cuda_options(args);
  const int64_t L = args.get_int("prefill", 2048);
  const int steps = int(args.get_int("steps", 64)), warmup = int(args.get_int("warmup", 4));
  const std::string batches = args.get("batches", "1,4,8");
  DFSSM_CHECK(L >= 1 && steps >= 1 && warmup >= 0, "--prefill and --steps must be >= 1");
  const bool membw = !args.has("no-membw");
  std::string what;
  const auto model = bench_model(args, &what);
  const auto& cfg = model->config();
  std::vector<int64_t> bs;
  for (const auto& b : parse_ids(batches)) bs.push_back(b);

  auto t_up = Clock::now();
  runtime::CudaSession probe(model, 1, o);
  std::printf("engine runtime (cuda, %s, state %s, graph %s, pdl %s, folded norms %s, projection inputs %s)  model %s  d_model %lld  n_layer %lld  vocab %lld"
              "  (upload + repack %.0f ms)\n",
              probe.device_name().c_str(), o.state_dtype.c_str(), o.cuda_graph ? "on" : "off", o.pdl ? "on" : "off",
              probe.folded(1) ? "batch 1" : "off", !probe.planes() ? "fp16" : probe.planes_out() ? "1-bit planes at batch 1" : "1-bit planes at batch 1 (in_proj)", what.c_str(), (long long)cfg.d_model, (long long)cfg.n_layer, (long long)cfg.padded_vocab(),
              ms_since(t_up));
  const double bw = membw ? copy_bandwidth_gbs() : 0.0;
  if (membw) std::printf("device copy bandwidth (1 GiB D2D, read + write): %.0f GB/s\n", bw);

  // Prefill: one sequence of L tokens.
  std::vector<int32_t> ids(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) ids[size_t(i)] = int32_t((i * 7919 + 1) % cfg.vocab_size);
  probe.prefill(0, ids.data(), std::min<int64_t>(L, 8));  // capture the graphs
  probe.prefill(0, ids.data(), L);                        // cuBLASLt plans, buffers
  std::vector<double> pre;
  for (int r = 0; r < 3; ++r) {
    probe.reset();
    const auto t0 = Clock::now();
    probe.prefill(0, ids.data(), L);
    pre.push_back(ms_since(t0));
  }
  std::sort(pre.begin(), pre.end());
  const bool int8 = probe.options().int8_prefill && L >= o.int8_prefill_min;  // (as the session runs it)
  std::printf("prefill 1x%lld: %.1f ms (%.0f tokens/s; %s)\n", (long long)L, pre[1], double(L) / pre[1] * 1e3,
              int8 ? ("INT8 tensor-core GEMMs, chunks of " + std::to_string(o.prefill_chunk) + " tokens, " +
                      std::to_string(probe.prefill_weight_bytes() / 1000000) + " MB of int8 scaffold copies")
                         .c_str()
                   : "token-by-token decode steps");

  const double wbytes = double(probe.weight_bytes_per_step());
  const double sbytes = 2.0 * double(probe.state_bytes_per_sequence());
  runtime::CudaSessionOptions od = o;
  od.int8_prefill = false;  // decode only: no int8 scaffold copies
  for (int64_t B : bs) {
    runtime::CudaSession s(model, B, od);
    const double host_ms = median_step_ms(s, cfg.vocab_size, steps, warmup);
    const double dev_ms = s.time_steps_ms(std::max(steps, 20));
    const double bytes = double(s.weight_bytes_per_step()) + double(B) * sbytes;
    std::printf("decode batch %lld: %.4f ms/step device (%.4f ms/token), %.4f ms/step host-timed step() incl. copies + "
                "sync | %.1f MB/step (%.1f weights + %.1f state r+w) -> %.0f GB/s",
                (long long)B, dev_ms, dev_ms / double(B), host_ms, bytes / 1e6, double(s.weight_bytes_per_step()) / 1e6,
                double(B) * sbytes / 1e6, bytes / (dev_ms / 1e3) / 1e9);
    if (bw > 0) std::printf(", floor %.4f ms (%.0f%% of it)", bytes / (bw * 1e9) * 1e3, bytes / (bw * 1e9) * 1e3 / dev_ms * 100);
    std::printf("\n");
    if (B == bs.front()) {
      launch_floor(s.kernels_per_step(B), dev_ms, o.pdl);
      if (std::getenv("DFSSM_CUDA_TRACE")) print_trace(s.trace_step());
      const auto prof = s.profile_step_ms();
      double total = 0;
      for (const auto& [k, v] : prof) total += v;
      std::printf("  per kernel kind, batch %lld, launched one by one (no graph, no PDL; includes launch gaps): total "
                  "%.3f ms:",
                  (long long)B, total);
      for (const auto& [k, v] : prof) std::printf("  %s %.3f ms (%.0f%%)", k.c_str(), v, v / total * 100);
      std::printf("\n");
    }
  }
  (void)wbytes;
  return 0;
}

}  // namespace dfssm::cli
