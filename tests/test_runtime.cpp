// The runtime against the trainer: a student exported to a packed file and run by the
// LibTorch-free runtime must give the LibTorch fake-quant student's logits (prefill, then 32
// decode steps), on every CPU ISA this machine has. Plus the engine's own properties: token-by-
// token decode equals chunked prefill, batched sequences equal single ones, state save/restore,
// reset, and bad input (truncated / corrupted / wrong-version files, ids outside the vocabulary).
//
// Tolerance: the runtime keeps activations and the SSM state in fp32, like the trainer's fp32
// student, and the weights are bit-identical (docs/format.md). What differs is summation order
// (fp32 dot products of length <= 2 * d_inner, in another order) and exp/log implementations,
// ~1e-7 relative per op; through the layers and the LM head we measure ~6e-7 and assert 1e-5
// (relative L2 of the logits per position), room for the fp32 SSM recurrence over 180 steps.
// fp16 SSM state rounds the state to 11 bits every step: ~1e-3 relative; asserted < 2e-2.
// int8 activations (VNNI sign GEMM) quantize b ⊙ x per token to 8 bits: asserted < 5e-2.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <random>
#include <sys/wait.h>

#include "catch_compat.h"
#include "kernels/cpu/isa.h"
#include "model_test_util.h"
#include "runtime_test_util.h"
#include "quant/student.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "test_util.h"

using namespace dfssm;
using dfssm::test::contains;
using dfssm::test::error_of;
namespace fs = std::filesystem;

namespace {

using test::engine_vs_trainer;
using test::Exported;
using test::random_ids;
using test::rel_l2;
std::string tmp_path(const std::string& name) { return test::tmp_path("runtime", name); }
Exported make_exported(const Mamba2Config& cfg, const quant::QuantConfig& q, const std::string& name, uint64_t seed) {
  return test::make_exported(cfg, q, tmp_path(name), seed);
}

Mamba2Config small_config(int64_t ngroups) {
  auto c = Mamba2Config::geometry("test");
  c.d_model = 64;
  c.n_layer = 3;
  c.vocab_size = 250;  // padded to 256
  c.ngroups = ngroups;
  return c;
}

// Per activation precision of the sign GEMM (see the header comment): f32 only reorders sums;
// i16 quantizes b ⊙ x per token to 15 bits (~3e-5 per element relative to max|x|, averaging
// down in the sums; measured ~1e-5 on the logits); i8 to 7 bits (measured ~3e-2).
const std::map<std::string, double> kActTolerance = {{"f32", 1e-5}, {"i16", 2e-4}, {"i8", 6e-2}};

// Compares the runtime on `path` with the LibTorch student: prefill of `ids`, then `steps`
// greedy-free decode steps on fixed ids. Returns the worst relative error over all positions.
double runtime_vs_trainer(const Exported& e, const std::vector<int32_t>& ids, int steps,
                          const runtime::SessionOptions& opt) {
  auto rt_model = runtime::Model::load(e.path);
  runtime::Session s(rt_model, 1, opt);
  return engine_vs_trainer(e, s, ids, steps);
}

}  // namespace

TEST_CASE("runtime logits equal the LibTorch student's (prefill + 32 decode steps)", "[runtime][trainer]") {
  for (int64_t groups : {1, 2}) {
    quant::QuantConfig q;
    q.rank = 4;
    const auto cfg = small_config(groups);
    const auto e = make_exported(cfg, q, "student_g" + std::to_string(groups) + ".dfssm.safetensors", 11 + groups);
    const auto ids = random_ids(150, cfg.vocab_size, 5);  // crosses prefill chunks of 64
    for (auto isa : kernels::cpu::supported_isas()) {
      for (const char* act : {"f32", "i16", "i8"}) {
        runtime::SessionOptions o;
        o.isa = kernels::cpu::isa_name(isa);
        o.threads = 2;
        o.act = act;
        const double err = runtime_vs_trainer(e, ids, 32, o);
        WARN("ngroups " << groups << " isa " << o.isa << " activations " << act << ": worst rel. error " << err);
        CHECK(err < kActTolerance.at(act));
      }
    }
    runtime::SessionOptions o16;
    o16.act = "f32";
    o16.state_dtype = "f16";
    const double err16 = runtime_vs_trainer(e, ids, 32, o16);
    WARN("ngroups " << groups << " fp16 state: worst rel. error " << err16);
    CHECK(err16 < 2e-2);
  }
}

