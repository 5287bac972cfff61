// The DF-SSM student in LibTorch: STE gradients against hand-computed values, initialisation
// error (SVID+SVD below sign-only, falling with rank), export exactness (the weight rebuilt
// from the packed file equals the training weight bit for bit), size accounting equal to the
// file size, checkpoint round trip, and malformed packed files.
#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>

#include <filesystem>

#include "catch_compat.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model_test_util.h"
#include "quant/layout.h"
#include "quant/packed_file.h"
#include "quant/student.h"
#include "test_util.h"

using namespace dfssm;
using namespace dfssm::quant;
using dfssm::test::contains;
using dfssm::test::error_of;
namespace fs = std::filesystem;

namespace {
std::string tmp_path(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("dfssm_test_quant_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return (d / name).string();
}

QuantConfig qc(const std::string& format, int64_t rank) {
  QuantConfig q;
  q.format = format;
  q.rank = rank;
  return q;
}

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::kFloat);
}

// The packed tensors of one projection read back from a file, as CPU tensors.
PackedParts parts_from(const PackedFile& f, const std::string& prefix) {
  PackedParts p;
  for (const auto& t : f.file().tensors()) {
    if (t.name.rfind(prefix + ".", 0) != 0) continue;
    auto x = at::from_blob(const_cast<uint8_t*>(f.file().data(t)), t.shape, to_scalar_type(t.dtype)).clone();
    p.emplace_back(t.name.substr(prefix.size() + 1), x);
  }
  return p;
}
}  // namespace

TEST_CASE("binary STE: gradients match hand-computed values", "[quant][ste]") {
  // 2x3 weight, one latent outside the clip window (its gradient must be 0).
  ScaffoldLinear L(2, 3, qc("binary", 0), at::kCPU);
  L.w_lat.copy_(at::tensor({0.5f, -0.25f, 1.5f, 0.0f, -0.75f, 0.1f}).view({2, 3}));
  L.field_a.copy_(at::tensor({2.0f, 0.5f}));
  L.field_b.copy_(at::tensor({1.0f, 0.25f, 4.0f}));
  for (auto& [n, p] : L.named_parameters()) p.requires_grad_(true);
  const auto x = at::tensor({1.0f, 2.0f, -1.0f, 0.5f, -1.0f, 3.0f}).view({2, 3});
  const auto g = at::tensor({1.0f, -2.0f, 0.5f, 3.0f}).view({2, 2});  // dL/dy
  (L.forward(x) * g).sum().backward();
  const float S[2][3] = {{1, -1, 1}, {1, -1, 1}}, W[2][3] = {{0.5f, -0.25f, 1.5f}, {0.0f, -0.75f, 0.1f}};
  const float a[2] = {2, 0.5f}, b[3] = {1, 0.25f, 4};
  const float X[2][3] = {{1, 2, -1}, {0.5f, -1, 3}}, G[2][2] = {{1, -2}, {0.5f, 3}};
  for (int o = 0; o < 2; ++o) {
    float ga = 0;
    for (int i = 0; i < 3; ++i) {
      float gw = 0;
      for (int n = 0; n < 2; ++n) gw += G[n][o] * a[o] * b[i] * X[n][i];
      if (std::fabs(W[o][i]) > 1.0f) gw = 0;  // clipped STE
      REQUIRE(L.w_lat.grad()[o][i].item<float>() == Approx(gw).margin(1e-6));
      for (int n = 0; n < 2; ++n) ga += G[n][o] * S[o][i] * b[i] * X[n][i];
    }
    REQUIRE(L.field_a.grad()[o].item<float>() == Approx(ga).margin(1e-5));
  }
  for (int i = 0; i < 3; ++i) {
    float gb = 0;
    for (int o = 0; o < 2; ++o)
      for (int n = 0; n < 2; ++n) gb += G[n][o] * a[o] * S[o][i] * X[n][i];
    REQUIRE(L.field_b.grad()[i].item<float>() == Approx(gb).margin(1e-5));
  }
}

