// The runtime commands (no LibTorch): `dfssm generate` and `dfssm bench`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/runtime_cli.h"
#include "core/error.h"
#include "kernels/cpu/kernel_bench.h"
#include "quant/layout.h"
#include "runtime/membw.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "runtime/thread_pool.h"
#include "runtime/tokenizer.h"

namespace dfssm::cli {

const char* const kGenerateUsage =
    "usage: dfssm generate -m MODEL.dfssm.safetensors (-p \"prompt\" | --ids \"1 2 3\") [options]\n\n"
    "Streams generated text (or ids with --ids) to stdout; statistics go to stderr.\n"
    "  --max-tokens N     tokens to generate (default 128; must be >= 1)\n"
    "  --temperature T    0 = greedy (default 0.8)\n"
    "  --top-k K          keep the K most likely tokens (default 40; 0 = all)\n"
    "  --top-p P          nucleus sampling mass (default 0.95; 1 = off)\n"
    "  --seed S           sampling seed (default 0): the same seed gives the same text\n"
    "  --device cpu|cuda  cuda: the CUDA backend, in builds with it (--no-graph, --no-pdl, --gpu N,\n"
    "                     --no-fold, --no-planes, --no-int8-prefill, --prefill-chunk N)\n"
    "  --threads N        CPU threads (default: all cores)\n"
    "  --state-dtype f32|f16   SSM state storage (default f32)\n"
    "  --act i16|f32|i8     activations of the 1-bit GEMM (default i16; docs/runtime.md)\n"
    "  --tokenizer FILE   a SentencePiece .model instead of the one embedded in the file\n"
    "  --ignore-eos       keep generating after the end-of-sequence token\n"
    "  --verify           also scan every packed code blob at load (invalid codes, padding)\n"
    "Env: DFSSM_CPU_ISA=scalar|avx2|avx512 forces a kernel path.\n";

const char* const kBenchUsage =
    "usage: dfssm bench (-m MODEL.dfssm.safetensors | --geometry NAME --random) [options]\n"
    "       dfssm bench --kernels\n"
#ifdef DFSSM_WITH_TORCH
"       dfssm bench --engine torch (--geometry NAME | --checkpoint PATH) [options]\n\n"
    "Times the LibTorch model: prefill of batch x length tokens, then decode steps.\n"
    "  --device cpu|cuda   (default cuda if available)\n"
    "  --dtype fp32|fp16|bf16   (default fp16 on cuda, fp32 on cpu)\n"
    "  --batch N (1)  --prefill L (2048)  --steps N (32)  --warmup N (3)  --reps N (5)  --seed N (0)\n"
    "Prints median times; a random model is built for --geometry.\n"
#endif
    "\nTimes the runtime: prefill tokens/s, decode ms/token at batch 1 and --batch2, the bytes a\n"
    "decode step streams, the achieved GB/s, and the machine's memory bandwidth (STREAM-like\n"
    "copy/triad/read) with decode as a fraction of the bandwidth floor.\n"
    "  --random           build a random packed model of --geometry in memory (no file needed)\n"
    "  --geometry NAME    mamba2-130m ... mamba2-2.7b, tiny, test (default mamba2-1.3b); key=value overrides\n"
    "                     and quant keys (format=, rank=, ...) apply to the random model\n"
    "  --prefill L (128)  --steps N (16)  --warmup N (2)  --batch2 B (8; 0 = skip)  --threads N\n"
    "  --state-dtype f32|f16  --act i16|f32|i8 (sign GEMM activations, default i16)\n"
    "  --no-membw         skip the bandwidth measurement\n"
    "  --kernels          single-thread kernel micro-benchmarks (sign GEMM variants per ISA)\n"
    "  --device cuda      the CUDA backend (builds with it): prefill 1x--prefill (default 2048), decode\n"
    "                     ms/token at --batches (default 1,4,8), bytes/step, GB/s, per-kernel-kind times\n"
    "Env: DFSSM_CPU_ISA=scalar|avx2|avx512 forces a kernel path.\n";

namespace {

runtime::SessionOptions session_options(const Args& args) {
  runtime::SessionOptions o;
  o.threads = int(args.get_int("threads", 0));
  DFSSM_CHECK(o.threads >= 0, "--threads must be >= 0 (0 = all cores)");
  o.state_dtype = args.get("state-dtype", "f32");
  o.prefill_chunk = args.get_int("prefill-chunk", 64);
  o.act = args.get("act", "i16");
  return o;
}

#ifdef DFSSM_HAVE_CUDA_RUNTIME
// `--device cuda` (or --device=cuda) goes to the CUDA backend (cmd_runtime_cuda.cpp).
bool wants_cuda(int argc, char** argv) {
  for (int i = 0; i < argc; ++i)
    if ((!std::strcmp(argv[i], "--device") && i + 1 < argc && !std::strcmp(argv[i + 1], "cuda")) ||
        !std::strcmp(argv[i], "--device=cuda"))
      return true;
  return false;
}
#endif

void check_device(const Args& args) {
  const std::string dev = args.get("device", "cpu");
  DFSSM_CHECK(dev == "cpu", "--device ", dev, ": only the CPU runtime is built so far (--device cpu)");
}

}  // namespace

#ifdef DFSSM_HAVE_CUDA_RUNTIME
int cmd_generate_cuda(int argc, char** argv);  // cmd_runtime_cuda.cpp
int cmd_bench_cuda(int argc, char** argv);
#endif

int cmd_generate(int argc, char** argv) {
#ifdef DFSSM_HAVE_CUDA_RUNTIME
  if (wants_cuda(argc, argv)) return cmd_generate_cuda(argc, argv);
#endif
  const Args args(argc, argv, kGenerateSwitches);
  GenerateJob job = generate_job(args);
  check_device(args);
  const auto sopt = session_options(args);
  const std::string tok_file = args.get("tokenizer", "");
  args.check_unused();
  DFSSM_CHECK(args.positionals().empty(), "unexpected argument '", args.positionals()[0], "'");
  load_generate_job(job, args.has("verify"), tok_file);
  runtime::Session session(job.model, 1, sopt);
  const GenerateStats st = run_generation(session, job);
  std::fprintf(stderr,
               "[dfssm generate] load %.0f ms | prompt %zu tokens, prefill %.1f ms (%.1f tokens/s) | generated %lld "
               "tokens in %.1f ms (%.2f tokens/s) | %s, %d threads, activations %s\n",
               job.load_ms, job.ids.size(), st.prefill_ms, double(job.ids.size()) / st.prefill_ms * 1e3, st.generated,
               st.gen_ms, st.generated > 0 ? double(st.generated) / st.gen_ms * 1e3 : 0.0,
               kernels::cpu::isa_name(session.isa()), session.threads(), sopt.act.c_str());
  return 0;
}


int cmd_bench(int argc, char** argv) {
#ifdef DFSSM_WITH_TORCH
  for (int i = 0; i < argc; ++i)
    if ((!std::strcmp(argv[i], "--engine") && i + 1 < argc && !std::strcmp(argv[i + 1], "torch")) ||
        !std::strcmp(argv[i], "--engine=torch"))
      return cmd_bench_torch(argc, argv);
#endif
#ifdef DFSSM_HAVE_CUDA_RUNTIME
  if (wants_cuda(argc, argv)) return cmd_bench_cuda(argc, argv);
#endif
  Args args(argc, argv, {"random", "kernels", "no-membw"});
  if (args.has("kernels")) {
    const double seconds = args.get_double("seconds", 0.3);
    args.check_unused();
    std::fputs(kernels::cpu::kernel_bench_report(seconds).c_str(), stdout);
    return 0;
  }
  const std::string engine = args.get("engine", "runtime");
  DFSSM_CHECK(engine == "runtime", "--engine must be runtime or torch (torch needs a LibTorch build)");
  check_device(args);
  const auto o = session_options(args);
  const int64_t L = args.get_int("prefill", 128), B2 = args.get_int("batch2", 8);
  const int steps = int(args.get_int("steps", 16)), warmup = int(args.get_int("warmup", 2));
  DFSSM_CHECK(L >= 1 && steps >= 1 && warmup >= 0 && B2 >= 0, "--prefill and --steps must be >= 1");
  const bool membw = !args.has("no-membw");
  std::string what;
  const auto model = bench_model(args, &what);
  const auto& cfg = model->config();
  runtime::Session probe(model, 1, o);
  const double wbytes = double(model->weight_bytes_per_token());
  const double sbytes = 2.0 * double(probe.state_bytes_per_sequence());  // read + write
  std::printf("engine runtime (cpu, %s, %d threads, state %s%s)  model %s  d_model %lld  n_layer %lld  vocab %lld\n",
              kernels::cpu::isa_name(probe.isa()), probe.threads(), o.state_dtype.c_str(),
              (", activations " + o.act).c_str(), what.c_str(), (long long)cfg.d_model,
              (long long)cfg.n_layer, (long long)cfg.padded_vocab());

  // Prefill: one sequence of L tokens.
  std::vector<int32_t> ids(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) ids[size_t(i)] = int32_t((i * 7919 + 1) % cfg.vocab_size);
  std::vector<double> pre;
  for (int r = 0; r < 3; ++r) {
    probe.reset();
    const auto t0 = Clock::now();
    probe.prefill(0, ids.data(), L);
    pre.push_back(ms_since(t0));
  }
  std::sort(pre.begin(), pre.end());
  std::printf("prefill 1x%lld: %.1f ms (%.1f tokens/s, chunk %lld)\n", (long long)L, pre[1], double(L) / pre[1] * 1e3,
              (long long)o.prefill_chunk);

  probe.reset();
  const double ms1 = median_step_ms(probe, cfg.vocab_size, steps, warmup);
  const double gbs = (wbytes + sbytes) / (ms1 / 1e3) / 1e9;
  std::printf("decode batch 1: %.2f ms/token (%.2f tokens/s)\n", ms1, 1e3 / ms1);
  std::printf("bytes per decode step: %.1f MB weights + %.1f MB state (read + write) = %.1f MB; achieved %.2f GB/s\n",
              wbytes / 1e6, sbytes / 1e6, (wbytes + sbytes) / 1e6, gbs);
  if (B2 > 0) {
    runtime::Session batched(model, B2, o);
    const double msb = median_step_ms(batched, cfg.vocab_size, steps, warmup);
    std::printf("decode batch %lld: %.2f ms/step (%.2f ms/token, %.1f tokens/s in all)\n", (long long)B2, msb,
                msb / double(B2), double(B2) / msb * 1e3);
  }
  if (membw) {
    runtime::ThreadPool pool(o.threads);
    const auto bw = runtime::measure_bandwidth(pool);
    const double floor_ms = (wbytes + sbytes) / (bw.best() * 1e9) * 1e3;
    std::printf("memory bandwidth (%d threads, 3 x 256 MiB): copy %.2f GB/s, triad %.2f GB/s, read %.2f GB/s\n",
                pool.size(), bw.copy_gbs, bw.triad_gbs, bw.read_gbs);
    std::printf("bandwidth floor at %.2f GB/s: %.2f ms/token; decode batch 1 runs at %.0f%% of it\n", bw.best(),
                floor_ms, floor_ms / ms1 * 100);
  }
  return 0;
}

}  // namespace dfssm::cli