TEST_CASE("runtime logits equal the LibTorch student's through 48 layers", "[runtime][trainer]") {
  // The 1.3B model's depth (48 layers; the width stays small): nothing in the engine may depend
  // on the layer count beyond the per-layer state offsets this exercises.
  quant::QuantConfig q;
  q.rank = 4;
  auto cfg = small_config(1);
  cfg.n_layer = 48;
  const auto e = make_exported(cfg, q, "student_48.dfssm.safetensors", 21);
  const auto ids = random_ids(70, cfg.vocab_size, 6);
  runtime::SessionOptions o;
  o.act = "f32";
  const double err = runtime_vs_trainer(e, ids, 8, o);
  WARN("48 layers: worst rel. error " << err);
  CHECK(err < 1e-5);
}

TEST_CASE("runtime handles every packed variant: binary, fp16 embedding, dense and ternary/int4", "[runtime][trainer]") {
  const auto cfg = small_config(1);
  const auto ids = random_ids(40, cfg.vocab_size, 6);
  std::vector<std::pair<std::string, quant::QuantConfig>> variants;
  quant::QuantConfig q;
  q.format = "binary";
  q.rank = 0;
  variants.push_back({"binary", q});
  q = {};
  q.rank = 3;
  q.embedding = "fp16";
  q.small_dtype = "f32";
  q.quantize_out_proj = false;
  variants.push_back({"fp16-embedding-dense-out", q});
  for (auto& [name, qq] : variants) {
    auto c = cfg;
    if (name == "binary") c.tie_embeddings = false;  // exercises the untied lm_head too
    const auto e = make_exported(c, qq, name + ".dfssm.safetensors", 21);
    runtime::SessionOptions o;
    o.act = "f32";
    const double err = runtime_vs_trainer(e, ids, 8, o);
    WARN(name << ": worst rel. error " << err);
    CHECK(err < 1e-5);
  }
  // ternary / int4 run through fp16 dense rows (rounded once at load): fp16 weight precision.
  for (const char* fmt : {"ternary", "int4"}) {
    quant::QuantConfig qq;
    qq.format = fmt;
    qq.rank = 2;
    qq.int4_group = 32;
    const auto e = make_exported(cfg, qq, std::string(fmt) + ".dfssm.safetensors", 22);
    const double err = runtime_vs_trainer(e, ids, 8, {});
    WARN(fmt << ": worst rel. error " << err);
    CHECK(err < 1e-2);
  }
}

