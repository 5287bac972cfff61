#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dfssm::runtime {

Sampler::Sampler(const SamplerOptions& opt, int64_t vocab_size) : opt_(opt), vocab_(vocab_size), rng_(opt.seed) {
  DFSSM_CHECK(opt.temperature >= 0 && std::isfinite(opt.temperature), "--temperature must be >= 0 (got ",
              opt.temperature, ")");
  DFSSM_CHECK(opt.top_k >= 0, "--top-k must be >= 0 (got ", opt.top_k, ")");
  DFSSM_CHECK(opt.top_p > 0 && opt.top_p <= 1, "--top-p must be in (0, 1] (got ", opt.top_p, ")");
  DFSSM_CHECK(vocab_size >= 1, "empty vocabulary");
}

int32_t Sampler::sample(const float* logits) {
  if (opt_.temperature == 0) return int32_t(std::max_element(logits, logits + vocab_) - logits);
  cand_.resize(size_t(vocab_));
  for (int64_t i = 0; i < vocab_; ++i) cand_[size_t(i)] = {logits[i], int32_t(i)};
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = cand_.size();
  if (opt_.top_k > 0 && size_t(opt_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + opt_.top_k, cand_.end(), by_logit);
    n = size_t(opt_.top_k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax over the candidates at the temperature (max-subtracted), then the nucleus cut.
  std::vector<double> p(n);
  const double mx = cand_[0].first;
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p[i] = std::exp((cand_[i].first - mx) / opt_.temperature);
  size_t keep = n;
  if (opt_.top_p < 1) {
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc += p[i] / sum;
      if (acc >= opt_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  std::discrete_distribution<size_t> dist(p.begin(), p.begin() + std::ptrdiff_t(keep));
  return cand_[dist(rng_)].second;
}

}  // namespace dfssm::runtime
