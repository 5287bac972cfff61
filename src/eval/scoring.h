// lm-evaluation-harness's scoring rules (../shared/reference/lm-eval-scoring.md, docs/eval.md),
// LibTorch-free and independent of any model: how a (context, continuation) pair becomes tokens,
// how a document is cut into rolling windows, how log-likelihoods become acc / acc_norm and their
// standard errors, and the per-position statistics of a logits row.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "eval/text.h"

namespace dfssm::eval {

// One model input: `input` is fed from a fresh state; the logits of its last targets.size()
// positions predict `targets` (the logits at input position j predict the token after it).
struct Request {
  std::vector<int32_t> input;
  std::vector<int32_t> targets;
  int64_t group = -1;  // requests of one document share a group (engines may reuse a common prefix)
};

// lm-eval's _encode_pair: trailing whitespace of the context moves to the front of the
// continuation; context tokens = enc(context), continuation tokens = enc(context +
// continuation)[len(enc(context)):]. An empty context becomes [prefix_token] and the
// continuation is encoded alone.
struct EncodedPair {
  std::vector<int32_t> context, continuation;
};
EncodedPair encode_pair(const TextEncoder& tok, const std::string& context, const std::string& continuation,
                        int32_t prefix_token);

// lm-eval's _loglikelihood_tokens input: (context + continuation)[-(max_length+1):][:-1], scoring
// the continuation (its last max_length tokens when it is longer than that).
Request make_request(const EncodedPair& p, int64_t max_length);

// lm-eval's loglikelihood_rolling: get_rolling_token_windows(tokens, prefix, max_length,
// context_len=1) + make_disjoint_window. The first window feeds [prefix] + t[:L-1] and scores
// t[:L]; each later window scores the next <= L tokens, fed with the L tokens before its end.
// Every token is scored exactly once.
std::vector<Request> rolling_requests(const std::vector<int32_t>& tokens, int32_t prefix_token, int64_t max_length);

// Statistics of one logits row (log-softmax over the full padded vocabulary, in fp64).
struct RowStats {
  double lse = 0;                // log-sum-exp of the row
  int32_t argmax = 0;            // first index of the maximum (numpy.argmax)
  std::array<int32_t, 5> top5{}; // the five largest, in order (ties to the lower index)
};
RowStats row_stats(const float* logits, int64_t vocab);
inline double log_prob(const float* logits, const RowStats& s, int32_t token) { return double(logits[token]) - s.lse; }
// KL(p || q) = sum_v p_v (log p_v - log q_v) for p = softmax(lp), q = softmax(lq).
double kl_div(const float* lp, const RowStats& sp, const float* lq, const RowStats& sq, int64_t vocab);
// The same with p's probabilities given (probs_p = softmax(lp)): one pass, no exp.
double kl_div_probs(const float* probs_p, const float* lp, const RowStats& sp, const float* lq, const RowStats& sq,
                    int64_t vocab);
// softmax of a row (its stats known) into out[vocab].
void softmax_row(const float* logits, const RowStats& s, int64_t vocab, float* out);
bool in_top5(const RowStats& s, int32_t token);

// numpy.argmax: the first index of the maximum.
int64_t argmax_first(const std::vector<double>& v);

// One multiple-choice document scored from its per-choice log-likelihoods.
struct McScore {
  int64_t pred = 0, pred_norm = 0, pred_bytes = 0;
  double acc = 0, acc_norm = 0, acc_bytes = 0;  // 1 or 0
};
// acc: argmax ll == gold; acc_norm: argmax ll / len(choice in code points); acc_bytes: / UTF-8
// bytes. With several gold answers a hit is pred in gold.
McScore score_mc(const std::vector<double>& ll, const std::vector<std::string>& choices, const std::vector<int64_t>& gold);

double mean(const std::vector<double>& v);
// lm-eval's mean_stderr: sample standard deviation (n - 1) / sqrt(n); NaN for n < 2.
double mean_stderr(const std::vector<double>& v);

}  // namespace dfssm::eval
