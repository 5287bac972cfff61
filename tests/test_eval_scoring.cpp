// lm-evaluation-harness's scoring rules, reproduced by src/eval, on hand-made examples whose
// answers are known (torch-free): string rules (rstrip, len, re.split), _encode_pair, the
// max_length truncation, rolling windows, acc / acc_norm / ties / several golds, stderr; the
// evaluator's metrics with fake engines of fixed log-probabilities (exact perplexities, KL,
// agreement); task files in every layout, and their errors (file and line named); the task
// generator; and the runtime engine's shared-context path against plain prefill.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>

#include "catch_compat.h"
#include "eval/evaluator.h"
#include "eval/make_task.h"
#include "eval/report.h"
#include "eval/runtime_engine.h"
#include "eval/scoring.h"
#include "eval/tasks.h"
#include "model/config.h"
#include "quant/quant_config.h"
#include "runtime/model.h"
#include "test_util.h"

using namespace dfssm;
using namespace dfssm::eval;
namespace fs = std::filesystem;
using dfssm::test::contains;
using dfssm::test::error_of;

namespace {

std::string tmp(const std::string& name) { return test::tmp_path("eval_scoring", name); }

void write(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// One token per byte (ids 0..127 for ASCII).
struct CharEncoder : TextEncoder {
  std::vector<int32_t> encode(const std::string& s) const override {
    std::vector<int32_t> out;
    for (unsigned char c : s) out.push_back(int32_t(c % 128));
    return out;
  }
};

// A tokenizer with merges, so that enc(ctx + cont) is not enc(ctx) + enc(cont): "xa" -> 200 and
// " b" -> 201 (ids outside ASCII), everything else one token per byte.
struct MergeEncoder : TextEncoder {
  std::vector<int32_t> encode(const std::string& s) const override {
    std::vector<int32_t> out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s.compare(i, 2, "xa") == 0) out.push_back(200), ++i;
      else if (s.compare(i, 2, " b") == 0) out.push_back(201), ++i;
      else out.push_back(int32_t(uint8_t(s[i])));
    }
    return out;
  }
};

// Logits = log-probabilities of a fixed distribution: uniform over `vocab`, plus `boost` on token
// 0 (so the log-likelihoods are known in closed form). Records what it was asked.
struct FakeEngine : Engine {
  int64_t V;
  double boost;
  std::vector<Request> seen;
  FakeEngine(int64_t v, double b) : V(v), boost(b) {}
  std::string describe() const override { return "fake"; }
  int64_t vocab() const override { return V; }
  int64_t vocab_size() const override { return V; }
  void run(const std::vector<const Request*>& reqs, const Sink& sink) override {
    for (size_t i = 0; i < reqs.size(); ++i) {
      seen.push_back(*reqs[i]);
      std::vector<float> l(reqs[i]->targets.size() * size_t(V), 0.f);
      for (size_t j = 0; j < reqs[i]->targets.size(); ++j) l[j * size_t(V)] = float(boost);
      sink(i, l.data());
    }
  }
};

// Logits from a hash of (model seed, request input, position): different per model and
// position, the same whenever asked again.
struct HashEngine : Engine {
  int64_t V;
  uint64_t seed;
  HashEngine(int64_t v, uint64_t s) : V(v), seed(s) {}
  std::string describe() const override { return "hash"; }
  int64_t vocab() const override { return V; }
  int64_t vocab_size() const override { return V; }
  void run(const std::vector<const Request*>& reqs, const Sink& sink) override {
    for (size_t i = 0; i < reqs.size(); ++i) {
      uint64_t h = seed;
      for (auto t : reqs[i]->input) h = (h ^ uint64_t(t)) * 0x100000001b3ULL;
      std::vector<float> l(reqs[i]->targets.size() * size_t(V));
      for (auto& x : l) {
        h ^= h >> 29, h *= 0xbf58476d1ce4e5b9ULL, h ^= h >> 32;
        x = float(int64_t(h % 20001) - 10000) * 1e-3f;
      }
      sink(i, l.data());
    }
  }
};

}  // namespace

