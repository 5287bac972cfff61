#include "eval/scoring.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"

namespace dfssm::eval {

EncodedPair encode_pair(const TextEncoder& tok, const std::string& context, const std::string& continuation,
                        int32_t prefix_token) {
  EncodedPair p;
  if (context.empty()) {
    DFSSM_CHECK(prefix_token >= 0, "an empty context needs a prefix token (the tokenizer has neither BOS nor EOS)");
    p.context = {prefix_token};
    p.continuation = tok.encode(continuation);
    return p;
  }
  const size_t keep = rstrip_length(context);
  const std::string ctx = context.substr(0, keep);
  const std::string cont = context.substr(keep) + continuation;
  const auto whole = tok.encode(ctx + cont);
  p.context = tok.encode(ctx);
  const size_t n = std::min(p.context.size(), whole.size());
  p.continuation.assign(whole.begin() + std::ptrdiff_t(n), whole.end());
  return p;
}

Request make_request(const EncodedPair& p, int64_t max_length) {
  DFSSM_CHECK(max_length >= 1, "max_length must be at least 1");
  std::vector<int32_t> all = p.context;
  all.insert(all.end(), p.continuation.begin(), p.continuation.end());
  if (int64_t(all.size()) > max_length + 1) all.erase(all.begin(), all.end() - (max_length + 1));
  Request r;
  r.input.assign(all.begin(), all.end() - 1);
  const size_t k = std::min(p.continuation.size(), r.input.size());
  r.targets.assign(p.continuation.end() - std::ptrdiff_t(k), p.continuation.end());
  return r;
}

std::vector<Request> rolling_requests(const std::vector<int32_t>& t, int32_t prefix_token, int64_t L) {
  DFSSM_CHECK(L >= 1, "max_length must be at least 1");
  std::vector<Request> out;
  if (t.empty()) return out;
  DFSSM_CHECK(prefix_token >= 0, "rolling windows need a prefix token (the tokenizer has neither BOS nor EOS)");
  const int64_t n = int64_t(t.size());
  // First window: [prefix] + t[:first-1] -> t[:first].
  const int64_t first = std::min(L, n);
  Request r;
  r.input.push_back(prefix_token);
  r.input.insert(r.input.end(), t.begin(), t.begin() + (first - 1));
  r.targets.assign(t.begin(), t.begin() + first);
  out.push_back(std::move(r));
  // Later windows (context_len = 1, so pred_len = L): input t[end-L-1 : end-1], scoring the last
  // window_pred_len tokens; make_disjoint_window + the max_length+1 truncation give exactly this.
  for (int64_t predicted = first; predicted < n;) {
    const int64_t pred = std::min(n - predicted, L), end = predicted + pred;
    Request w;
    w.input.assign(t.begin() + (end - L - 1), t.begin() + (end - 1));
    w.targets.assign(t.begin() + (end - pred), t.begin() + end);
    out.push_back(std::move(w));
    predicted += pred;
  }
  return out;
}

RowStats row_stats(const float* x, int64_t V) {
  RowStats s;
  std::array<int32_t, 5> top;
  int k = 0;
  for (int64_t v = 0; v < V; ++v) {
    // Insertion into the top-5 list (strictly greater moves up: ties keep the lower index first).
    int pos = k;
    while (pos > 0 && x[v] > x[top[size_t(pos - 1)]]) --pos;
    if (pos < 5) {
      for (int j = std::min(k, 4); j > pos; --j) top[size_t(j)] = top[size_t(j - 1)];
      top[size_t(pos)] = int32_t(v);
      k = std::min(k + 1, 5);
    }
  }
  for (int j = k; j < 5; ++j) top[size_t(j)] = -1;
  s.top5 = top;
  s.argmax = top[0];
  const float m = x[top[0]];
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += double(std::exp(x[v] - m));  // each term in fp32, summed in fp64
  s.lse = double(m) + std::log(sum);
  return s;
}

double kl_div(const float* lp, const RowStats& sp, const float* lq, const RowStats& sq, int64_t V) {
  std::vector<float> p(static_cast<size_t>(V));
  softmax_row(lp, sp, V, p.data());
  return kl_div_probs(p.data(), lp, sp, lq, sq, V);
}

double kl_div_probs(const float* p, const float* lp, const RowStats& sp, const float* lq, const RowStats& sq, int64_t V) {
  // sum_v p_v ((lp_v - lse_p) - (lq_v - lse_q)) = sum_v p_v (lp_v - lq_v) - lse_p + lse_q (sum p = 1).
  double acc = 0, mass = 0;
  for (int64_t v = 0; v < V; ++v) {
    acc += double(p[v]) * (double(lp[v]) - double(lq[v]));
    mass += double(p[v]);
  }
  return std::max(acc - (sp.lse - sq.lse) * mass, 0.0);
}

void softmax_row(const float* x, const RowStats& s, int64_t V, float* out) {
  const float lse = float(s.lse);
  for (int64_t v = 0; v < V; ++v) out[v] = std::exp(x[v] - lse);
}

bool in_top5(const RowStats& s, int32_t token) { return std::find(s.top5.begin(), s.top5.end(), token) != s.top5.end(); }

int64_t argmax_first(const std::vector<double>& v) {
  DFSSM_ASSERT(!v.empty(), "argmax of an empty list");
  int64_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[size_t(best)]) best = int64_t(i);
  return best;
}

McScore score_mc(const std::vector<double>& ll, const std::vector<std::string>& choices,
                 const std::vector<int64_t>& gold) {
  DFSSM_ASSERT(ll.size() == choices.size() && !ll.empty(), "score_mc: ", ll.size(), " scores for ", choices.size(),
               " choices");
  std::vector<double> norm(ll.size()), bytes(ll.size());
  for (size_t i = 0; i < ll.size(); ++i) {
    norm[i] = ll[i] / double(code_points(choices[i]));
    bytes[i] = ll[i] / double(choices[i].size());
  }
  McScore s;
  s.pred = argmax_first(ll);
  s.pred_norm = argmax_first(norm);
  s.pred_bytes = argmax_first(bytes);
  auto hit = [&](int64_t p) { return std::find(gold.begin(), gold.end(), p) != gold.end() ? 1.0 : 0.0; };
  s.acc = hit(s.pred), s.acc_norm = hit(s.pred_norm), s.acc_bytes = hit(s.pred_bytes);
  return s;
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}

double mean_stderr(const std::vector<double>& v) {
  const size_t n = v.size();
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  const double mu = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - mu) * (x - mu);
  return std::sqrt(ss / double(n - 1)) / std::sqrt(double(n));
}

}  // namespace dfssm::eval
