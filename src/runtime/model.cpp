#include "runtime/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/format.h"
#include "quant/layout.h"
#include "quant/packed_file.h"

namespace dfssm::runtime {

// Where tensor bytes come from: the mapped file or in-memory buffers laid out like it.
struct Model::Source {
  std::map<std::string, std::pair<const uint8_t*, const quant::PackedTensor*>> tensors;
  const quant::PackedFile* file = nullptr;

  const uint8_t* data(const std::string& name) const {
    auto it = tensors.find(name);
    DFSSM_ASSERT(it != tensors.end(), "runtime: tensor ", name, " not in the layout");
    return it->second.first;
  }
  DType dtype(const std::string& name) const { return tensors.at(name).second->dtype; }
  // Any F16/F32 tensor as fp32.
  std::vector<float> floats(const std::string& name) const {
    const auto& [p, t] = tensors.at(name);
    return floats_from(p, t->dtype, size_t(t->nbytes() / dtype_size(t->dtype)), name);
  }
};

Model::~Model() = default;

namespace {
template <class T>
const T* aligned_or_copy(const uint8_t* p, uint64_t nbytes, std::vector<std::vector<uint8_t>>& owned) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) == 0) return reinterpret_cast<const T*>(p);
  owned.emplace_back(p, p + nbytes);  // safetensors offsets need not be aligned: copy once
  return reinterpret_cast<const T*>(owned.back().data());
}
}  // namespace

void Model::build(const Source& src) {
  const auto& c = cfg_;
  const int64_t d = c.d_model, V = c.padded_vocab(), K = c.d_conv, D = c.conv_dim(), H = c.nheads();
  const bool f16_embed = q_.embedding == "fp16";
  auto embedding = [&](const std::string& prefix) {
    EmbeddingTable e;
    if (f16_embed) {
      e.w16 = aligned_or_copy<uint16_t>(src.data(prefix + ".weight"), uint64_t(V * d * 2), owned_);
    } else {
      e.codes = reinterpret_cast<const int8_t*>(src.data(prefix + ".codes"));
      e.scale = src.floats(prefix + ".scale");
    }
    return e;
  };
  embed_ = embedding("backbone.embedding");
  if (!c.tie_embeddings) lm_head_ = embedding("lm_head");
  norm_f_ = src.floats("backbone.norm_f.weight");

  const auto specs = quant::projections(c, q_);
  const auto& fmt = q_.fmt();
  const int64_t rank = q_.effective_rank();
  uint64_t bytes = f16_embed ? uint64_t(V * d * 2) : uint64_t(V * d + V * 4);  // LM head
  bytes += uint64_t(d * (f16_embed ? 2 : 1));                                  // one embedding row
  auto projection = [&](const quant::ProjSpec& s) {
    Projection p;
    p.rows = s.rows;
    p.cols = s.cols;
    if (s.quantized && fmt.field) {
      p.kind = Projection::Kind::Binary;
      p.codes = src.data(s.prefix + ".codes");
      p.row_bytes = fmt.row_bytes(s.cols);
      p.a = src.floats(s.prefix + ".field_a");
      p.b = src.floats(s.prefix + ".field_b");
      p.rank = rank;
      if (rank > 0) {
        p.u = reinterpret_cast<const int8_t*>(src.data(s.prefix + ".lr_u"));
        p.v = reinterpret_cast<const int8_t*>(src.data(s.prefix + ".lr_v"));
        p.us = src.floats(s.prefix + ".lr_u_scale");
        p.vs = src.floats(s.prefix + ".lr_v_scale");
      }
      bytes += uint64_t(p.rows * p.row_bytes + 4 * (p.rows + p.cols) + rank * (p.rows + p.cols) + 8 * rank);
    } else if (s.quantized) {
      // ternary / int4: no packed kernel yet; expand once to fp16 rows (low-rank included).
      DFSSM_CHECK(src.file, "the random model supports the binary formats only (got ", q_.format, ")");
      const auto w = src.file->dense_weight_ref(s);
      owned_.emplace_back(w.size() * 2);
      auto* w16 = reinterpret_cast<uint16_t*>(owned_.back().data());
      for (size_t i = 0; i < w.size(); ++i) w16[i] = float_to_half(w[i]);
      p.kind = Projection::Kind::DenseF16;
      p.w16 = w16;
      bytes += uint64_t(p.rows * p.cols * 2);
    } else {
      p.kind = Projection::Kind::DenseF16;
      p.w16 = aligned_or_copy<uint16_t>(src.data(s.prefix + ".weight"), uint64_t(s.rows * s.cols * 2), owned_);
      bytes += uint64_t(p.rows * p.cols * 2);
    }
    return p;
  };

  layers_.resize(size_t(c.n_layer));
  for (int64_t i = 0; i < c.n_layer; ++i) {
    auto& L = layers_[size_t(i)];
    const std::string l = "backbone.layers." + std::to_string(i) + ".", m = l + "mixer.";
    L.norm = src.floats(l + "norm.weight");
    L.in_proj = projection(specs[size_t(2 * i)]);
    const auto w = src.floats(m + "conv1d.weight");  // [D, 1, K] -> tap-major [K, D]
    L.conv_w.resize(size_t(K * D));
    for (int64_t ch = 0; ch < D; ++ch)
      for (int64_t k = 0; k < K; ++k) L.conv_w[size_t(k * D + ch)] = w[size_t(ch * K + k)];
    if (c.conv_bias) L.conv_b = src.floats(m + "conv1d.bias");
    L.dt_bias = src.floats(m + "dt_bias");
    L.A = src.floats(m + "A_log");
    for (auto& a : L.A) a = -std::exp(a);
    L.D = src.floats(m + "D");
    L.gnorm = src.floats(m + "norm.weight");
    L.out_proj = projection(specs[size_t(2 * i + 1)]);
    bytes += uint64_t(4 * (d + K * D + (c.conv_bias ? D : 0) + 3 * H + c.d_inner()));
  }
  bytes += uint64_t(4 * d);
  bytes_per_token_ = bytes;
}