TEST_CASE("Python string rules: rstrip, len in code points, re.split word count", "[eval][scoring]") {
  CHECK(rstrip_length("abc  \n\t") == 3);
  CHECK(rstrip_length("a\xc2\xa0") == 1);        // U+00A0 is whitespace for str.rstrip
  CHECK(rstrip_length("a\xe2\x80\x8b") == 4);    // U+200B (zero-width space) is not
  CHECK(rstrip_length("   ") == 0);
  CHECK(code_points("h\xc3\xa9llo") == 5);       // "héllo"
  CHECK(code_points("\xe2\x82\xac") == 1);       // "€"
  CHECK(py_word_count("a b") == 2);              // re.split(r"\s+", "a b") -> ['a', 'b']
  CHECK(py_word_count("a b\n") == 3);            // ['a', 'b', '']
  CHECK(py_word_count("  a  b") == 3);           // ['', 'a', 'b']
  CHECK(py_word_count("") == 1);                 // ['']
  CHECK(py_word_count("a\xc2\xa0\x62") == 2);    // NBSP splits
}

TEST_CASE("encode_pair: trailing whitespace moves, continuation = enc(ctx+cont)[len(enc(ctx)):]", "[eval][scoring]") {
  CharEncoder ce;
  auto p = encode_pair(ce, "Question: 2+2 =  ", "4", 1);
  CHECK(p.context == ce.encode("Question: 2+2 ="));
  CHECK(p.continuation == ce.encode("  4"));
  // Empty context: [prefix] and the continuation encoded alone.
  p = encode_pair(ce, "", " hi", 7);
  CHECK(p.context == std::vector<int32_t>{7});
  CHECK(p.continuation == ce.encode(" hi"));
  CHECK(contains(error_of([&] { encode_pair(ce, "", "x", -1); }), "prefix token"));
  // With merges: ctx "q x" + cont "a b": whole = enc("q xa b") = [q, ' ', 200, 201]; enc(ctx) has
  // 3 tokens, so the continuation is [201] (not enc("a b") = [a, 201]).
  MergeEncoder me;
  p = encode_pair(me, "q x", "a b", 1);
  CHECK(p.context == std::vector<int32_t>{'q', ' ', 'x'});
  CHECK(p.continuation == std::vector<int32_t>{201});
  // Trailing space moved: ctx "go " + cont "b" -> ctx "go", cont " b" -> whole [g, o, 201].
  p = encode_pair(me, "go ", "b", 1);
  CHECK(p.context == std::vector<int32_t>{'g', 'o'});
  CHECK(p.continuation == std::vector<int32_t>{201});
}

TEST_CASE("make_request: (ctx + cont)[-(max_length+1):][:-1], last len(cont) positions scored", "[eval][scoring]") {
  EncodedPair p{{1, 2, 3, 4, 5}, {6, 7, 8}};
  auto r = make_request(p, 100);
  CHECK(r.input == std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7});
  CHECK(r.targets == std::vector<int32_t>{6, 7, 8});
  r = make_request(p, 4);  // left-truncated to 5 tokens: 4 5 6 7 8
  CHECK(r.input == std::vector<int32_t>{4, 5, 6, 7});
  CHECK(r.targets == std::vector<int32_t>{6, 7, 8});
  r = make_request(p, 2);  // a continuation longer than max_length: its last 2 tokens
  CHECK(r.input == std::vector<int32_t>{6, 7});
  CHECK(r.targets == std::vector<int32_t>{7, 8});
}

