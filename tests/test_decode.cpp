// Decoding token by token (recurrent step) equals the full chunked forward; prefill then
// step equals it too; a prefill split in two pieces equals one prefill.
#include "catch_compat.h"
#include "core/error.h"
#include "model_test_util.h"

using namespace dfssm;
using dfssm::test::make_test_model;
using dfssm::test::rel_err;

namespace {
Mamba2Config small_config(int64_t ngroups) {
  auto c = Mamba2Config::geometry("test");
  c.ngroups = ngroups;
  c.vocab_size = 100;
  c.pad_vocab_size_multiple = 16;  // 112 rows: padded rows must behave like real ones
  return c;
}

at::Tensor random_ids(int64_t b, int64_t l, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(vocab, {b, l}, gen, at::kLong);
}
}  // namespace

TEST_CASE("step-by-step decode equals the full forward", "[decode]") {
  for (int64_t g : {1, 2}) {
    INFO("ngroups=" << g);
    const auto model = make_test_model(small_config(g), 11 + uint64_t(g));
    at::NoGradGuard ng;
    const auto ids = random_ids(2, 37, 100, 5);
    const auto full = model.forward(ids);  // (2,37,112)
    REQUIRE(full.size(2) == 112);

    auto st = model.new_state(2);
    std::vector<at::Tensor> steps;
    for (int64_t t = 0; t < ids.size(1); ++t) steps.push_back(model.step(ids.select(1, t), st));
    const auto stepped = at::stack(steps, 1);
    REQUIRE(st.seqlen == 37);
    REQUIRE(rel_err(stepped, full) < 1e-5);

    // Prefill 20 tokens, then decode the remaining 17.
    auto st2 = model.new_state(2);
    const auto pre = model.forward(ids.narrow(1, 0, 20), &st2);
    REQUIRE(rel_err(pre, full.narrow(1, 0, 20)) < 1e-6);
    std::vector<at::Tensor> rest;
    for (int64_t t = 20; t < 37; ++t) rest.push_back(model.step(ids.select(1, t), st2));
    REQUIRE(rel_err(at::stack(rest, 1), full.narrow(1, 20, 17)) < 1e-5);

    // Prefill in two pieces (2 and 35 tokens: shorter than d_conv, then ragged chunks).
    auto st3 = model.new_state(2);
    model.forward(ids.narrow(1, 0, 2), &st3);
    const auto second = model.forward(ids.narrow(1, 2, 35), &st3);
    REQUIRE(rel_err(second, full.narrow(1, 2, 35)) < 1e-5);
    // And the caches agree with the stepped ones.
    for (size_t i = 0; i < st.layers.size(); ++i) {
      REQUIRE(rel_err(st3.layers[i].ssm, st.layers[i].ssm) < 1e-5);
      REQUIRE(rel_err(st3.layers[i].conv, st.layers[i].conv) < 1e-6);
    }
  }
}

TEST_CASE("decode state is per sequence", "[decode]") {
  const auto model = make_test_model(small_config(1), 3);
  at::NoGradGuard ng;
  const auto ids = random_ids(2, 8, 100, 9);
  auto both = model.new_state(2);
  const auto lb = model.forward(ids, &both);
  auto one = model.new_state(1);
  const auto l1 = model.forward(ids.narrow(0, 1, 1), &one);
  REQUIRE(rel_err(lb.narrow(0, 1, 1), l1) < 1e-6);
}

TEST_CASE("token ids outside the vocabulary are rejected", "[decode][errors]") {
  const auto model = make_test_model(small_config(1), 3);
  at::NoGradGuard ng;
  auto ids = random_ids(1, 4, 100, 1);
  ids[0][2] = 112;
  REQUIRE_THROWS_AS(model.forward(ids), dfssm::Error);
  ids[0][2] = -1;
  REQUIRE_THROWS_AS(model.forward(ids), dfssm::Error);
}
