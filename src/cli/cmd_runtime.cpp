// The runtime commands (no LibTorch): `dfssm generate` and `dfssm bench`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
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
    "  --device cpu       (cuda comes with the CUDA backend)\n"
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
    "Env: DFSSM_CPU_ISA=scalar|avx2|avx512 forces a kernel path.\n";

namespace {

using clk = std::chrono::steady_clock;
double ms_since(clk::time_point t0) { return std::chrono::duration<double, std::milli>(clk::now() - t0).count(); }

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> out;
  std::string tok;
  std::stringstream ss(s);
  while (ss >> tok) {
    for (auto& ch : tok)
      if (ch == ',') ch = ' ';
    std::stringstream inner(tok);
    std::string part;
    while (inner >> part) {
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(part.c_str(), &end, 10);
      DFSSM_CHECK(end && *end == '\0' && errno == 0 && v >= INT32_MIN && v <= INT32_MAX, "--ids: '", part,
                  "' is not an integer token id");
      out.push_back(int32_t(v));
    }
  }
  return out;
}

runtime::SessionOptions session_options(const Args& args) {
  runtime::SessionOptions o;
  o.threads = int(args.get_int("threads", 0));
  DFSSM_CHECK(o.threads >= 0, "--threads must be >= 0 (0 = all cores)");
  o.state_dtype = args.get("state-dtype", "f32");
  o.prefill_chunk = args.get_int("prefill-chunk", 64);
  o.act = args.get("act", "i16");
  return o;
}

void check_device(const Args& args) {
  const std::string dev = args.get("device", "cpu");
  DFSSM_CHECK(dev == "cpu", "--device ", dev, ": only the CPU runtime is built so far (--device cpu)");
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  Args args(argc, argv, {"ignore-eos", "verify"});
  DFSSM_CHECK(args.has("model"), "generate needs -m MODEL.dfssm.safetensors");
  const std::string path = args.get("model", "");
  DFSSM_CHECK(args.has("prompt") != args.has("ids"), "give exactly one of -p \"prompt\" or --ids \"1 2 3\"");
  const long long max_tokens = args.get_int("max-tokens", 128);
  DFSSM_CHECK(max_tokens >= 1, "--max-tokens must be >= 1 (got ", max_tokens, ")");
  runtime::SamplerOptions so;
  so.temperature = args.get_double("temperature", 0.8);
  so.top_k = args.get_int("top-k", 40);
  so.top_p = args.get_double("top-p", 0.95);
  so.seed = uint64_t(args.get_int("seed", 0));
  check_device(args);
  const auto sopt = session_options(args);
  const bool ids_mode = args.has("ids");
  const std::string prompt = args.get(ids_mode ? "ids" : "prompt", "");
  const std::string tok_file = args.get("tokenizer", "");
  const bool ignore_eos = args.has("ignore-eos");
  runtime::LoadOptions lo;
  lo.verify_codes = args.has("verify");
  args.check_unused();
  DFSSM_CHECK(args.positionals().empty(), "unexpected argument '", args.positionals()[0], "'");

  const auto t_load = clk::now();
  auto model = runtime::Model::load(path, lo);
  const double load_ms = ms_since(t_load);
  const auto& cfg = model->config();
  std::unique_ptr<runtime::Tokenizer> tok;
  if (!ids_mode || !tok_file.empty()) {
    tok = std::make_unique<runtime::Tokenizer>(tok_file.empty() ? runtime::Tokenizer::from_metadata(model->metadata(), path)
                                                                : runtime::Tokenizer::from_file(tok_file));
    DFSSM_CHECK(tok->vocab_size() <= cfg.vocab_size, "tokenizer has ", tok->vocab_size(),
                " pieces but the model's vocabulary is ", cfg.vocab_size, " (wrong --tokenizer?)");
  }
  const std::vector<int32_t> ids = ids_mode ? parse_ids(prompt) : tok->encode(prompt);
  DFSSM_CHECK(!ids.empty(), ids_mode ? "--ids is empty" : "the prompt encodes to no tokens; give a non-empty -p");

  runtime::Session session(model, 1, sopt);
  runtime::Sampler sampler(so, cfg.vocab_size);
  const int32_t eos = tok ? tok->eos_id() : -1;
  std::unique_ptr<runtime::TextStream> stream;
  if (!ids_mode) stream = std::make_unique<runtime::TextStream>(*tok);

  auto t0 = clk::now();
  const float* logits = session.prefill(0, ids.data(), int64_t(ids.size()));
  const double prefill_ms = ms_since(t0);
  if (!ids_mode) {
    std::fputs(prompt.c_str(), stdout);
    std::fflush(stdout);
  }
  t0 = clk::now();
  long long n = 0;
  for (; n < max_tokens; ++n) {
    const int32_t next = sampler.sample(logits);
    if (next == eos && !ignore_eos) break;
    if (ids_mode) std::printf("%s%d", n ? " " : "", next);
    else std::fputs(stream->push(next).c_str(), stdout);
    std::fflush(stdout);
    if (n + 1 < max_tokens) logits = session.step(&next);
  }
  std::printf("\n");
  const double gen_ms = ms_since(t0);
  std::fprintf(stderr,
               "[dfssm generate] load %.0f ms | prompt %zu tokens, prefill %.1f ms (%.1f tokens/s) | generated %lld "
               "tokens in %.1f ms (%.2f tokens/s) | %s, %d threads\n",
               load_ms, ids.size(), prefill_ms, double(ids.size()) / prefill_ms * 1e3, n, gen_ms,
               n > 0 ? double(n) / gen_ms * 1e3 : 0.0, kernels::cpu::isa_name(session.isa()), session.threads());
  return 0;
}