TEST_CASE("rolling windows: lm-eval's get_rolling_token_windows + make_disjoint_window", "[eval][scoring]") {
  std::vector<int32_t> t;
  for (int i = 10; i < 20; ++i) t.push_back(i);
  const auto w = rolling_requests(t, 99, 4);
  REQUIRE(w.size() == 3);
  CHECK(w[0].input == std::vector<int32_t>{99, 10, 11, 12});
  CHECK(w[0].targets == std::vector<int32_t>{10, 11, 12, 13});
  CHECK(w[1].input == std::vector<int32_t>{13, 14, 15, 16});
  CHECK(w[1].targets == std::vector<int32_t>{14, 15, 16, 17});
  CHECK(w[2].input == std::vector<int32_t>{15, 16, 17, 18});
  CHECK(w[2].targets == std::vector<int32_t>{18, 19});
  // Every token scored exactly once, each predicted by the position before it.
  std::vector<int32_t> scored;
  for (const auto& r : w) {
    for (size_t j = 0; j < r.targets.size(); ++j) {
      const size_t pos = r.input.size() - r.targets.size() + j;
      if (pos + 1 < r.input.size()) CHECK(r.input[pos + 1] == r.targets[j]);
    }
    scored.insert(scored.end(), r.targets.begin(), r.targets.end());
  }
  CHECK(scored == t);
  // A document shorter than max_length: one window.
  const auto one = rolling_requests({5, 6}, 1, 2048);
  REQUIRE(one.size() == 1);
  CHECK(one[0].input == std::vector<int32_t>{1, 5});
  CHECK(one[0].targets == std::vector<int32_t>{5, 6});
  CHECK(rolling_requests({}, 1, 8).empty());
}

TEST_CASE("acc, acc_norm (characters), acc_bytes, ties to the first index, several golds", "[eval][scoring]") {
  auto s = score_mc({-5, -3, -3}, {"a", "bbbb", "cc"}, {2});
  CHECK(s.pred == 1);  // tie between 1 and 2 goes to the first
  CHECK(s.acc == 0);
  CHECK(s.pred_norm == 1);  // -5/1, -3/4, -3/2
  s = score_mc({-4, -6}, {"ab", "abcdef"}, {1});
  CHECK(s.acc == 0);
  CHECK(s.acc_norm == 1);  // -2 vs -1
  // "é" is one character but two bytes: characters pick choice 1, bytes tie and pick 0.
  s = score_mc({-2, -3}, {"\xc3\xa9", "abc"}, {1});
  CHECK(s.pred_norm == 1);
  CHECK(s.pred_bytes == 0);
  s = score_mc({-1, -9, -0.5}, {"x", "y", "z"}, {0, 2});
  CHECK(s.acc == 1);
  CHECK(argmax_first({1, 3, 3, 2}) == 1);
}

TEST_CASE("stderr is the sample standard deviation over sqrt(n)", "[eval][scoring]") {
  CHECK(mean({1, 0, 1, 1}) == Approx(0.75));
  CHECK(mean_stderr({1, 0, 1, 1}) == Approx(0.25));  // std (n-1) = 0.5
  CHECK(std::isnan(mean_stderr({1})));
}

TEST_CASE("row statistics: log-sum-exp, argmax and top-5 with ties, KL", "[eval][scoring]") {
  const std::vector<float> x = {1, 3, 3, 0, 2, 3, -1, 2.5f};
  const auto s = row_stats(x.data(), int64_t(x.size()));
  CHECK(s.argmax == 1);
  CHECK(s.top5 == std::array<int32_t, 5>{1, 2, 5, 7, 4});
  double z = 0;
  for (float v : x) z += std::exp(double(v));
  CHECK(s.lse == Approx(std::log(z)));
  CHECK(kl_div(x.data(), s, x.data(), s, int64_t(x.size())) == Approx(0).margin(1e-12));
  CHECK(in_top5(s, 4));
  CHECK(!in_top5(s, 0));
}

