// Pieces shared by the runtime commands on every device (cmd_runtime.cpp for the CPU,
// cmd_runtime_cuda.cpp for CUDA): token-id parsing, the model a benchmark runs (a file or a
// random geometry), and the generation loop, which is a template over the session type (both
// sessions have prefill(seq, ids, n) and step(tokens)).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cli/args.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer.h"

namespace dfssm::cli {

using Clock = std::chrono::steady_clock;
inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// "1 2 3" or "1,2,3" -> ids; throws dfssm::Error naming the bad piece.
std::vector<int32_t> parse_ids(const std::string& s);

// `-m FILE` or `--geometry NAME --random [key=value ...]` (geometry and quant keys); prints what
// it built. Calls args.check_unused(): read every other flag before.
std::shared_ptr<runtime::Model> bench_model(const Args& args, std::string* what);

// Everything `generate` reads from its flags, and the loaded model, tokenizer and prompt ids.
struct GenerateJob {
  std::string path, prompt;
  bool ids_mode = false, ignore_eos = false;
  long long max_tokens = 128;
  runtime::SamplerOptions sampler;
  std::shared_ptr<runtime::Model> model;
  std::unique_ptr<runtime::Tokenizer> tok;
  std::vector<int32_t> ids;
  double load_ms = 0;
};
// Switch flags (no value) of `generate` on every device.
inline const std::set<std::string> kGenerateSwitches = {"ignore-eos", "verify"};
// Reads and checks the shared generate flags (not the device ones).
GenerateJob generate_job(const Args& args);
// Then (after args.check_unused()): loads the model and tokenizer and encodes the prompt.
void load_generate_job(GenerateJob& job, bool verify_codes, const std::string& tok_file);

struct GenerateStats {
  double prefill_ms = 0, gen_ms = 0;
  long long generated = 0;
};

// Prefill, then sample / stream / step until max_tokens or EOS. Text goes to stdout as it comes.
template <class Session>
GenerateStats run_generation(Session& session, const GenerateJob& job) {
  GenerateStats st;
  // Only ids the tokenizer can print are sampled (a model's vocabulary may be larger than it).
  const int64_t vocab = job.model->config().vocab_size;
  runtime::Sampler sampler(job.sampler, job.tok ? std::min<int64_t>(vocab, job.tok->vocab_size()) : vocab);
  const int32_t eos = job.tok ? job.tok->eos_id() : -1;
  std::unique_ptr<runtime::TextStream> stream;
  if (!job.ids_mode) stream = std::make_unique<runtime::TextStream>(*job.tok);
  auto t0 = Clock::now();
  const float* logits = session.prefill(0, job.ids.data(), int64_t(job.ids.size()));
  st.prefill_ms = ms_since(t0);
  if (!job.ids_mode) std::fputs(job.prompt.c_str(), stdout), std::fflush(stdout);
  t0 = Clock::now();
  for (; st.generated < job.max_tokens; ++st.generated) {
    const int32_t next = sampler.sample(logits);
    if (next == eos && !job.ignore_eos) break;
    if (job.ids_mode) std::printf("%s%d", st.generated ? " " : "", next);
    else std::fputs(stream->push(next).c_str(), stdout);
    std::fflush(stdout);
    if (st.generated + 1 < job.max_tokens) logits = session.step(&next);
  }
  std::printf("\n");
  std::fflush(stdout);  // before the caller's statistics on stderr
  st.gen_ms = ms_since(t0);
  return st;
}

// Median wall time of `steps` decode steps of every sequence after `warmup`, feeding each
// sequence its greedy next token (keeps the run realistic).
template <class Session>
double median_step_ms(Session& s, int64_t vocab_size, int steps, int warmup) {
  const int64_t B = s.batch(), V = s.vocab();
  std::vector<int32_t> toks(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) toks[size_t(b)] = int32_t((b * 7919 + 13) % vocab_size);
  std::vector<double> t;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto t0 = Clock::now();
    const float* lg = s.step(toks.data());
    if (i >= warmup) t.push_back(ms_since(t0));
    for (int64_t b = 0; b < B; ++b)
      toks[size_t(b)] = int32_t(std::max_element(lg + b * V, lg + b * V + vocab_size) - (lg + b * V));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace dfssm::cli
