#include "eval/runtime_engine.h"

#include <algorithm>

#include "kernels/cpu/isa.h"
#include "runtime/model.h"
#include "runtime/session.h"

namespace dfssm::eval {

RuntimeEngine::RuntimeEngine(std::shared_ptr<const runtime::Model> model, int threads) : model_(std::move(model)) {
  runtime::SessionOptions o;
  o.threads = threads;
  session_ = std::make_unique<runtime::Session>(model_, 1, o);
}

RuntimeEngine::~RuntimeEngine() = default;

std::string RuntimeEngine::describe() const {
  return "runtime cpu (" + std::string(kernels::cpu::isa_name(session_->isa())) + ", " +
         std::to_string(session_->threads()) + " threads)";
}
int64_t RuntimeEngine::vocab() const { return session_->vocab(); }
int64_t RuntimeEngine::vocab_size() const { return model_->config().vocab_size; }

void RuntimeEngine::run(const std::vector<const Request*>& reqs, const Sink& sink) {
  const int64_t V = vocab();
  auto& s = *session_;
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
      buf_.resize(size_t(n * V));
      s.prefill(0, r.input.data() + shared, n, buf_.data());
      sink(k, buf_.data() + (n - nt) * V);
    }
    i = j;
  }
}

}  // namespace dfssm::eval