TEST_CASE("evaluator: exact metrics with fixed log-probabilities", "[eval][scoring]") {
  const int64_t V = 128;
  CharEncoder enc;
  FakeEngine teacher(V, 0.0), student(V, std::log(2.0));
  std::vector<ModelUnderTest> models = {{"teacher", "teacher", "t", &teacher, 1, ""},
                                        {"student", "student", "s", &student, 1, ""}};
  EvalOptions opt;
  opt.max_length = 8;
  opt.prefix_token = 1;
  const double ln128 = std::log(128.0);
  SECTION("multiple choice: uniform teacher, so acc picks the shortest choice, acc_norm the longest") {
    Task t;
    t.name = "mc", t.kind = "multiple_choice", t.layout = "generic";
    for (auto [choices, gold] : std::vector<std::pair<std::vector<std::string>, int64_t>>{{{"ab", "abcd", "x"}, 1},
                                                                                         {{"aaa", "b"}, 1}}) {
      McDoc d;
      for (auto& c : choices) d.contexts.push_back("Q:"), d.continuations.push_back(" " + c), d.choices.push_back(c);
      d.gold = {gold};
      t.mc.push_back(d);
    }
    t.original_docs = 2;
    const auto r = evaluate_task(t, models, 0, &enc, opt);
    const auto& tr = r.models[0];
    CHECK(tr.find("acc")->value == Approx(0.5));      // doc 0 picks "x" (wrong), doc 1 "b" (right)
    CHECK(tr.find("acc_norm")->value == Approx(0.5));  // doc 0 "abcd" (right), doc 1 "aaa" (wrong)
    CHECK(tr.find("acc_stderr") == nullptr);
    CHECK(tr.find("acc")->stderr_ == Approx(0.5));
    CHECK(tr.find("agree") == nullptr);                // the teacher is not compared with itself
    CHECK(r.models[1].find("agree") != nullptr);
    // Requests: (ctx, " " + choice), one group per document, scoring exactly the continuation.
    REQUIRE(teacher.seen.size() == 5);
    CHECK(teacher.seen[0].input == enc.encode("Q: a"));
    CHECK(teacher.seen[0].targets == enc.encode(" ab"));
    CHECK(teacher.seen[0].group == 0);
    CHECK(teacher.seen[3].group == 1);
  }
  SECTION("rolling perplexity: ce = ln 128, 7 bits per byte, KL of the boosted student") {
    Task t;
    t.name = "lm", t.kind = "lm", t.layout = "lm";
    for (std::string s : {"hello world, this is a test\n", "x y"}) {
      LmDoc d;
      d.text = s, d.has_text = true, d.tokens = enc.encode(s);
      t.lm.push_back(d);
    }
    const auto r = evaluate_task(t, models, 0, &enc, opt);
    const auto& tr = r.models[0];
    const double bytes = 28 + 3, words = 7 + 2;  // re.split counts the trailing '' of the first
    CHECK(tr.find("ce")->value == Approx(ln128));
    CHECK(tr.find("bits_per_byte")->value == Approx(7.0));
    CHECK(tr.find("byte_perplexity")->value == Approx(128.0));
    CHECK(tr.find("word_perplexity")->value == Approx(std::exp(ln128 * bytes / words)));
    CHECK(tr.tokens_scored == int64_t(bytes));
    const auto& sr = r.models[1];
    const double p = 1.0 / 128, q0 = 2.0 / 129, q = 1.0 / 129;
    CHECK(sr.find("kl")->value == Approx(p * std::log(p / q0) + 127 * p * std::log(p / q)));
    CHECK(sr.find("top1_agree")->value == Approx(1.0));  // both argmax 0 (the teacher's by the tie rule)
    CHECK(sr.find("top5_agree")->value == Approx(1.0));
    // Per-position curves: position p of a window is scored in every window that scores it: the
    // 28-token document has windows of 8 (first), 8, 8 and 4 tokens (the last scores positions
    // 4..7 only), the 3-token one a single window (positions 0..2): so positions 0..2 and 4..7 are scored four
    // times, position 3 three times.
    REQUIRE(sr.pos_n.size() == 8);
    CHECK(sr.pos_n[0] == 4);
    CHECK(sr.pos_n[3] == 3);
    CHECK(sr.pos_n[4] == 4);
    CHECK(sr.pos_n[7] == 4);
    CHECK(sr.pos_kl.size() == sr.pos_n.size());
    // Outputs: lm-eval's keys.
    RunInfo run;
    const auto j = lm_eval_results({r}, models, 1, run);
    CHECK(j["results"]["lm"]["bits_per_byte,none"].get<double>() > 7.0);
    CHECK(j["results"]["lm"]["bits_per_byte_stderr,none"] == "N/A");
    CHECK(j["n-samples"]["lm"]["effective"] == 2);
    CHECK(j["configs"]["lm"]["output_type"] == "loglikelihood_rolling");
    CHECK(j.contains("versions"));
    CHECK(j.contains("higher_is_better"));
    const auto table = markdown_table({r}, models);
    CHECK(contains(table, "| Δ student − teacher"));
    CHECK(contains(table, "bits_per_byte"));
  }
  SECTION("vocabulary mismatch between models is an error naming both") {
    FakeEngine other(64, 0.0);
    models[1].engine = &other;
    Task t;
    t.name = "lm", t.kind = "lm";
    t.lm.push_back({"ab", true, {1, 2}});
    CHECK(contains(error_of([&] { evaluate_task(t, models, 0, &enc, opt); }), "vocabulary mismatch"));
  }
}

