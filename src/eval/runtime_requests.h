// The request loop the runtime engines share (runtime::Session on the CPU, runtime::CudaSession on
// the GPU: the same prefill / save_state / restore_state API). Requests are prefilled one at a
// time. Requests of one group (the choices of a multiple-choice document) share their context: it
// is prefilled once, its recurrent state saved, and each choice continues from a restored copy.
// This is exact for a recurrent model (the same logits up to summation order).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "eval/engine.h"

namespace dfssm::eval {

template <class Session>
void run_requests(Session& s, const std::vector<const Request*>& reqs, const Engine::Sink& sink,
                  std::vector<float>& buf) {
  const int64_t V = s.vocab();
  for (size_t i = 0; i < reqs.size();) {
    // The run of requests of one group, and the prefix every one of them feeds before its first
    // scored position (so the shared prefill produces no logits anyone needs).
    size_t j = i + 1;
    if (reqs[i]->group >= 0)
      while (j < reqs.size() && reqs[j]->group == reqs[i]->group) ++j;
    int64_t shared = 0;
    if (j - i > 1) {
      shared = int64_t(reqs[i]->input.size() - reqs[i]->targets.size());
      for (size_t k = i + 1; k < j; ++k) {
        const auto& a = reqs[i]->input;
        const auto& b = reqs[k]->input;
        int64_t c = 0;
        while (c < int64_t(std::min(a.size(), b.size())) && a[size_t(c)] == b[size_t(c)]) ++c;
        shared = std::min({shared, c, int64_t(b.size() - reqs[k]->targets.size())});
      }
    }
    std::vector<uint8_t> state;
    if (shared > 0) {
      s.reset(0);
      s.prefill(0, reqs[i]->input.data(), shared);
      state = s.save_state(0);
    }
    for (size_t k = i; k < j; ++k) {
      const auto& r = *reqs[k];
      const int64_t n = int64_t(r.input.size()) - shared, nt = int64_t(r.targets.size());
      if (shared > 0) s.restore_state(0, state);
      else s.reset(0);
      buf.resize(size_t(n * V));
      s.prefill(0, r.input.data() + shared, n, buf.data());
      sink(k, buf.data() + (n - nt) * V);
    }
    i = j;
  }
}

}  // namespace dfssm::eval