TEST_CASE("low-rank fake quant: STE through round/clamp, exact scale gradient", "[quant][ste]") {
  ScaffoldLinear L(2, 2, qc("binary_lowrank", 1), at::kCPU);
  L.w_lat.fill_(0.5f);
  L.field_a.fill_(0.0f);  // isolate the low-rank term
  L.lr_u.copy_(at::tensor({3.4f, 200.0f}).view({2, 1}));  // second entry clamps to 127
  L.lr_v.copy_(at::tensor({-2.6f, 1.2f}).view({2, 1}));
  L.lr_u_scale.fill_(0.5f);
  L.lr_v_scale.fill_(0.25f);
  for (auto& [n, p] : L.named_parameters()) p.requires_grad_(true);
  const auto x = at::tensor({1.0f, 2.0f}).view({1, 2});
  const auto y = L.forward(x);
  // U_int = [3, 127], V_int = [-3, 1]; x·V_eff = (1*-3 + 2*1) * 0.25 = -0.25; y = U_int*0.5 * -0.25.
  REQUIRE(y[0][0].item<float>() == Approx(3 * 0.5 * -0.25).margin(1e-6));
  REQUIRE(y[0][1].item<float>() == Approx(127 * 0.5 * -0.25).margin(1e-6));
  y.sum().backward();
  REQUIRE(L.lr_u.grad()[0][0].item<float>() == Approx(0.5 * -0.25).margin(1e-6));
  REQUIRE(L.lr_u.grad()[1][0].item<float>() == 0.0f);  // clamped: no gradient
  REQUIRE(L.lr_u_scale.grad()[0].item<float>() == Approx((3 + 127) * -0.25).margin(1e-5));
  // dL/dv_k = sum_o dL/dy_o * U_eff[o] * s_v * x_k
  const double su = (3 + 127) * 0.5;
  REQUIRE(L.lr_v.grad()[0][0].item<float>() == Approx(su * 0.25 * 1.0).margin(1e-5));
  REQUIRE(L.lr_v.grad()[1][0].item<float>() == Approx(su * 0.25 * 2.0).margin(1e-5));
}

TEST_CASE("SVID+SVD init: below sign-only binarization, error falls with rank", "[quant][init]") {
  // A teacher-like matrix: noise plus row/column magnitude structure plus a low-rank part.
  const int64_t R = 192, C = 128;
  auto W = randn({R, C}, 1) * (at::rand({R, 1}) + 0.5) * (at::rand({1, C}) + 0.5) +
           at::matmul(randn({R, 6}, 2), randn({6, C}, 3)) * 0.3;
  const double wn = W.norm().item<double>();
  const double sign_only = (W - W.abs().mean() * at::where(W >= 0, 1.0f, -1.0f)).norm().item<double>() / wn;
  auto err = [&](const QuantConfig& q) {
    ScaffoldLinear L(R, C, q, at::kCPU);
    L.init_from(W, 7);
    at::NoGradGuard ng;
    return (W - L.effective_weight()).norm().item<double>() / wn;
  };
  const double svid = err(qc("binary", 0));
  WARN("sign-only " << sign_only << ", SVID " << svid);
  REQUIRE(svid < sign_only);
  double prev = svid;
  for (int64_t r : {1, 2, 4, 8, 16, 32}) {
    const double e = err(qc("binary_lowrank", r));
    WARN("rank " << r << ": " << e);
    REQUIRE(e < prev);
    prev = e;
  }
  REQUIRE(err(qc("int4", 0)) < err(qc("ternary", 0)));
}