TEST_CASE("runtime: decode token by token equals chunked prefill; batch equals single; state save/restore",
          "[runtime]") {
  quant::QuantConfig q;
  q.rank = 4;
  const auto cfg = small_config(1);
  const auto e = make_exported(cfg, q, "props.dfssm.safetensors", 31);
  auto m = runtime::Model::load(e.path);
  const int64_t V = cfg.padded_vocab(), n = 70;
  const auto ids = random_ids(n, cfg.vocab_size, 8);

  runtime::SessionOptions chunked;
  chunked.prefill_chunk = 64;
  runtime::Session a(m, 1, chunked);
  std::vector<float> all(static_cast<size_t>(n * V));
  a.prefill(0, ids.data(), n, all.data());
  REQUIRE(a.position(0) == n);

  SECTION("token by token") {
    runtime::Session b(m, 1);
    for (int64_t t = 0; t < n; ++t) {
      const float* lg = t == 0 ? b.prefill(0, ids.data(), 1) : b.step(&ids[size_t(t)]);
      INFO("position " << t);
      REQUIRE(rel_l2(lg, all.data() + t * V, V) < 1e-5);
    }
  }
  SECTION("prefill chunk sizes 1 and 7 give the same logits") {
    for (int64_t chunk : {1, 7}) {
      runtime::SessionOptions o;
      o.prefill_chunk = chunk;
      runtime::Session b(m, 1, o);
      std::vector<float> all2(all.size());
      b.prefill(0, ids.data(), n, all2.data());
      REQUIRE(rel_l2(all2.data(), all.data(), n * V) < 1e-5);
    }
  }
  SECTION("three sequences in one batch equal three single runs") {
    runtime::Session b(m, 3);
    const auto ids1 = random_ids(n, cfg.vocab_size, 9), ids2 = random_ids(n, cfg.vocab_size, 10);
    runtime::Session single(m, 1);
    std::vector<float> all1(all.size());
    single.prefill(0, ids1.data(), n, all1.data());
    b.prefill(0, ids.data(), 10);
    b.prefill(1, ids1.data(), 10);
    b.prefill(2, ids2.data(), 12);  // sequences may be at different positions
    for (int64_t t = 10; t < 20; ++t) {
      const int32_t step[3] = {ids[size_t(t)], ids1[size_t(t)], ids2[size_t(t + 2)]};
      const float* lg = b.step(step);
      INFO("position " << t);
      REQUIRE(rel_l2(lg, all.data() + t * V, V) < 1e-5);
      REQUIRE(rel_l2(lg + V, all1.data() + t * V, V) < 1e-5);
    }
    REQUIRE(b.position(2) == 22);
  }
  SECTION("save, continue, restore, continue again: identical") {
    runtime::Session b(m, 2);
    b.prefill(0, ids.data(), 30);
    const auto blob = b.save_state(0);
    std::vector<float> first(static_cast<size_t>(V));
    const float* lg = b.prefill(0, ids.data() + 30, 5);
    std::memcpy(first.data(), lg, size_t(V) * 4);
    b.restore_state(1, blob);  // into another sequence slot
    REQUIRE(b.position(1) == 30);
    lg = b.prefill(1, ids.data() + 30, 5);
    REQUIRE(std::memcmp(lg, first.data(), size_t(V) * 4) == 0);
    REQUIRE(rel_l2(first.data(), all.data() + 34 * V, V) < 1e-5);
    b.reset(1);
    REQUIRE(b.position(1) == 0);
    lg = b.prefill(1, ids.data(), 1);
    REQUIRE(rel_l2(lg, all.data(), V) < 1e-5);
    // A blob from another state dtype or a damaged one is refused.
    runtime::SessionOptions o16;
    o16.state_dtype = "f16";
    runtime::Session c(m, 1, o16);
    CHECK(contains(error_of([&] { c.restore_state(0, blob); }), "state dtype"));
    auto bad = blob;
    bad[0] = 'X';
    CHECK(contains(error_of([&] { b.restore_state(0, bad); }), "not a dfssm session state"));
    bad = blob;
    bad.pop_back();
    CHECK(contains(error_of([&] { b.restore_state(0, bad); }), "bytes of caches"));
  }
}

