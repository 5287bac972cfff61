// Next-token sampling from logits: greedy (temperature 0), or temperature + top-k + top-p
// (nucleus) with a seeded RNG, so a run is reproducible from its seed. Only ids < vocab_size
// are candidates (the padded rows of the logits are never sampled).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace dfssm::runtime {

struct SamplerOptions {
  double temperature = 0.8;  // 0: greedy (argmax)
  int64_t top_k = 40;        // 0: no top-k cut
  double top_p = 0.95;       // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws dfssm::Error for out-of-range options (negative temperature, top_p outside (0, 1]).
  Sampler(const SamplerOptions& opt, int64_t vocab_size);
  int32_t sample(const float* logits);

 private:
  SamplerOptions opt_;
  int64_t vocab_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace dfssm::runtime