TEST_CASE("evaluator: scoring on 1 or 4 threads gives bit-identical metrics", "[eval][scoring]") {
  const int64_t V = 1000;
  CharEncoder enc;
  HashEngine teacher(V, 1), student(V, 2), other(V, 3);
  std::vector<ModelUnderTest> models = {{"teacher", "teacher", "t", &teacher, 1, ""},
                                        {"student", "student", "s", &student, 1, ""},
                                        {"init_only", "init-only", "", &other, 1, ""}};
  Task t;
  t.name = "lm", t.kind = "lm", t.layout = "lm";
  for (int d = 0; d < 3; ++d) {
    LmDoc doc;
    doc.text = std::string(size_t(150 + 40 * d), char('a' + d)) + "\n";
    doc.has_text = true, doc.tokens = enc.encode(doc.text);
    t.lm.push_back(doc);
  }
  EvalOptions opt;
  opt.max_length = 64;
  opt.prefix_token = 1;
  opt.block_floats = 100 * V;  // several blocks
  opt.threads = 1;
  const auto a = evaluate_task(t, models, 0, &enc, opt);
  opt.threads = 4;
  const auto b = evaluate_task(t, models, 0, &enc, opt);
  REQUIRE(a.models.size() == 3);
  for (size_t m = 0; m < 3; ++m) {
    REQUIRE(a.models[m].metrics.size() == b.models[m].metrics.size());
    for (size_t k = 0; k < a.models[m].metrics.size(); ++k) {
      const auto &x = a.models[m].metrics[k], &y = b.models[m].metrics[k];
      INFO(models[m].label << " " << x.name);
      CHECK(x.name == y.name);
      if (x.name == "examples/s" || x.name == "tokens/s") continue;  // timings
      CHECK(std::memcmp(&x.value, &y.value, sizeof(double)) == 0);
    }
    CHECK(a.models[m].pos_kl == b.models[m].pos_kl);
  }
  // The student differs from the teacher, so KL and agreement are real numbers here.
  CHECK(a.models[1].find("kl")->value > 0.01);
  CHECK(a.models[1].find("top1_agree")->value < 1.0);
}

