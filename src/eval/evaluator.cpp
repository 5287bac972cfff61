#include "eval/evaluator.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "runtime/thread_pool.h"

namespace dfssm::eval {

const Metric* ModelTaskResult::find(const std::string& name) const {
  for (const auto& m : metrics)
    if (m.name == name) return &m;
  return nullptr;
}

TaskRequests build_requests(const Task& task, const TextEncoder* tok, const EvalOptions& opt) {
  TaskRequests tr;
  if (task.kind == "lm") {
    for (size_t d = 0; d < task.lm.size(); ++d)
      for (auto& r : rolling_requests(task.lm[d].tokens, opt.prefix_token, opt.max_length)) {
        tr.reqs.push_back(std::move(r));
        tr.doc.push_back(int64_t(d));
      }
    return tr;
  }
  DFSSM_CHECK(tok, "task '", task.name, "' is text: it needs a tokenizer (pass --tokenizer FILE.model)");
  for (size_t d = 0; d < task.mc.size(); ++d) {
    const auto& doc = task.mc[d];
    for (size_t i = 0; i < doc.contexts.size(); ++i) {
      auto r = make_request(encode_pair(*tok, doc.contexts[i], doc.continuations[i], opt.prefix_token), opt.max_length);
      r.group = int64_t(d);
      tr.reqs.push_back(std::move(r));
      tr.doc.push_back(int64_t(d));
    }
  }
  return tr;
}

namespace {

using Clock = std::chrono::steady_clock;

// Per-model, per-request scores.
struct Acc {
  std::vector<double> ll;       // per request
  std::vector<char> greedy;     // per request
  double nll = 0, kl = 0;
  int64_t scored = 0, correct = 0, top1 = 0, top5 = 0, fed = 0;
  std::vector<double> pos_nll, pos_kl;
  std::vector<int64_t> pos_n;
};

nlohmann::ordered_json task_config(const Task& t, const EvalOptions& opt) {
  nlohmann::ordered_json c;
  c["task"] = t.name;
  c["dataset_path"] = t.spec.path;
  c["layout"] = t.layout;
  if (t.kind == "lm") c["dataset_split"] = t.spec.split;
  c["output_type"] = t.kind == "lm" ? "loglikelihood_rolling" : t.kind;
  if (t.kind == "multiple_choice") c["target_delimiter"] = t.spec.target_delimiter;
  c["num_fewshot"] = 0;
  nlohmann::ordered_json ml = nlohmann::ordered_json::array();
  auto add = [&](const char* m, const char* agg, bool hib) { ml.push_back({{"metric", m}, {"aggregation", agg}, {"higher_is_better", hib}}); };
  if (t.kind == "lm") {
    add("word_perplexity", "weighted_perplexity", false);
    add("byte_perplexity", "weighted_perplexity", false);
    add("bits_per_byte", "bits_per_byte", false);
  } else if (t.kind == "multiple_choice") {
    add("acc", "mean", true);
    add("acc_norm", "mean", true);
  } else {
    add("perplexity", "perplexity", false);
    add("acc", "mean", true);
  }
  c["metric_list"] = ml;
  c["max_length"] = opt.max_length;
  c["prefix_token_id"] = opt.prefix_token;
  c["tokenization"] = t.kind == "lm" && !t.retokenized ? "as stored in the dataset" : "whole-string SentencePiece";
  c["metadata"] = {{"version", 1.0}};
  return c;
}

}  // namespace

// One scored position of one model: its log-probability of the target, its greedy token and,
// against the teacher, the KL and whether the teacher's top token is its top-1 / in its top-5.
struct RowScore {
  double lp = 0, kl = 0;
  int32_t argmax = -1;
  bool top1 = false, top5 = false;
};

struct ScoreScratch {
  std::vector<std::vector<RowScore>> rows;  // [model][position]
  std::vector<RowStats> ts;                 // the teacher's row statistics
  std::vector<float> tprob;                 // the teacher's softmax rows, for the KL
};

// Scores request i of the block (`store[m][i]`: k x V logits of model m) for every model, the
// positions spread over the pool. Every value is computed exactly as the sequential loop would.
void score_rows(const std::vector<std::vector<std::vector<float>>>& store, size_t i, const std::vector<int32_t>& targets,
                int teacher, int64_t V, bool lm, runtime::ThreadPool& pool, ScoreScratch& sc) {
  const size_t M = store.size(), k = targets.size();
  sc.rows.resize(M);
  for (auto& r : sc.rows) r.assign(k, RowScore{});
  sc.ts.assign(k, RowStats{});
  if (teacher >= 0 && lm) sc.tprob.resize(k * size_t(V));
  auto one_model = [&](size_t m) {
    pool.parallel_ranges(int64_t(k), 1, [&](int64_t j0, int64_t j1) {
      for (auto j = size_t(j0); j < size_t(j1); ++j) {
        const float* row = store[m][i].data() + j * size_t(V);
        const auto s = row_stats(row, V);
        RowScore& out = sc.rows[m][j];
        out.lp = log_prob(row, s, targets[j]);
        out.argmax = s.argmax;
        if (!lm || teacher < 0) continue;
        if (int(m) == teacher) {
          sc.ts[j] = s;
          softmax_row(row, s, V, sc.tprob.data() + j * size_t(V));
        } else {
          const float* trow = store[size_t(teacher)][i].data() + j * size_t(V);
          out.kl = kl_div_probs(sc.tprob.data() + j * size_t(V), trow, sc.ts[j], row, s, V);
          out.top1 = s.argmax == sc.ts[j].argmax;
          out.top5 = in_top5(s, sc.ts[j].argmax);
        }
      }
    });
  };
  if (teacher >= 0) one_model(size_t(teacher));  // its rows first: the others' KL reads them
  for (size_t m = 0; m < M; ++m)
    if (int(m) != teacher) one_model(m);
}

TaskResult evaluate_task(const Task& task, const std::vector<ModelUnderTest>& models, int teacher,
                         const TextEncoder* tok, const EvalOptions& opt) {
  DFSSM_CHECK(!models.empty(), "no model to evaluate");
  const int64_t V = models[0].engine->vocab();
  for (const auto& m : models)
    DFSSM_CHECK(m.engine->vocab() == V && m.engine->vocab_size() == models[0].engine->vocab_size(),
                "vocabulary mismatch: ", models[0].label, " (", models[0].path, ") has ", models[0].engine->vocab_size(),
                " tokens (", V, " padded), ", m.label, " (", m.path, ") has ", m.engine->vocab_size(), " (",
                m.engine->vocab(), " padded)");
  const auto tr = build_requests(task, tok, opt);
  const size_t R = tr.reqs.size(), M = models.size();
  for (const auto& r : tr.reqs)
    for (auto t : r.input)
      DFSSM_CHECK(t >= 0 && t < models[0].engine->vocab_size(), "task '", task.name, "': token id ", t,
                  " is outside the models' vocabulary (", models[0].engine->vocab_size(), ")");
  std::vector<Acc> acc(M);
  for (auto& a : acc) a.ll.assign(R, 0.0), a.greedy.assign(R, 1);
  std::vector<double> secs(M, 0.0);
  const bool lm = task.kind == "lm";
  const auto t_start = Clock::now();
  auto last_report = t_start;

  std::vector<std::vector<std::vector<float>>> store(M);  // [model][request in block] -> k x V
  // Scoring a position reads its V logits several times (top-5, log-sum-exp, softmax, KL): at a
  // 32000-token vocabulary that is the bound of a GPU evaluation unless it runs on every core.
  runtime::ThreadPool pool(opt.threads);
  ScoreScratch scratch;
  for (size_t b0 = 0; b0 < R;) {
    // The block: requests [b0, b1) whose scored logits fit in block_floats (at least one).
    size_t b1 = b0;
    int64_t floats = 0;
    while (b1 < R && (b1 == b0 || floats + int64_t(tr.reqs[b1].targets.size()) * V <= opt.block_floats))
      floats += int64_t(tr.reqs[b1++].targets.size()) * V;
    // Keep a multiple-choice document's requests together (engines share their context).
    while (!lm && b1 < R && tr.doc[b1] == tr.doc[b1 - 1]) ++b1;
    std::vector<const Request*> block;
    for (size_t i = b0; i < b1; ++i) block.push_back(&tr.reqs[i]);
    for (size_t m = 0; m < M; ++m) {
      auto& st = store[m];
      st.assign(block.size(), {});
      const auto t0 = Clock::now();
      models[m].engine->run(block, [&](size_t i, const float* logits) {
        const size_t n = block[i]->targets.size() * size_t(V);
        st[i].assign(logits, logits + n);
      });
      secs[m] += std::chrono::duration<double>(Clock::now() - t0).count();
    }
    // Score every position of every model: the rows in parallel (score_rows), then the sums in
    // request, model and position order, so the result does not depend on the thread count.
    for (size_t i = 0; i < block.size(); ++i) {
      const auto& r = *block[i];
      const size_t k = r.targets.size(), ri = b0 + i;
      const int64_t first_pos = int64_t(r.input.size() - k);
      for (size_t m = 0; m < M; ++m)
        DFSSM_ASSERT(store[m][i].size() == k * size_t(V), "engine ", models[m].label, " returned no logits for a request");
      score_rows(store, i, r.targets, teacher, V, lm, pool, scratch);
      for (int pass = 0; pass < 2; ++pass)  // the teacher first (as the scores were computed)
        for (size_t m = 0; m < M; ++m) {
          if ((pass == 0) != (int(m) == teacher)) continue;
          auto& a = acc[m];
          a.fed += int64_t(r.input.size());
          for (size_t j = 0; j < k; ++j) {
            const RowScore& sc = scratch.rows[m][j];
            a.ll[ri] += sc.lp;
            if (sc.argmax != r.targets[j]) a.greedy[ri] = 0;
            if (!lm) continue;
            a.nll -= sc.lp;
            a.scored += 1;
            a.correct += sc.argmax == r.targets[j];
            const size_t pos = size_t(first_pos) + j;
            if (a.pos_n.size() <= pos) a.pos_n.resize(pos + 1, 0), a.pos_nll.resize(pos + 1, 0), a.pos_kl.resize(pos + 1, 0);
            a.pos_n[pos] += 1;
            a.pos_nll[pos] -= sc.lp;
            if (teacher >= 0 && int(m) != teacher) {
              a.kl += sc.kl;
              a.pos_kl[pos] += sc.kl;
              a.top1 += sc.top1;
              a.top5 += sc.top5;
            }
          }
        }
    }
    b0 = b1;
    if (opt.progress && std::chrono::duration<double>(Clock::now() - last_report).count() > 10) {
      last_report = Clock::now();
      opt.progress(task.name + ": " + std::to_string(b0) + "/" + std::to_string(R) + " requests");
    }
  }

  TaskResult res;
  res.name = task.name, res.kind = task.kind, res.layout = task.layout, res.source = task.source_detail;
  res.original_docs = task.original_docs;
  res.config = task_config(task, opt);
  const size_t D = lm ? task.lm.size() : task.mc.size();
  res.docs = int64_t(D);
  // Teacher predictions, for the agreement of multiple-choice answers.
  std::vector<std::vector<int64_t>> preds(M);
  for (size_t m = 0; m < M; ++m) {
    const auto& a = acc[m];
    ModelTaskResult out;
    out.seconds = secs[m], out.examples = int64_t(D), out.requests = int64_t(R), out.tokens_fed = a.fed;
    const bool is_teacher = int(m) == teacher, cmp = teacher >= 0 && !is_teacher;
    if (lm) {
      std::vector<double> doc_ll(D, 0.0);
      for (size_t i = 0; i < R; ++i) doc_ll[size_t(tr.doc[i])] += a.ll[i];
      double ll = 0, words = 0, bytes = 0;
      bool text = true;
      for (size_t d = 0; d < D; ++d) {
        ll += doc_ll[d];
        text = text && task.lm[d].has_text;
        words += double(py_word_count(task.lm[d].text));
        bytes += double(task.lm[d].text.size());
      }
      if (text && bytes > 0) {
        out.metrics.push_back({"word_perplexity", std::exp(-ll / words), kNA, false});
        out.metrics.push_back({"byte_perplexity", std::exp(-ll / bytes), kNA, false});
        out.metrics.push_back({"bits_per_byte", -ll / bytes / std::log(2.0), kNA, false});
      }
      const double n = double(std::max<int64_t>(a.scored, 1));
      out.metrics.push_back({"ce", a.nll / n, kNA, false});
      out.metrics.push_back({"token_perplexity", std::exp(a.nll / n), kNA, false});
      out.metrics.push_back({"token_acc", double(a.correct) / n, kNA, true});
      if (cmp) {
        out.metrics.push_back({"kl", a.kl / n, kNA, false, true});
        out.metrics.push_back({"top1_agree", double(a.top1) / n, kNA, true, true});
        out.metrics.push_back({"top5_agree", double(a.top5) / n, kNA, true, true});
      }
      out.tokens_scored = a.scored;
      out.pos_n = a.pos_n, out.pos_nll = a.pos_nll, out.pos_kl = a.pos_kl;
      for (size_t p = 0; p < out.pos_n.size(); ++p)
        if (out.pos_n[p] > 0) out.pos_nll[p] /= double(out.pos_n[p]), out.pos_kl[p] /= double(out.pos_n[p]);
      if (!cmp) out.pos_kl.clear();
    } else if (task.kind == "multiple_choice") {
      std::vector<double> accs, norms, bytes_acc;
      size_t i = 0;
      for (size_t d = 0; d < D; ++d) {
        const auto& doc = task.mc[d];
        std::vector<double> ll(a.ll.begin() + std::ptrdiff_t(i), a.ll.begin() + std::ptrdiff_t(i + doc.contexts.size()));
        i += doc.contexts.size();
        const auto s = score_mc(ll, doc.choices, doc.gold);
        accs.push_back(s.acc), norms.push_back(s.acc_norm);
        preds[m].push_back(s.pred);
      }
      out.metrics.push_back({"acc", mean(accs), mean_stderr(accs), true});
      out.metrics.push_back({"acc_norm", mean(norms), mean_stderr(norms), true});
      out.preds = preds[m];
    } else {  // loglikelihood (lambada)
      std::vector<double> lls(a.ll.begin(), a.ll.end()), g;
      for (char c : a.greedy) g.push_back(c ? 1.0 : 0.0);
      out.metrics.push_back({"perplexity", std::exp(-mean(lls)), kNA, false});
      out.metrics.push_back({"acc", mean(g), mean_stderr(g), true});
    }
    res.models.push_back(std::move(out));
  }
  // Multiple choice: how often a model picks the teacher's answer.
  if (task.kind == "multiple_choice" && teacher >= 0)
    for (size_t m = 0; m < M; ++m) {
      if (int(m) == teacher) continue;
      std::vector<double> agree;
      for (size_t d = 0; d < D; ++d) agree.push_back(preds[m][d] == preds[size_t(teacher)][d] ? 1.0 : 0.0);
      res.models[m].metrics.push_back({"agree", mean(agree), mean_stderr(agree), true, true});
    }
  return res;
}

}  // namespace dfssm::eval