TEST_CASE("runtime: bad input gives clear errors", "[runtime][errors]") {
  quant::QuantConfig q;
  q.rank = 2;
  const auto cfg = small_config(1);
  const auto e = make_exported(cfg, q, "bad.dfssm.safetensors", 41);
  std::ifstream f(e.path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto write = [&](const std::string& name, const std::string& content) {
    const auto p = tmp_path(name);
    std::ofstream(p, std::ios::binary) << content;
    return p;
  };
  SECTION("truncated") {
    const auto p = write("trunc.dfssm.safetensors", bytes.substr(0, bytes.size() / 2));
    const auto msg = error_of([&] { runtime::Model::load(p); });
    INFO(msg);
    CHECK(contains(msg, p));
  }
  SECTION("truncated inside the header") {
    const auto p = write("trunc2.dfssm.safetensors", bytes.substr(0, 20));
    CHECK(!error_of([&] { runtime::Model::load(p); }).empty());
  }
  SECTION("wrong format version") {
    std::string b = bytes;
    const auto at = b.find("\"format_version\":\"1\"");
    REQUIRE(at != std::string::npos);
    b[at + std::strlen("\"format_version\":\"")] = '9';
    const auto p = write("ver.dfssm.safetensors", b);
    const auto msg = error_of([&] { runtime::Model::load(p); });
    INFO(msg);
    CHECK(contains(msg, "version 9 is not supported"));
  }
  SECTION("corrupted header byte") {
    std::string b = bytes;
    b[12] = '\x01';
    const auto p = write("corrupt.dfssm.safetensors", b);
    CHECK(!error_of([&] { runtime::Model::load(p); }).empty());
  }
  SECTION("missing file") { CHECK(contains(error_of([&] { runtime::Model::load(tmp_path("nope")); }), "nope")); }
  SECTION("token ids outside the vocabulary, bad options") {
    auto m = runtime::Model::load(e.path);
    runtime::Session s(m, 1);
    const int32_t big = int32_t(cfg.vocab_size), neg = -1;
    CHECK(contains(error_of([&] { s.prefill(0, &big, 1); }), "outside the vocabulary"));
    CHECK(contains(error_of([&] { s.step(&neg); }), "outside the vocabulary"));
    CHECK(contains(error_of([&] { s.prefill(3, &neg, 1); }), "sequence 3"));
    runtime::SessionOptions o;
    o.state_dtype = "f8";
    CHECK(contains(error_of([&] { runtime::Session(m, 1, o); }), "state dtype"));
    CHECK(contains(error_of([&] { runtime::Sampler({-1.0, 0, 1.0, 0}, 10); }), "temperature"));
    CHECK(contains(error_of([&] { runtime::Sampler({1.0, 0, 0.0, 0}, 10); }), "top-p"));
  }
}

TEST_CASE("sampler: greedy is argmax, a seed reproduces, top-k 1 is greedy", "[runtime][sampler]") {
  std::vector<float> lg = {0.1f, 2.0f, -1.0f, 1.9f, 0.5f};
  runtime::Sampler greedy({0.0, 0, 1.0, 0}, 5);
  CHECK(greedy.sample(lg.data()) == 1);
  runtime::Sampler top1({1.0, 1, 1.0, 3}, 5);
  for (int i = 0; i < 20; ++i) CHECK(top1.sample(lg.data()) == 1);
  runtime::Sampler a({1.0, 0, 1.0, 42}, 5), b({1.0, 0, 1.0, 42}, 5);
  std::vector<int> sa, sb;
  for (int i = 0; i < 50; ++i) sa.push_back(a.sample(lg.data())), sb.push_back(b.sample(lg.data()));
  CHECK(sa == sb);
  // Within the top 2 ({2.0, 1.9}) the best has probability 0.525 >= 0.5: the nucleus keeps it alone.
  runtime::Sampler nucleus({1.0, 2, 0.5, 1}, 5);
  for (int i = 0; i < 20; ++i) CHECK(nucleus.sample(lg.data()) == 1);
  // ids past vocab_size (padding rows) are never sampled
  std::vector<float> padded = {0.f, 0.f, 100.f};
  runtime::Sampler g2({0.0, 0, 1.0, 0}, 2);
  CHECK(g2.sample(padded.data()) < 2);
}

namespace {
// Runs build/bin/dfssm with `args`; returns (exit code, stdout + stderr).
std::pair<int, std::string> run_cli(const std::string& args) {
  const std::string cmd = std::string(DFSSM_BIN_DIR) + "/dfssm " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}
}  // namespace

TEST_CASE("dfssm generate: ids mode, determinism, and bad input exits non-zero with a message", "[runtime][cli]") {
  quant::QuantConfig q;
  q.rank = 2;
  const auto cfg = small_config(1);
  const auto e = make_exported(cfg, q, "cli.dfssm.safetensors", 51);
  const std::string m = "-m " + e.path + " ";
  auto [rc, out] = run_cli("generate " + m + "--ids \"1 2 3\" --max-tokens 6 --seed 3 --temperature 1");
  INFO(out);
  REQUIRE(rc == 0);
  auto [rc2, out2] = run_cli("generate " + m + "--ids 1,2,3 --max-tokens 6 --seed 3 --temperature 1");
  REQUIRE(rc2 == 0);
  REQUIRE(out.substr(0, out.find('[')) == out2.substr(0, out2.find('[')));  // same seed, same ids
  {
    std::stringstream ss(out.substr(0, out.find('[')));
    int n = 0;
    for (long long id; ss >> id; ++n) CHECK((id >= 0 && id < cfg.vocab_size));
    CHECK(n == 6);
  }
  struct Bad {
    std::string args, msg;
  };
  std::ofstream(tmp_path("trunc.dfssm.safetensors")) << "\x10\x00\x00";
  const std::vector<Bad> bad = {
      {m + "--ids 1 --max-tokens 0", "--max-tokens must be >= 1"},
      {m + "--ids 1 --max-tokens -4", "--max-tokens must be >= 1"},
      {m + "--ids \"1 100000\"", "outside the vocabulary"},
      {m + "--ids \"1 x\"", "not an integer token id"},
      {m + "-p hello", "carries no tokenizer"},
      {m + "--ids 1 --device cuda", "--device cuda"},
      {m + "--ids 1 --temperature -1", "--temperature"},
      {"-m " + tmp_path("trunc.dfssm.safetensors") + " --ids 1", "trunc.dfssm.safetensors"},
      {"-m " + tmp_path("missing.dfssm.safetensors") + " --ids 1", "missing.dfssm.safetensors"},
      {m + "--ids 1 --tokenizer " + tmp_path("missing.model"), "missing.model"},
  };
  for (const auto& b : bad) {
    auto [code, text] = run_cli("generate " + b.args);
    INFO("dfssm generate " << b.args << " -> " << code << ": " << text);
    CHECK(code == 1);
    CHECK(contains(text, b.msg));
    CHECK(contains(text, "error"));
  }
  auto [brc, bout] = run_cli("bench " + m + "--prefill 8 --steps 2 --warmup 0 --batch2 2 --no-membw");
  INFO(bout);
  CHECK(brc == 0);
  CHECK(contains(bout, "decode batch 1:"));
}

TEST_CASE("runtime: every ISA path equals the scalar path at the 1.3B width (2 layers)", "[runtime][isa]") {
  // The trainer comparison above runs on small widths; this one checks the kernels' composition at
  // the real 1.3B widths (d_model 2048, in_proj 8512 rows, d_state 128, vocab 50288, rank 19) on
  // every ISA, with all threads, prefill then batched decode. f32: only summation order differs
  // (~1e-6). i16: when an input differs in its last fp32 bit, the per-token quantization can
  // round one element to the neighbouring int16 step; with the activations' outliers (max|x| up
  // to ~50x their rms) one such step moves a projection's output by up to ~1e-4 relative
  // (measured 8.9e-5 worst on AVX2 here, 0 at most positions), so 5e-4.
  auto cfg = Mamba2Config::geometry("mamba2-1.3b");
  cfg.n_layer = 2;
  quant::QuantConfig q;
  auto m = runtime::Model::random(cfg, q, 7);
  const int64_t V = cfg.padded_vocab();
  const std::vector<int32_t> p0 = {11, 222, 3333, 44444, 5}, p1 = {6, 77, 888};
  auto run = [&](const std::string& isa, const std::string& act) {
    runtime::SessionOptions o;
    o.isa = isa;
    o.act = act;
    runtime::Session s(m, 2, o);
    std::vector<float> out;
    const float* lg = s.prefill(0, p0.data(), int64_t(p0.size()));
    out.insert(out.end(), lg, lg + V);
    lg = s.prefill(1, p1.data(), int64_t(p1.size()));
    out.insert(out.end(), lg, lg + V);
    for (int i = 0; i < 3; ++i) {
      const int32_t toks[2] = {int32_t(100 + i), int32_t(40000 + i)};
      lg = s.step(toks);
      out.insert(out.end(), lg, lg + 2 * V);
    }
    return out;
  };
  for (const char* act : {"f32", "i16"}) {
    const auto ref = run("scalar", act);
    for (auto isa : kernels::cpu::supported_isas()) {
      if (isa == kernels::cpu::Isa::Scalar) continue;
      const auto got = run(kernels::cpu::isa_name(isa), act);
      const int64_t rows = int64_t(ref.size()) / V;
      double worst = 0;
      for (int64_t r = 0; r < rows; ++r) worst = std::max(worst, rel_l2(got.data() + r * V, ref.data() + r * V, V));
      WARN("1.3B width, isa " << kernels::cpu::isa_name(isa) << ", activations " << act << ": worst rel. error vs scalar "
                               << worst);
      CHECK(worst < (std::string(act) == "f32" ? 1e-5 : 5e-4));
    }
  }
}