TEST_CASE("task files: layouts, field mapping and errors that name the file and line", "[eval][tasks]") {
  TokenContext tc;  // no tokenizer needed for multiple choice loading
  tc.vocab_size = 1000;
  const auto p = tmp("layouts");
  fs::create_directories(p);
  SECTION("generic, with lists of golds, string golds and its own delimiter") {
    write(p + "/g.jsonl", R"({"context": "2+2=", "choices": ["3", "4"], "gold": 1})" "\n\n"
                          R"({"context": "c", "choices": ["a", "b", "c"], "gold": [0, 2], "target_delimiter": ""})" "\n"
                          R"({"context": "c", "choices": ["a", "b"], "gold": "b"})" "\n");
    const auto t = load_task(parse_task_spec(p + "/g.jsonl"), tc, 0);
    CHECK(t.name == "g");
    CHECK(t.kind == "multiple_choice");
    REQUIRE(t.mc.size() == 3);
    CHECK(t.mc[0].continuations == std::vector<std::string>{" 3", " 4"});
    CHECK(t.mc[0].gold == std::vector<int64_t>{1});
    CHECK(t.mc[1].continuations[0] == "a");
    CHECK(t.mc[1].gold == std::vector<int64_t>{0, 2});
    CHECK(t.mc[2].gold == std::vector<int64_t>{1});
    CHECK(t.mc[2].id == p + "/g.jsonl:4");
    const auto lim = load_task(parse_task_spec("first=" + p + "/g.jsonl"), tc, 2);
    CHECK(lim.name == "first");
    CHECK(lim.mc.size() == 2);
    CHECK(lim.original_docs == 3);
  }
  SECTION("hellaswag, piqa, arc (both layouts), winogrande, lambada") {
    write(p + "/hs.jsonl",
          R"({"activity_label": "Baking", "ctx_a": "A man mixes flour.", "ctx_b": "then he", "endings": ["bakes [step] it.", "sleeps."], "label": "0"})" "\n");
    auto t = load_task(parse_task_spec(p + "/hs.jsonl"), tc, 0);
    CHECK(t.layout == "hellaswag");
    CHECK(t.mc[0].contexts[0] == "Baking: A man mixes flour. Then he");
    CHECK(t.mc[0].choices[0] == "bakes it.");
    CHECK(t.mc[0].gold == std::vector<int64_t>{0});
    write(p + "/piqa.jsonl", R"({"goal": "Open a jar", "sol1": "twist", "sol2": "pull", "label": 0})" "\n");
    t = load_task(parse_task_spec(p + "/piqa.jsonl"), tc, 0);
    CHECK(t.mc[0].contexts[0] == "Question: Open a jar\nAnswer:");
    CHECK(t.mc[0].continuations[1] == " pull");
    write(p + "/arc.jsonl",
          R"({"question": "Sky?", "choices": {"text": ["red", "blue"], "label": ["A", "B"]}, "answerKey": "B"})" "\n"
          R"({"question": {"stem": "Sun?", "choices": [{"text": "hot", "label": "1"}, {"text": "cold", "label": "2"}]}, "answerKey": "1"})" "\n");
    t = load_task(parse_task_spec(p + "/arc.jsonl"), tc, 0);
    CHECK(t.mc[0].gold == std::vector<int64_t>{1});
    CHECK(t.mc[1].contexts[0] == "Question: Sun?\nAnswer:");
    CHECK(t.mc[1].gold == std::vector<int64_t>{0});
    write(p + "/wg.jsonl", R"({"sentence": "The cup fell because _ was slippery.", "option1": "it", "option2": "he", "answer": "1"})" "\n");
    t = load_task(parse_task_spec(p + "/wg.jsonl"), tc, 0);
    CHECK(t.mc[0].contexts == std::vector<std::string>{"The cup fell because it", "The cup fell because he"});
    CHECK(t.mc[0].continuations[0] == " was slippery.");
    CHECK(t.mc[0].choices[1] == "The cup fell because he");  // acc_norm length: the partial sentence
    write(p + "/lam.jsonl", R"({"text": "the cat sat on the mat"})" "\n");
    t = load_task(parse_task_spec(p + "/lam.jsonl:lambada"), tc, 0);
    CHECK(t.kind == "loglikelihood");
    CHECK(t.mc[0].contexts[0] == "the cat sat on the");
    CHECK(t.mc[0].continuations[0] == " mat");
  }
  SECTION("bad lines: the message names file:line and the problem") {
    write(p + "/bad1.jsonl", R"({"context": "a", "choices": ["x", "y"], "gold": 0})" "\n{not json\n");
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/bad1.jsonl"), tc, 0); }), "bad1.jsonl:2: not valid JSON"));
    write(p + "/bad2.jsonl", R"({"context": "a", "choices": ["x", "y"], "gold": 5})" "\n");
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/bad2.jsonl"), tc, 0); }), "bad2.jsonl:1: gold index 5"));
    write(p + "/bad3.jsonl", R"({"context": "a", "choices": ["x"], "gold": 0})" "\n");
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/bad3.jsonl"), tc, 0); }), "at least 2 choices"));
    write(p + "/bad4.jsonl", R"({"goal": "g", "sol1": "a", "label": 0})" "\n");
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/bad4.jsonl"), tc, 0); }), "bad4.jsonl:1: missing field \"sol2\""));
    write(p + "/bad5.jsonl", R"({"foo": 1})" "\n");
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/bad5.jsonl"), tc, 0); }), "cannot tell the layout"));
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/missing.jsonl"), tc, 0); }), "not found"));
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/bad5.jsonl:nope"), tc, 0); }), "not found"));
    write(p + "/text.txt", "some text");
    CHECK(contains(error_of([&] { load_task(parse_task_spec(p + "/text.txt"), tc, 0); }), "need a tokenizer"));
  }
}

