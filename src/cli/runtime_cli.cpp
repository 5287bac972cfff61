#include "cli/runtime_cli.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <sstream>

#include "core/error.h"
#include "quant/quant_config.h"

namespace dfssm::cli {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::string norm = s;
  std::replace(norm.begin(), norm.end(), ',', ' ');
  std::stringstream ss(norm);
  std::vector<int32_t> out;
  for (std::string part; ss >> part;) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    DFSSM_CHECK(end && *end == '\0' && errno == 0 && v >= INT32_MIN && v <= INT32_MAX, "--ids: '", part,
                "' is not an integer token id");
    out.push_back(int32_t(v));
  }
  return out;
}

std::shared_ptr<runtime::Model> bench_model(const Args& args, std::string* what) {
  if (!args.has("random")) {
    DFSSM_CHECK(args.has("model"), "bench needs -m MODEL.dfssm.safetensors or --geometry NAME --random");
    *what = args.get("model", "");
    args.check_unused();
    return runtime::Model::load(*what);
  }
  *what = args.get("geometry", "mamba2-1.3b");
  Mamba2Config cfg = Mamba2Config::geometry(*what);
  quant::QuantConfig q;
  const auto qkeys = quant::QuantConfig::keys();
  for (const auto& [k, v] : args.overrides()) {
    if (std::find(qkeys.begin(), qkeys.end(), k) != qkeys.end()) q.set(k, v);
    else cfg.set(k, v);
  }
  const uint64_t seed = uint64_t(args.get_int("seed", 0));
  args.check_unused();
  const auto t0 = Clock::now();
  auto model = runtime::Model::random(cfg, q, seed);
  std::printf("random %s model (%s, rank %lld) built in %.1f s\n", what->c_str(), q.format.c_str(),
              (long long)q.effective_rank(), ms_since(t0) / 1e3);
  return model;
}

GenerateJob generate_job(const Args& args) {
  GenerateJob job;
  DFSSM_CHECK(args.has("model"), "generate needs -m MODEL.dfssm.safetensors");
  job.path = args.get("model", "");
  DFSSM_CHECK(args.has("prompt") != args.has("ids"), "give exactly one of -p \"prompt\" or --ids \"1 2 3\"");
  job.max_tokens = args.get_int("max-tokens", 128);
  DFSSM_CHECK(job.max_tokens >= 1, "--max-tokens must be >= 1 (got ", job.max_tokens, ")");
  job.sampler.temperature = args.get_double("temperature", 0.8);
  job.sampler.top_k = args.get_int("top-k", 40);
  job.sampler.top_p = args.get_double("top-p", 0.95);
  job.sampler.seed = uint64_t(args.get_int("seed", 0));
  job.ids_mode = args.has("ids");
  job.prompt = args.get(job.ids_mode ? "ids" : "prompt", "");
  job.ignore_eos = args.has("ignore-eos");
  return job;
}

void load_generate_job(GenerateJob& job, bool verify_codes, const std::string& tok_file) {
  const auto t0 = Clock::now();
  runtime::LoadOptions lo;
  lo.verify_codes = verify_codes;
  job.model = runtime::Model::load(job.path, lo);
  const auto& cfg = job.model->config();
  if (!job.ids_mode || !tok_file.empty()) {
    job.tok = std::make_unique<runtime::Tokenizer>(tok_file.empty()
                                                       ? runtime::Tokenizer::from_metadata(job.model->metadata(), job.path)
                                                       : runtime::Tokenizer::from_file(tok_file));
    DFSSM_CHECK(job.tok->vocab_size() <= cfg.vocab_size, "tokenizer has ", job.tok->vocab_size(),
                " pieces but the model's vocabulary is ", cfg.vocab_size, " (wrong --tokenizer?)");
  }
  job.ids = job.ids_mode ? parse_ids(job.prompt) : job.tok->encode(job.prompt);
  DFSSM_CHECK(!job.ids.empty(), job.ids_mode ? "--ids is empty" : "the prompt encodes to no tokens; give a non-empty -p");
  job.load_ms = ms_since(t0);
}

}  // namespace dfssm::cli