TEST_CASE("export: the packed file rebuilds the training weights bit for bit", "[quant][export]") {
  auto cfg = Mamba2Config::geometry("test");
  cfg.d_model = 72;  // d_inner 144: rows not a multiple of 64 bits exercise padding
  cfg.headdim = 16;
  const auto teacher = dfssm::test::make_test_model(cfg, 11);
  std::vector<QuantConfig> qs = {qc("binary_lowrank", 5), qc("binary", 0), qc("ternary", 2), qc("int4", 0)};
  qs[2].ternary_scale = "per_tensor";
  qs[3].int4_group = 32;
  qs[3].quantize_out_proj = false;  // a dense fp16 projection in the file
  qs[1].embedding = "fp16";
  for (const auto& q : qs) {
    INFO(q.format);
    auto s = make_student(teacher, q, 3);
    // Train-like perturbation so the exported values are not the init's.
    {
      at::NoGradGuard ng;
      for (auto& [n, p] : s->model->named_parameters()) p.add_(randn(p.sizes().vec(), 5) * 0.01);
    }
    const auto path = tmp_path(q.format + ".dfssm.safetensors");
    const uint64_t size = export_packed(*s, path);
    REQUIRE(size == fs::file_size(path));
    // Size accounting equals the file size.
    REQUIRE(size == packed_file_size(packed_layout(cfg, q), packed_metadata(*s)));
    const auto f = PackedFile::open(path, /*check_codes=*/true);
    const auto specs = projections(cfg, q);
    const auto sc = s->scaffolds();
    at::NoGradGuard ng;
    for (size_t k = 0; k < specs.size(); ++k) {
      INFO(specs[k].prefix);
      const auto ref = f.dense_weight_ref(specs[k]);
      const auto ref_t = at::from_blob(const_cast<float*>(ref.data()), {specs[k].rows, specs[k].cols}, at::kFloat);
      if (!sc[k]) {  // dense: fp16 of the master weight
        REQUIRE(!specs[k].quantized);
        continue;
      }
      const auto w = sc[k]->effective_weight();
      REQUIRE(at::equal(ScaffoldLinear::unpack(parts_from(f, specs[k].prefix), specs[k].rows, specs[k].cols, q), w));
      REQUIRE(dfssm::test::rel_err(ref_t, w) < 1e-6);  // the scalar reader (fp64 low-rank sum)
    }
    // Embedding: the file's int8 rows are the training fake quant.
    const auto E = s->model->embedding_weight();
    for (int64_t tok : {int64_t(0), int64_t(7), cfg.padded_vocab() - 1}) {
      const auto row = f.embedding_row_ref(tok);
      REQUIRE(at::equal(at::from_blob(const_cast<float*>(row.data()), {cfg.d_model}, at::kFloat), E[tok]));
    }
  }
}

TEST_CASE("student checkpoint round trip, tokenizer embedding and provenance", "[quant][export]") {
  const auto cfg = Mamba2Config::geometry("test");
  const auto teacher = dfssm::test::make_test_model(cfg, 4);
  auto s = make_student(teacher, QuantConfig(), 1);
  s->meta["teacher_sha256"] = "abc123";
  s->meta["steps"] = "42";
  const auto dir = tmp_path("student");
  save_student(*s, dir);
  const auto back = load_student(dir);
  const auto a = s->model->named_parameters(), b = back->model->named_parameters();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(at::equal(a[i].second, b[i].second));
  REQUIRE(back->meta.at("steps") == "42");
  at::NoGradGuard ng;
  const auto ids = at::arange(0, 24, at::kLong).remainder(cfg.vocab_size).view({2, 12});
  REQUIRE(at::equal(s->model->forward(ids), back->model->forward(ids)));
  // Tokenizer bytes are embedded (base64) and provenance recorded.
  const auto tok = tmp_path("tok.model");
  write_file_atomic(tok, std::string("\x01\x02\x03sentencepiece", 16));
  back->meta["tokenizer_path"] = tok;
  back->meta["tokenizer_sha256"] = "feed";
  const auto path = tmp_path("prov.dfssm.safetensors");
  export_packed(*back, path);
  const auto f = PackedFile::open(path);
  REQUIRE(f.metadata().at("tokenizer_model") == "AQIDc2VudGVuY2VwaWVjZQ==");
  REQUIRE(contains(f.metadata().at("provenance"), "\"teacher_sha256\":\"abc123\""));
  REQUIRE(contains(f.metadata().at("provenance"), "\"steps\":\"42\""));
  REQUIRE(f.metadata().at("tokenizer_sha256") == "feed");
}