TEST_CASE("make-task nextline: deterministic, gold is the real line, distractors re-indented", "[eval][tasks]") {
  std::vector<std::string> texts, names;
  for (int f = 0; f < 4; ++f) {
    std::string s;
    for (int i = 0; i < 30; ++i) s += (i % 3 ? "    " : "") + std::string("value_") + std::to_string(f) + "_" + std::to_string(i) + " = compute(" + std::to_string(i) + ")\n";
    texts.push_back(s);
    names.push_back("file" + std::to_string(f));
  }
  MakeTaskOptions o;
  o.n = 20;
  const auto a = make_nextline_task(texts, names, o), b = make_nextline_task(texts, names, o);
  REQUIRE(a.size() == 20);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].dump() == b[i].dump());
    const auto ctx = a[i]["context"].get<std::string>();
    const auto ch = a[i]["choices"].get<std::vector<std::string>>();
    const auto gold = a[i]["gold"].get<int64_t>();
    REQUIRE(ch.size() == 4);
    const auto src = a[i]["source"].get<std::string>();
    const int f = src[4] - '0', line = std::stoi(src.substr(6)) - 1;
    CHECK(ctx.back() == '\n');
    CHECK(texts[size_t(f)].find(ctx + ch[size_t(gold)] + "\n") != std::string::npos);  // the real next line
    const auto indent = ch[size_t(gold)].substr(0, ch[size_t(gold)].find_first_not_of(' '));
    for (size_t k = 0; k < ch.size(); ++k) {
      CHECK(ch[k].substr(0, indent.size()) == indent);
      if (int64_t(k) != gold) CHECK(!contains(ch[k], "value_" + std::to_string(f) + "_"));  // from other files
    }
    (void)line;
  }
  o.seed = 1;
  CHECK(make_nextline_task(texts, names, o)[0].dump() != a[0].dump());
  o.distractors = "same-file";
  const auto s = make_nextline_task(texts, names, o);
  CHECK(!s.empty());
}

TEST_CASE("runtime engine: a shared context prefilled once gives the logits of separate prefills", "[eval][runtime]") {
  auto cfg = Mamba2Config::geometry("test");
  quant::QuantConfig q;
  q.rank = 4;
  auto model = runtime::Model::random(cfg, q, 3);
  RuntimeEngine eng(model, 2);
  CHECK(eng.vocab() == cfg.padded_vocab());
  std::vector<Request> grouped;
  for (int c = 0; c < 3; ++c) {
    Request r;
    for (int i = 0; i < 70; ++i) r.input.push_back(int32_t((i * 7 + 3) % 100));  // the shared context (> one chunk)
    for (int i = 0; i < 3 + c; ++i) r.input.push_back(int32_t((i * 13 + c * 5) % 100));
    r.targets.assign(r.input.end() - (4 + c), r.input.end());
    r.targets.back() = 42;  // the token after the input
    r.group = 0;
    grouped.push_back(r);
  }
  auto separate = grouped;
  for (auto& r : separate) r.group = -1;
  auto logits_of = [&](const std::vector<Request>& reqs) {
    std::vector<const Request*> ptrs;
    for (auto& r : reqs) ptrs.push_back(&r);
    std::vector<std::vector<float>> out(reqs.size());
    eng.run(ptrs, [&](size_t i, const float* l) { out[i].assign(l, l + reqs[i].targets.size() * size_t(eng.vocab())); });
    return out;
  };
  const auto a = logits_of(grouped), b = logits_of(separate);
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].size() == b[i].size());
    for (size_t k = 0; k < a[i].size(); ++k) worst = std::max(worst, double(std::fabs(a[i][k] - b[i][k])) / (1 + std::fabs(b[i][k])));
  }
  WARN("shared-context vs separate prefill: worst relative logit difference " << worst);
  CHECK(worst < 1e-4);
}