namespace {

// Median step time of `steps` decode steps after `warmup`, batch B, from a short prefill.
double time_decode(std::shared_ptr<const runtime::Model> model, const runtime::SessionOptions& o, int64_t B, int steps,
                   int warmup) {
  runtime::Session s(model, B, o);
  const int64_t vs = model->config().vocab_size;
  std::vector<int32_t> toks(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) toks[size_t(b)] = int32_t((b * 7919 + 13) % vs);
  std::vector<double> t;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto t0 = clk::now();
    const float* lg = s.step(toks.data());
    const double ms = ms_since(t0);
    if (i >= warmup) t.push_back(ms);
    for (int64_t b = 0; b < B; ++b)  // greedy next tokens keep the run realistic
      toks[size_t(b)] = int32_t(std::max_element(lg + b * s.vocab(), lg + b * s.vocab() + vs) - (lg + b * s.vocab()));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int cmd_bench(int argc, char** argv) {
#ifdef DFSSM_WITH_TORCH
  for (int i = 0; i < argc; ++i)
    if ((!std::strcmp(argv[i], "--engine") && i + 1 < argc && !std::strcmp(argv[i + 1], "torch")) ||
        !std::strcmp(argv[i], "--engine=torch"))
      return cmd_bench_torch(argc, argv);
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
  std::shared_ptr<runtime::Model> model;
  std::string what;
  if (args.has("random")) {
    what = args.get("geometry", "mamba2-1.3b");
    Mamba2Config cfg = Mamba2Config::geometry(what);
    quant::QuantConfig q;
    const auto qkeys = quant::QuantConfig::keys();
    for (const auto& [k, v] : args.overrides()) {
      if (std::find(qkeys.begin(), qkeys.end(), k) != qkeys.end()) q.set(k, v);
      else cfg.set(k, v);
    }
    const uint64_t seed = uint64_t(args.get_int("seed", 0));
    args.check_unused();
    const auto t0 = clk::now();
    model = runtime::Model::random(cfg, q, seed);
    std::printf("random %s model (%s, rank %lld) built in %.1f s\n", what.c_str(), q.format.c_str(),
                (long long)q.effective_rank(), ms_since(t0) / 1e3);
  } else {
    DFSSM_CHECK(args.has("model"), "bench needs -m MODEL.dfssm.safetensors or --geometry NAME --random");
    what = args.get("model", "");
    args.check_unused();
    model = runtime::Model::load(what);
  }
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
    const auto t0 = clk::now();
    probe.prefill(0, ids.data(), L);
    pre.push_back(ms_since(t0));
  }
  std::sort(pre.begin(), pre.end());
  std::printf("prefill 1x%lld: %.1f ms (%.1f tokens/s, chunk %lld)\n", (long long)L, pre[1], double(L) / pre[1] * 1e3,
              (long long)o.prefill_chunk);

  const double ms1 = time_decode(model, o, 1, steps, warmup);
  const double gbs = (wbytes + sbytes) / (ms1 / 1e3) / 1e9;
  std::printf("decode batch 1: %.2f ms/token (%.2f tokens/s)\n", ms1, 1e3 / ms1);
  std::printf("bytes per decode step: %.1f MB weights + %.1f MB state (read + write) = %.1f MB; achieved %.2f GB/s\n",
              wbytes / 1e6, sbytes / 1e6, (wbytes + sbytes) / 1e6, gbs);
  if (B2 > 0) {
    const double msb = time_decode(model, o, B2, steps, warmup);
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