TEST_CASE("malformed packed files are rejected with clear errors", "[quant][errors]") {
  const auto cfg = Mamba2Config::geometry("test");
  const auto teacher = dfssm::test::make_test_model(cfg, 9);
  const auto s = make_student(teacher, QuantConfig(), 2);
  const auto good = tmp_path("good.dfssm.safetensors");
  export_packed(*s, good);
  // Rewrites the good file through `edit` (tensors and metadata) into `bad`.
  const auto bad = tmp_path("bad.dfssm.safetensors");
  auto rewrite = [&](const std::function<void(std::vector<TensorWrite>&, std::map<std::string, std::string>&)>& edit) {
    const auto f = SafeTensorsFile::open(good);
    std::vector<TensorWrite> w;
    for (const auto& t : f.tensors()) w.push_back({t.name, t.dtype, t.shape, f.data(t), size_t(t.nbytes())});
    auto meta = f.metadata();
    edit(w, meta);
    write_safetensors(bad, w, meta);
  };
  SECTION("wrong version") {
    rewrite([](auto&, auto& m) { m["format_version"] = "2"; });
    REQUIRE(contains(error_of([&] { PackedFile::open(bad); }), "packed format version 2 is not supported"));
  }
  SECTION("not a packed file") {
    rewrite([](auto&, auto& m) { m.erase("format"); });
    REQUIRE(contains(error_of([&] { PackedFile::open(bad); }), "not a dfssm packed file"));
  }
  SECTION("missing tensor") {
    rewrite([](auto& w, auto&) {
      w.erase(std::remove_if(w.begin(), w.end(), [](auto& t) { return t.name == "backbone.layers.1.mixer.in_proj.lr_v"; }),
              w.end());
    });
    REQUIRE(contains(error_of([&] { PackedFile::open(bad); }), "missing tensor 'backbone.layers.1.mixer.in_proj.lr_v'"));
  }
  SECTION("wrong packed length") {
    std::vector<uint8_t> junk(1 << 16, 0);
    rewrite([&](auto& w, auto&) {
      for (auto& t : w)
        if (t.name == "backbone.layers.0.mixer.out_proj.codes") t = {t.name, DType::U8, {t.shape[0], t.shape[1] - 8},
                                                                       junk.data(), size_t(t.shape[0] * (t.shape[1] - 8))};
    });
    const auto e = error_of([&] { PackedFile::open(bad); });
    REQUIRE(contains(e, "tensor 'backbone.layers.0.mixer.out_proj.codes' has shape"));
    REQUIRE(contains(e, "(wrong packed length)"));
  }
  SECTION("wrong dtype") {
    rewrite([](auto& w, auto&) {
      for (auto& t : w)
        if (t.name == "backbone.embedding.codes") t.dtype = DType::U8;
    });
    REQUIRE(contains(error_of([&] { PackedFile::open(bad); }), "'backbone.embedding.codes' has dtype U8, expected I8"));
  }
  SECTION("unexpected tensor") {
    float x = 0;
    rewrite([&](auto& w, auto&) { w.push_back({"backbone.extra", DType::F32, {1}, &x, 4}); });
    REQUIRE(contains(error_of([&] { PackedFile::open(bad); }), "unexpected tensor 'backbone.extra'"));
  }
  SECTION("bad quant metadata") {
    rewrite([](auto&, auto& m) { m["quant"] = R"({"format": "binary9"})"; });
    REQUIRE(contains(error_of([&] { PackedFile::open(bad); }), "unknown quant format 'binary9'"));
  }
  SECTION("truncated file") {
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    fs::resize_file(bad, fs::file_size(bad) - 10);
    REQUIRE(!error_of([&] { PackedFile::open(bad); }).empty());
  }
}
