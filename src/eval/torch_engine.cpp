#include "eval/torch_engine.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace dfssm::eval {

TorchEngine::TorchEngine(const Mamba2Model& model, int64_t batch_size, int64_t batch_tokens)
    : model_(model), batch_size_(std::max<int64_t>(1, batch_size)), batch_tokens_(std::max<int64_t>(1, batch_tokens)) {}

std::string TorchEngine::describe() const {
  const auto dev = model_.device();
  return std::string("torch ") + (dev.is_cuda() ? "cuda" : "cpu") + " " + c10::toString(model_.dtype()) + " (batch " +
         std::to_string(batch_size_) + ")";
}

void TorchEngine::run(const std::vector<const Request*>& reqs, const Sink& sink) {
  at::NoGradGuard ng;
  std::vector<size_t> order(reqs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return reqs[a]->input.size() > reqs[b]->input.size(); });
  const auto w = model_.lm_weight();
  const auto dev = model_.device();
  for (size_t b0 = 0; b0 < order.size();) {
    const int64_t L = int64_t(reqs[order[b0]]->input.size());  // the longest of the batch (sorted)
    size_t b1 = b0 + 1;
    while (b1 < order.size() && int64_t(b1 - b0) < batch_size_ && int64_t(b1 - b0 + 1) * L <= batch_tokens_) ++b1;
    const int64_t B = int64_t(b1 - b0);
    std::vector<int64_t> ids(size_t(B * L), 0), rows;
    for (int64_t r = 0; r < B; ++r) {
      const auto& q = *reqs[order[b0 + size_t(r)]];
      std::copy(q.input.begin(), q.input.end(), ids.begin() + r * L);
      const int64_t n = int64_t(q.input.size()), k = int64_t(q.targets.size());
      for (int64_t p = n - k; p < n; ++p) rows.push_back(r * L + p);
    }
    if (rows.empty()) {
      for (size_t r = b0; r < b1; ++r) sink(order[r], nullptr);
      b0 = b1;
      continue;
    }
    const auto x = at::tensor(ids, at::kLong).view({B, L}).to(dev);
    const auto h = model_.forward_hidden(x);
    const auto sel = h.reshape({B * L, h.size(-1)}).index_select(0, at::tensor(rows, at::kLong).to(dev));
    const auto logits = at::linear(sel.to(w.scalar_type()), w).to(at::kFloat).cpu().contiguous();
    const float* p = logits.data_ptr<float>();
    const int64_t V = logits.size(1);
    DFSSM_ASSERT(V == vocab(), "LM head gives ", V, " logits, expected ", vocab());
    for (size_t r = b0; r < b1; ++r) {
      sink(order[r], p);
      p += int64_t(reqs[order[r]]->targets.size()) * V;
    }
    b0 = b1;
  }
}

}  // namespace dfssm::eval
