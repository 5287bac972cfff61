#include "quant/student.h"

#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/io_util.h"
#include "dfssm_git_rev.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "quant/layout.h"


namespace fs = std::filesystem;

namespace dfssm::quant {

namespace {
const std::string kStudentFile = "student.safetensors";

std::shared_ptr<LinearLayer>& proj_slot(Mamba2Model& m, size_t k) {
  auto& mixer = m.layers[k / 2].mixer;
  return k % 2 == 0 ? mixer.in_proj : mixer.out_proj;
}

void install_embedding_fake_quant(Mamba2Model& m, const QuantConfig& q) {
  if (q.embedding == "int8") m.embedding_transform = [](const at::Tensor& e) { return fake_int8_rows(e); };
  else m.embedding_transform = [](const at::Tensor& e) { return fake_fp16(e); };
}

}  // namespace

std::vector<std::shared_ptr<ScaffoldLinear>> Student::scaffolds() const {
  std::vector<std::shared_ptr<ScaffoldLinear>> out;
  for (size_t k = 0; k < model->layers.size() * 2; ++k)
    out.push_back(std::dynamic_pointer_cast<ScaffoldLinear>(proj_slot(*model, k)));
  return out;
}

std::unique_ptr<Student> empty_student(const Mamba2Config& cfg, const QuantConfig& q, at::Device device) {
  q.validate("quant config");
  auto s = std::make_unique<Student>();
  s->quant = q;
  s->model = std::make_unique<Mamba2Model>(cfg, at::TensorOptions().dtype(at::kFloat).device(device));
  const auto specs = projections(cfg, q);
  for (size_t k = 0; k < specs.size(); ++k)
    if (specs[k].quantized) proj_slot(*s->model, k) = std::make_shared<ScaffoldLinear>(specs[k].rows, specs[k].cols, q, device);
  install_embedding_fake_quant(*s->model, q);
  return s;
}

std::unique_ptr<Student> make_student(const Mamba2Model& teacher, const QuantConfig& q, uint64_t seed, at::Device device) {
  const auto& cfg = teacher.config();
  auto s = std::make_unique<Student>();
  s->quant = q;
  s->model = std::make_unique<Mamba2Model>(cfg, at::TensorOptions().dtype(at::kFloat).device(device));
  at::NoGradGuard ng;
  {  // every parameter as fp32, projections included (replaced below)
    const auto src = teacher.named_parameters();
    const auto dst = s->model->named_parameters();
    DFSSM_ASSERT(src.size() == dst.size(), "teacher/student parameter lists differ");
    for (size_t i = 0; i < src.size(); ++i) dst[i].second.copy_(src[i].second);
  }
  const auto specs = projections(cfg, q);
  for (size_t k = 0; k < specs.size(); ++k) {
    if (!specs[k].quantized) continue;
    auto layer = std::make_shared<ScaffoldLinear>(specs[k].rows, specs[k].cols, q, device);
    const auto* dense = dynamic_cast<const DenseLinear*>(proj_slot(*s->model, k).get());
    DFSSM_ASSERT(dense, "student projection ", specs[k].prefix, " is not dense before init");
    layer->init_from(dense->weight, seed * 100003 + k);
    proj_slot(*s->model, k) = layer;
  }
  install_embedding_fake_quant(*s->model, q);
  return s;
}

void save_student(const Student& s, const std::string& dir) {
  fs::create_directories(dir);
  std::vector<at::Tensor> keep;
  std::vector<TensorWrite> writes;
  for (auto& [key, t] : s.model->named_parameters()) {
    keep.push_back(t.detach().to(at::kCPU, at::kFloat).contiguous());
    const auto& c = keep.back();
    writes.push_back({key, DType::F32, c.sizes().vec(), c.data_ptr(), size_t(c.nbytes())});
  }
  auto meta = s.meta;
  meta["format"] = "dfssm-student";
  meta["config"] = s.model->config().to_json();
  meta["quant"] = s.quant.to_json();
  write_file_atomic((fs::path(dir) / "config.json").string(), s.model->config().to_json());
  write_file_atomic((fs::path(dir) / "quant.json").string(), s.quant.to_json());
  write_safetensors((fs::path(dir) / kStudentFile).string(), writes, meta);
}

std::unique_ptr<Student> load_student(const std::string& dir, at::Device device) {
  const auto weights = (fs::path(dir) / kStudentFile).string();
  DFSSM_CHECK(fs::exists(weights), dir, ": not a student checkpoint (no ", kStudentFile,
              "); create one with `dfssm quantize <teacher> -o DIR` or the trainer");
  const auto cfg = Mamba2Config::from_file((fs::path(dir) / "config.json").string());
  const auto qpath = (fs::path(dir) / "quant.json").string();
  DFSSM_CHECK(fs::exists(qpath), dir, ": missing quant.json");
  const auto q = QuantConfig::from_json(read_text_file(qpath), qpath);
  auto s = empty_student(cfg, q, device);
  const auto f = SafeTensorsFile::open(weights);
  std::set<std::string> seen;
  at::NoGradGuard ng;
  for (auto& [key, t] : s->model->named_parameters()) {
    const auto& ti = f.require(key, t.sizes().vec(), DType::F32);
    seen.insert(key);
    auto src = at::from_blob(const_cast<uint8_t*>(f.data(ti)), t.sizes(), at::kFloat);
    t.copy_(src);
  }
  for (const auto& ti : f.tensors())
    DFSSM_CHECK(seen.count(ti.name), weights, ": unexpected tensor '", ti.name,
                "' (does quant.json match the weights?)");
  for (auto& [k, v] : f.metadata())
    if (k != "format" && k != "config" && k != "quant") s->meta[k] = v;
  return s;
}

double projection_error(const Student& s, const Mamba2Model& teacher) {
  at::NoGradGuard ng;
  double num = 0, den = 0;
  const auto sc = s.scaffolds();
  for (size_t k = 0; k < sc.size(); ++k) {
    if (!sc[k]) continue;
    const auto* dense = dynamic_cast<const DenseLinear*>(k % 2 == 0 ? teacher.layers[k / 2].mixer.in_proj.get()
                                                                    : teacher.layers[k / 2].mixer.out_proj.get());
    DFSSM_CHECK(dense, "teacher projection is not dense");
    const auto W = dense->weight.to(sc[k]->w_lat.device(), at::kFloat);
    num += (W - sc[k]->effective_weight()).pow(2).sum().item<double>();
    den += W.pow(2).sum().item<double>();
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

std::map<std::string, std::string> packed_metadata(const Student& s) {
  nlohmann::ordered_json prov;
  for (const char* k : {"teacher_sha256", "tokens_seen", "steps"})
    prov[k] = s.meta.count(k) ? s.meta.at(k) : std::string();
  prov["dfssm_git"] = DFSSM_GIT_REV;
  std::map<std::string, std::string> m;
  m["format"] = kFormatName;
  m["format_version"] = std::to_string(kFormatVersion);
  m["config"] = s.model->config().to_json();
  m["quant"] = s.quant.to_json();
  m["provenance"] = prov.dump();
  m["tokenizer_sha256"] = s.meta.count("tokenizer_sha256") ? s.meta.at("tokenizer_sha256") : "";
  if (s.meta.count("tokenizer_path") && !s.meta.at("tokenizer_path").empty()) {
    const auto& p = s.meta.at("tokenizer_path");
    DFSSM_CHECK(fs::exists(p), "tokenizer model '", p, "' not found (pass --tokenizer with an existing .model)");
    m["tokenizer_model"] = base64_encode(read_text_file(p));
  }
  return m;
}

namespace {
at::Tensor half_from_bits(const std::vector<uint16_t>& bits) {
  auto t = at::empty({int64_t(bits.size())}, at::kHalf);
  std::memcpy(t.data_ptr(), bits.data(), bits.size() * 2);
  return t;
}

// name -> CPU tensor in file dtype, for every tensor of the layout.
std::map<std::string, at::Tensor> packed_tensors(const Student& s) {
  at::NoGradGuard ng;
  const auto& q = s.quant;
  const auto& m = *s.model;
  const auto small = q.small_dtype == "f32" ? at::kFloat : at::kHalf;
  std::map<std::string, at::Tensor> out;
  auto embed = [&](const std::string& prefix, const at::Tensor& w) {
    const auto e = w.detach().to(at::kCPU, at::kFloat).contiguous();
    if (q.embedding == "fp16") {
      out[prefix + ".weight"] = e.to(at::kHalf);
      return;
    }
    auto codes = at::empty(e.sizes(), at::kChar);
    std::vector<uint16_t> scales(size_t(e.size(0)));
    quantize_int8_rows(e.data_ptr<float>(), e.size(0), e.size(1), codes.data_ptr<int8_t>(), scales.data());
    out[prefix + ".codes"] = codes;
    out[prefix + ".scale"] = half_from_bits(scales);
  };
  embed("backbone.embedding", m.embedding);
  if (m.lm_head.defined()) embed("lm_head", m.lm_head);
  for (auto& [key, t] : m.named_parameters()) {
    if (key.find("_proj.") != std::string::npos || key.find("embedding") != std::string::npos || key == "lm_head.weight")
      continue;
    const bool ssm = key.size() > 2 && (key.rfind(".D") == key.size() - 2 || key.find("A_log") != std::string::npos ||
                                         key.find("dt_bias") != std::string::npos);
    out[key] = t.detach().to(at::kCPU, ssm ? at::kFloat : small).contiguous();
  }
  const auto specs = projections(m.config(), q);
  const auto sc = s.scaffolds();
  for (size_t k = 0; k < specs.size(); ++k) {
    if (!sc[k]) {
      const auto* d = dynamic_cast<const DenseLinear*>(proj_slot(const_cast<Mamba2Model&>(m), k).get());
      DFSSM_ASSERT(d, "dense projection expected at ", specs[k].prefix);
      out[specs[k].prefix + ".weight"] = d->weight.detach().to(at::kCPU, at::kHalf).contiguous();
      continue;
    }
    for (auto& [n, t] : sc[k]->pack()) out[specs[k].prefix + "." + n] = t;
  }
  return out;
}
}  // namespace

uint64_t export_packed(const Student& s, const std::string& path) {
  const auto layout = packed_layout(s.model->config(), s.quant);
  auto tensors = packed_tensors(s);
  std::vector<TensorWrite> writes;
  for (const auto& spec : layout) {
    auto it = tensors.find(spec.name);
    DFSSM_ASSERT(it != tensors.end(), "exporter produced no tensor for layout entry ", spec.name);
    const auto& t = it->second;
    DFSSM_ASSERT(to_dtype(t.scalar_type()) == spec.dtype && t.sizes().vec() == spec.shape, "tensor ", spec.name,
                 " has ", c10::toString(t.scalar_type()), " ", t.sizes(), ", layout says ", dtype_name(spec.dtype), " ",
                 shape_str(spec.shape));
    writes.push_back({spec.name, spec.dtype, spec.shape, t.data_ptr(), size_t(t.nbytes())});
  }
  DFSSM_ASSERT(tensors.size() == layout.size(), "exporter produced ", tensors.size(), " tensors, layout has ",
               layout.size());
  const auto meta = packed_metadata(s);
  write_safetensors(path, writes, meta);
  return fs::file_size(path);
}

}  // namespace dfssm::quant
