// Checkpoint save/load: exact round trip, dtype conversion, and clear errors on bad input.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "catch_compat.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/checkpoint_files.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace dfssm;
using dfssm::test::contains;
using dfssm::test::error_of;
using dfssm::test::make_test_model;
namespace fs = std::filesystem;

namespace {
std::string tmp_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("dfssm_test_ckpt_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// Rewrites <dir>/model.safetensors through `edit` (which may drop/rename/replace tensors).
void rewrite(const std::string& dir, const std::function<void(std::vector<TensorWrite>&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  std::vector<std::string> blobs;
  std::vector<TensorWrite> w;
  {
    const auto f = SafeTensorsFile::open(path);
    for (const auto& t : f.tensors()) {
      blobs.emplace_back(reinterpret_cast<const char*>(f.data(t)), t.nbytes());
      w.push_back({t.name, t.dtype, t.shape, nullptr, t.nbytes()});
    }
    for (size_t i = 0; i < w.size(); ++i) w[i].data = blobs[i].data();
  }
  edit(w);
  write_safetensors(path, w);
}
}  // namespace

TEST_CASE("save then load is bit-exact and gives identical logits", "[checkpoint]") {
  auto cfg = Mamba2Config::geometry("test");
  const auto model = make_test_model(cfg, 21);
  const auto dir = tmp_dir("rt");
  save_model(model, dir);
  const auto loaded = load_model(dir);
  REQUIRE(loaded->config().to_json() == cfg.to_json());
  const auto a = model.named_parameters(), b = loaded->named_parameters();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    REQUIRE(a[i].first == b[i].first);
    REQUIRE(at::equal(a[i].second, b[i].second));
  }
  at::NoGradGuard ng;
  const auto ids = at::arange(0, 30, at::kLong).remainder(cfg.vocab_size).view({2, 15});
  REQUIRE(at::equal(model.forward(ids), loaded->forward(ids)));
  // The weights file alone also loads: config from its metadata.
  REQUIRE(read_checkpoint_config(CheckpointFiles{dir + "/model.safetensors", "", CheckpointFiles::Format::Safetensors})
              .to_json() == cfg.to_json());
}

TEST_CASE("loading into fp16 and bf16 converts every weight", "[checkpoint]") {
  const auto model = make_test_model(Mamba2Config::geometry("test"), 5);
  const auto dir = tmp_dir("dtype");
  save_model(model, dir);
  for (auto dt : {at::kHalf, at::kBFloat16}) {
    const auto m = load_model(dir, dt);
    REQUIRE(m->embedding.scalar_type() == dt);
    REQUIRE(m->layers[0].mixer.D.scalar_type() == at::kFloat);  // SSM scalars stay fp32
    REQUIRE(at::equal(m->embedding, model.embedding.to(dt)));
  }
}

TEST_CASE("bad checkpoints give errors naming the file and tensor", "[checkpoint][errors]") {
  const auto model = make_test_model(Mamba2Config::geometry("test"), 8);
  const auto dir = tmp_dir("bad");
  auto fresh = [&] { save_model(model, dir); };

  SECTION("missing tensor") {
    fresh();
    rewrite(dir, [](auto& w) {
      w.erase(std::remove_if(w.begin(), w.end(), [](auto& t) { return t.name == "backbone.layers.1.mixer.A_log"; }),
              w.end());
    });
    const auto e = error_of([&] { load_model(dir); });
    REQUIRE(contains(e, "model.safetensors: missing 1 tensor(s): backbone.layers.1.mixer.A_log"));
  }
  SECTION("wrong shape") {
    fresh();
    std::vector<float> junk(5, 0.f);
    rewrite(dir, [&](auto& w) {
      for (auto& t : w)
        if (t.name == "backbone.norm_f.weight") t = {t.name, DType::F32, {5}, junk.data(), 20};
    });
    const auto e = error_of([&] { load_model(dir); });
    REQUIRE(contains(e, "tensor 'backbone.norm_f.weight' has shape [5], expected [64]"));
  }
  SECTION("unexpected tensor") {
    fresh();
    std::vector<float> x(1, 0.f);
    rewrite(dir, [&](auto& w) { w.push_back({"backbone.layers.9.mixer.A_log", DType::F32, {1}, x.data(), 4}); });
    REQUIRE(contains(error_of([&] { load_model(dir); }), "unexpected tensor(s)"));
  }
  SECTION("integer weights") {
    fresh();
    std::vector<int32_t> x(64, 0);
    rewrite(dir, [&](auto& w) {
      for (auto& t : w)
        if (t.name == "backbone.norm_f.weight") t = {t.name, DType::I32, {64}, x.data(), 256};
    });
    REQUIRE(contains(error_of([&] { load_model(dir); }), "has dtype I32"));
  }
  SECTION("config.json missing a field") {
    fresh();
    std::ofstream(dir + "/config.json") << R"({"d_model": 64, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2"}})";
    REQUIRE(contains(error_of([&] { load_model(dir); }), "config.json: missing required field 'n_layer'"));
  }
  SECTION("config.json that disagrees with the weights") {
    fresh();
    auto cfg = model.config();
    cfg.d_state = 32;
    std::ofstream(dir + "/config.json") << cfg.to_json();
    REQUIRE(contains(error_of([&] { load_model(dir); }), "does config.json match the weights?"));
  }
  SECTION("truncated weights") {
    fresh();
    fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 100);
    REQUIRE(contains(error_of([&] { load_model(dir); }), "truncated"));
  }
  SECTION("empty directory") {
    const auto e = error_of([&] { load_model(tmp_dir("empty")); });
    REQUIRE(contains(e, "no model.safetensors or pytorch_model.bin"));
  }
}
