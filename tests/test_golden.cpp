// Golden test against HF transformers' Mamba2ForCausalLM (torch path, fp32). The data is
// generated at test time by tests/golden/make_golden.py (ctest fixture golden_data_g*):
// random weights, ngroups 1 and 2 (the reference groups the gated norm as mamba_ssm does).
// Both checkpoint layouts are loaded: HF safetensors and mamba_ssm's pytorch_model.bin.
#include <filesystem>

#include "catch_compat.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model_test_util.h"

using namespace dfssm;
using dfssm::test::rel_err;

namespace {
at::Tensor read_tensor(const SafeTensorsFile& f, const std::string& name) {
  const auto& t = f.get(name);
  return at::from_blob(const_cast<uint8_t*>(f.data(t)), t.shape, at::TensorOptions().dtype(to_scalar_type(t.dtype)))
      .clone();
}
}  // namespace

TEST_CASE("logits match HF transformers within 1e-4 relative L2", "[golden]") {
  for (const char* g : {"g1", "g2"}) {
    const std::string dir = std::string(DFSSM_GOLDEN_DIR) + "/" + g;
    INFO("golden set " << dir);
    REQUIRE(std::filesystem::exists(dir + "/golden.safetensors"));
    const auto gold = SafeTensorsFile::open(dir + "/golden.safetensors");
    const auto ids = read_tensor(gold, "input_ids");
    const auto ref = read_tensor(gold, "logits");
    for (const char* layout : {"hf", "mamba_ssm"}) {
      INFO("layout " << layout);
      const auto model = load_model(dir + "/" + layout);
      at::NoGradGuard ng;
      const auto logits = model->forward(ids);
      const double err = rel_err(logits, ref);
      WARN(g << " " << layout << " full forward rel err " << err);
      REQUIRE(err < 1e-4);
      if (gold.find("decode_logits")) {
        // HF's own cached decode: prefill 20 tokens, then one token at a time.
        const auto dref = read_tensor(gold, "decode_logits");
        auto st = model->new_state(ids.size(0));
        model->forward(ids.narrow(1, 0, 20), &st);
        std::vector<at::Tensor> out;
        for (int64_t t = 20; t < ids.size(1); ++t) out.push_back(model->step(ids.select(1, t), st));
        const double derr = rel_err(at::stack(out, 1), dref);
        WARN(g << " " << layout << " decode rel err " << derr);
        REQUIRE(derr < 1e-4);
      }
    }
  }
}
