// Mamba2Config: both config.json conventions, defaults, derived sizes and errors.
#include "catch_compat.h"
#include "model/config.h"
#include "test_util.h"

using namespace dfssm;
using dfssm::test::contains;
using dfssm::test::error_of;

TEST_CASE("mamba_ssm config.json with module defaults", "[config]") {
  // As shipped by state-spaces/mamba2-1.3b.
  const auto c = Mamba2Config::from_json(R"({"d_model": 2048, "d_intermediate": 0, "n_layer": 48,
      "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {},
      "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true,
      "pad_vocab_size_multiple": 16, "tie_embeddings": true})",
                                         "config.json");
  REQUIRE(c.d_state == 128);
  REQUIRE(c.headdim == 64);
  REQUIRE(c.ngroups == 1);
  REQUIRE(c.chunk_size == 256);
  REQUIRE(c.padded_vocab() == 50288);
  REQUIRE(c.d_in_proj() == 8512);
  REQUIRE(c.conv_dim() == 4352);
  REQUIRE(c.nheads() == 64);
  REQUIRE(c.num_params() == 1343757312LL);
  REQUIRE(c.to_json().find("\"layer\": \"Mamba2\"") != std::string::npos);
  // Our own writer's output reads back to the same config.
  const auto back = Mamba2Config::from_json(c.to_json(), "roundtrip");
  REQUIRE(back.to_json() == c.to_json());
}

TEST_CASE("named geometries have the published parameter counts", "[config]") {
  REQUIRE(Mamba2Config::geometry("mamba2-130m").num_params() == 128989632LL);
  REQUIRE(Mamba2Config::geometry("mamba2-1.3b").num_params() == 1343757312LL);
  REQUIRE(contains(error_of([] { Mamba2Config::geometry("mamba3"); }), "unknown geometry"));
}

TEST_CASE("HF transformers config.json", "[config]") {
  // transformers 5.x writes infinity as {"__float__": "Infinity"}.
  const auto c = Mamba2Config::from_json(R"({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2,
      "vocab_size": 96, "state_size": 16, "head_dim": 16, "n_groups": 2, "expand": 2, "conv_kernel": 4,
      "chunk_size": 16, "tie_word_embeddings": true, "num_heads": 8, "layer_norm_epsilon": 1e-05,
      "time_step_limit": [0.0, {"__float__": "Infinity"}], "use_bias": false, "use_conv_bias": true})",
                                         "hf/config.json");
  REQUIRE(c.d_model == 64);
  REQUIRE(c.ngroups == 2);
  REQUIRE(c.padded_vocab() == 96);
  REQUIRE_FALSE(c.has_dt_limit());
  const auto lim = Mamba2Config::from_json(
      R"({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 96, "head_dim": 16,
          "time_step_limit": [0.01, 0.5]})",
      "x");
  REQUIRE(lim.has_dt_limit());
  REQUIRE(lim.dt_limit_max == 0.5);
}

TEST_CASE("config errors name the file and the field", "[config][errors]") {
  REQUIRE(contains(error_of([] { Mamba2Config::from_json(R"({"n_layer": 2, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba2"}})", "c.json"); }),
                   "not a Mamba-2 config"));
  REQUIRE(contains(error_of([] { Mamba2Config::from_json(R"({"d_model": 64, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba2"}})", "c.json"); }),
                   "c.json: missing required field 'n_layer'"));
  REQUIRE(contains(error_of([] { Mamba2Config::from_json(R"({"d_model": 64, "n_layer": 2, "vocab_size": 10})", "c.json"); }),
                   "missing 'ssm_cfg'"));
  REQUIRE(contains(error_of([] { Mamba2Config::from_json(R"({"d_model": 64, "n_layer": 2, "vocab_size": 10, "ssm_cfg": {}})", "c.json"); }),
                   "supports only Mamba2"));
  REQUIRE(contains(error_of([] { Mamba2Config::from_json(R"({"d_model": "big", "n_layer": 2, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba2"}})", "c.json"); }),
                   "field 'd_model' has the wrong type"));
  REQUIRE(contains(error_of([] { Mamba2Config::from_json(R"({"d_model": 60, "n_layer": 2, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba2"}})", "c.json"); }),
                   "not divisible by headdim"));
  REQUIRE(contains(error_of([] { Mamba2Config::from_json("{nope", "c.json"); }), "c.json: not valid JSON"));
  REQUIRE(contains(error_of([] { Mamba2Config::from_json(R"({"hidden_size": 64, "vocab_size": 10})", "hf.json"); }),
                   "missing required field 'num_hidden_layers' (HF transformers"));
  Mamba2Config c;
  REQUIRE(contains(error_of([&] { c.set("d_modle", "3"); }), "unknown model field 'd_modle'"));
  REQUIRE(contains(error_of([&] { c.set("d_model", "x"); }), "expected an integer"));
}