std::shared_ptr<Model> Model::load(const std::string& path, const LoadOptions& opt) {
  std::shared_ptr<Model> m(new Model());
  m->file_ = std::make_unique<quant::PackedFile>(quant::PackedFile::open(path, opt.verify_codes));
  m->cfg_ = m->file_->config();
  m->q_ = m->file_->quant();
  m->meta_ = m->file_->metadata();
  m->source_ = path;
  Source src;
  src.file = m->file_.get();
  for (const auto& t : m->file_->layout()) src.tensors[t.name] = {m->file_->data(t.name), &t};
  m->build(src);
  return m;
}

namespace {
// splitmix64: fast, seedable, good enough to fill weights.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) / float(1 << 24); }  // [0, 1)
};

void fill_half(uint8_t* p, int64_t n, const std::function<float()>& f) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = float_to_half(f());
    std::memcpy(p + 2 * i, &h, 2);
  }
}
void fill_f32(uint8_t* p, int64_t n, const std::function<float()>& f) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = f();
    std::memcpy(p + 4 * i, &v, 4);
  }
}
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

std::shared_ptr<Model> Model::random(const Mamba2Config& cfg, const quant::QuantConfig& q, uint64_t seed) {
  cfg.validate("random model");
  q.validate("random model");
  DFSSM_CHECK(q.fmt().field, "--random supports the binary formats only (got format=", q.format, ")");
  std::shared_ptr<Model> m(new Model());
  m->cfg_ = cfg;
  m->q_ = q;
  m->meta_ = quant::basic_metadata(cfg, q);
  m->source_ = "random";
  const auto layout = quant::packed_layout(cfg, q);
  Rng rng{seed * 0x2545f4914f6cdd1dull + 1};
  const int64_t r = std::max<int64_t>(1, q.effective_rank());
  Source src;
  for (const auto& t : layout) {  // Source points into `layout`, alive until build() returns
    m->owned_.emplace_back(t.nbytes());
    uint8_t* p = m->owned_.back().data();
    const int64_t n = int64_t(t.nbytes() / dtype_size(t.dtype));
    const bool out_proj = t.name.find("out_proj") != std::string::npos;
    const double fan_in = double(out_proj ? cfg.d_inner() : cfg.d_model);
    // mean |W| of mamba_ssm's init: U(-1/sqrt(fan_in), ..), out_proj also / sqrt(n_layer).
    const double wabs = 0.5 / std::sqrt(fan_in) / (out_proj ? std::sqrt(double(cfg.n_layer)) : 1.0);
    if (ends_with(t.name, ".codes") && t.dtype == DType::U8) {
      // Random sign bits, 8 bytes per draw; the pad bits past `cols` must stay 0 (format.md).
      const int64_t cols = t.name.find("in_proj") != std::string::npos ? cfg.d_model : cfg.d_inner();
      const int64_t rb = t.shape[1];
      for (int64_t i = 0; i < t.shape[0]; ++i) {
        uint8_t* row = p + i * rb;
        for (int64_t j = 0; j < rb; j += 8) {
          const uint64_t w = rng.next();
          std::memcpy(row + j, &w, 8);
        }
        for (int64_t c = cols; c < rb * 8; ++c) row[c >> 3] &= uint8_t(~(1u << (c & 7)));
      }
    } else if (t.dtype == DType::I8) {  // int8 codes in [-127, 127]: embedding, low-rank factors
      for (int64_t i = 0; i < n; i += 8) {
        uint64_t w = rng.next();
        for (int64_t j = i; j < std::min(n, i + 8); ++j, w >>= 8) p[j] = uint8_t(int8_t(int(w & 0xff) % 255 - 127));
      }
    } else if (ends_with(t.name, "field_a") || ends_with(t.name, "field_b")) {
      fill_half(p, n, [&] { return float(std::sqrt(wabs) * (0.8 + 0.4 * rng.uniform())); });
    } else if (ends_with(t.name, "lr_u_scale") || ends_with(t.name, "lr_v_scale")) {
      // Low-rank term ~10% of |W|: sqrt(r) * 73^2 * us * vs = 0.1 * wabs.
      fill_half(p, n, [&] { return float(std::sqrt(0.1 * wabs / (std::sqrt(double(r)) * 73.0 * 73.0))); });
    } else if (ends_with(t.name, "embedding.scale") || ends_with(t.name, "lm_head.scale")) {
      fill_half(p, n, [&] { return 0.02f / 73.f; });  // rows ~ N(0, 0.02) as in the init
    } else if (ends_with(t.name, "conv1d.weight") || ends_with(t.name, "conv1d.bias")) {
      const float b = float(1.0 / std::sqrt(double(cfg.d_conv)));
      auto f = [&] { return (2 * rng.uniform() - 1) * b; };
      t.dtype == DType::F16 ? fill_half(p, n, f) : fill_f32(p, n, f);
    } else if (ends_with(t.name, "dt_bias")) {
      fill_f32(p, n, [&] {
        const double dt = std::exp(std::log(cfg.dt_min) + rng.uniform() * (std::log(cfg.dt_max) - std::log(cfg.dt_min)));
        return float(dt + std::log(-std::expm1(-dt)));
      });
    } else if (ends_with(t.name, "A_log")) {
      fill_f32(p, n, [&] { return float(std::log(cfg.A_init_min + rng.uniform() * (cfg.A_init_max - cfg.A_init_min))); });
    } else {  // D, norms: ones
      t.dtype == DType::F16 ? fill_half(p, n, [] { return 1.f; }) : fill_f32(p, n, [] { return 1.f; });
    }
    src.tensors[t.name] = {p, &t};
  }
  m->build(src);
  return m;
}

std::shared_ptr<Model> Model::first_layers(const std::shared_ptr<const Model>& m, int64_t k) {
  DFSSM_CHECK(m && k >= 1 && k <= m->cfg_.n_layer, "first_layers: k = ", k, " outside [1, n_layer]");
  std::shared_ptr<Model> t(new Model());
  t->cfg_ = m->cfg_;
  t->cfg_.n_layer = k;
  t->q_ = m->q_;
  t->meta_ = m->meta_;
  t->source_ = m->source_ + " (first " + std::to_string(k) + " layers)";
  t->layers_.assign(m->layers_.begin(), m->layers_.begin() + k);
  t->embed_ = m->embed_;
  t->lm_head_ = m->lm_head_;
  t->norm_f_ = m->norm_f_;
  t->bytes_per_token_ = m->bytes_per_token_;
  t->parent_ = m;
  return t;
}

}  // namespace dfssm::runtime
