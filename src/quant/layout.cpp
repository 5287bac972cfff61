#include "quant/layout.h"

#include <cmath>
#include <map>

#include "core/error.h"
#include "core/safetensors.h"

namespace dfssm::quant {

uint64_t PackedTensor::nbytes() const {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= uint64_t(d);
  return n;
}

std::vector<ProjSpec> projections(const Mamba2Config& cfg, const QuantConfig& q) {
  std::vector<ProjSpec> out;
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".mixer.";
    out.push_back({p + "in_proj", "in_proj", cfg.d_in_proj(), cfg.d_model, q.quantize_in_proj});
    out.push_back({p + "out_proj", "out_proj", cfg.d_model, cfg.d_inner(), q.quantize_out_proj});
  }
  return out;
}

std::vector<PackedTensor> projection_tensors(const ProjSpec& p, const QuantConfig& q) {
  const std::string& g = p.group;
  const int64_t n = p.rows * p.cols;
  if (!p.quantized) return {{p.prefix + ".weight", DType::F16, {p.rows, p.cols}, g, n}};
  const auto& f = q.fmt();
  std::vector<PackedTensor> t = {{p.prefix + ".codes", DType::U8, {p.rows, f.row_bytes(p.cols)}, g, n}};
  switch (f.id) {
    case FormatId::Binary:
    case FormatId::BinaryLowRank:
      t.push_back({p.prefix + ".field_a", DType::F16, {p.rows}, g, 0});
      t.push_back({p.prefix + ".field_b", DType::F16, {p.cols}, g, 0});
      break;
    case FormatId::Ternary:
      t.push_back({p.prefix + ".scale", DType::F16, {q.ternary_scale == "per_row" ? p.rows : 1}, g, 0});
      break;
    case FormatId::Int4:
      t.push_back({p.prefix + ".scale", DType::F16, {p.rows, (p.cols + q.int4_group - 1) / q.int4_group}, g, 0});
      break;
  }
  if (const int64_t r = q.effective_rank(); r > 0) {
    t.push_back({p.prefix + ".lr_u", DType::I8, {p.rows, r}, g, 0});
    t.push_back({p.prefix + ".lr_u_scale", DType::F16, {r}, g, 0});
    t.push_back({p.prefix + ".lr_v", DType::I8, {p.cols, r}, g, 0});
    t.push_back({p.prefix + ".lr_v_scale", DType::F16, {r}, g, 0});
  }
  return t;
}

namespace {
std::vector<PackedTensor> embedding_tensors(const std::string& prefix, int64_t rows, int64_t cols,
                                            const QuantConfig& q) {
  if (q.embedding == "fp16") return {{prefix + ".weight", DType::F16, {rows, cols}, "embedding", rows * cols}};
  return {{prefix + ".codes", DType::I8, {rows, cols}, "embedding", rows * cols},
          {prefix + ".scale", DType::F16, {rows}, "embedding", 0}};
}
}  // namespace

std::vector<PackedTensor> packed_layout(const Mamba2Config& cfg, const QuantConfig& q) {
  const DType small = q.small_dtype == "f32" ? DType::F32 : DType::F16;
  std::vector<PackedTensor> t = embedding_tensors("backbone.embedding", cfg.padded_vocab(), cfg.d_model, q);
  const auto projs = projections(cfg, q);
  const int64_t H = cfg.nheads();
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    const std::string l = "backbone.layers." + std::to_string(i) + ".";
    const std::string m = l + "mixer.";
    t.push_back({l + "norm.weight", small, {cfg.d_model}, "norms", cfg.d_model});
    for (auto& x : projection_tensors(projs[size_t(2 * i)], q)) t.push_back(x);
    t.push_back({m + "conv1d.weight", small, {cfg.conv_dim(), 1, cfg.d_conv}, "conv1d", cfg.conv_dim() * cfg.d_conv});
    if (cfg.conv_bias) t.push_back({m + "conv1d.bias", small, {cfg.conv_dim()}, "conv1d", cfg.conv_dim()});
    t.push_back({m + "dt_bias", DType::F32, {H}, "ssm", H});
    t.push_back({m + "A_log", DType::F32, {H}, "ssm", H});
    t.push_back({m + "D", DType::F32, {H}, "ssm", H});
    t.push_back({m + "norm.weight", small, {cfg.d_inner()}, "norms", cfg.d_inner()});
    for (auto& x : projection_tensors(projs[size_t(2 * i + 1)], q)) t.push_back(x);
  }
  t.push_back({"backbone.norm_f.weight", small, {cfg.d_model}, "norms", cfg.d_model});
  if (!cfg.tie_embeddings)
    for (auto& x : embedding_tensors("lm_head", cfg.padded_vocab(), cfg.d_model, q)) {
      x.group = "lm_head";
      t.push_back(x);
    }
  return t;
}

uint64_t packed_data_bytes(const std::vector<PackedTensor>& layout) {
  uint64_t n = 0;
  for (const auto& t : layout) n += t.nbytes();
  return n;
}

uint64_t packed_file_size(const std::vector<PackedTensor>& layout, const std::map<std::string, std::string>& metadata) {
  std::vector<TensorWrite> w;
  w.reserve(layout.size());
  for (const auto& t : layout) w.push_back({t.name, t.dtype, t.shape, nullptr, t.nbytes()});
  return safetensors_file_size(w, metadata);
}

std::vector<GroupSize> account(const std::vector<PackedTensor>& layout) {
  std::map<std::string, GroupSize> g;
  for (const auto& t : layout) {
    auto& s = g[t.group];
    s.group = t.group;
    s.tensors += 1;
    s.weights += t.weights;
    s.bytes += t.nbytes();
    s.fp16_bytes += uint64_t(t.weights) * 2;
  }
  std::vector<GroupSize> out;
  for (auto& [k, v] : g) out.push_back(v);
  return out;
}

std::map<std::string, std::string> basic_metadata(const Mamba2Config& cfg, const QuantConfig& q) {
  return {{"format", kFormatName}, {"format_version", std::to_string(kFormatVersion)},
          {"config", cfg.to_json()}, {"quant", q.to_json()}};
}

int64_t rank_for_budget(const Mamba2Config& cfg, QuantConfig q, uint64_t target_bytes) {
  int64_t best = 1;
  double best_err = INFINITY;
  for (int64_t r = 1; r <= 512; ++r) {
    q.rank = r;
    const double err = std::fabs(double(packed_file_size(packed_layout(cfg, q), basic_metadata(cfg, q))) - double(target_bytes));
    if (err < best_err) best_err = err, best = r;
  }
  return best;
}

}  // namespace dfssm::quant
