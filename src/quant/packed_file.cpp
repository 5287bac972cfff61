#include "quant/packed_file.h"

#include <cstring>
#include <set>

#include "core/error.h"

namespace dfssm::quant {

PackedFile PackedFile::open(const std::string& path, bool check_codes) {
  PackedFile p(SafeTensorsFile::open(path));
  const auto& meta = p.file_.metadata();
  auto need = [&](const char* key) -> const std::string& {
    auto it = meta.find(key);
    DFSSM_CHECK(it != meta.end(), path, ": not a dfssm packed file (no '", key,
                "' in __metadata__); export one with `dfssm export`");
    return it->second;
  };
  DFSSM_CHECK(need("format") == kFormatName, path, ": format is '", need("format"), "', expected '", kFormatName, "'");
  const auto& ver = need("format_version");
  DFSSM_CHECK(ver == std::to_string(kFormatVersion), path, ": packed format version ", ver,
              " is not supported (this dfssm reads version ", kFormatVersion, ")");
  p.cfg_ = Mamba2Config::from_json(need("config"), path + " (metadata 'config')");
  p.q_ = QuantConfig::from_json(need("quant"), path + " (metadata 'quant')");
  // Every layer has several tensors: this bounds the layout built next (found by fuzzing:
  // n_layer = 1e12 in the metadata made packed_layout allocate until out of memory).
  DFSSM_CHECK(p.cfg_.n_layer <= int64_t(p.file_.tensors().size()), path, ": config n_layer = ", p.cfg_.n_layer,
              " but the file holds only ", p.file_.tensors().size(), " tensors");
  p.layout_ = packed_layout(p.cfg_, p.q_);
  std::set<std::string> expected;
  for (const auto& t : p.layout_) {
    expected.insert(t.name);
    const auto* ti = p.file_.find(t.name);
    DFSSM_CHECK(ti, path, ": missing tensor '", t.name, "' (expected ", dtype_name(t.dtype), " ", shape_str(t.shape),
                ")");
    DFSSM_CHECK(ti->dtype == t.dtype, path, ": tensor '", t.name, "' has dtype ", dtype_name(ti->dtype), ", expected ",
                dtype_name(t.dtype));
    DFSSM_CHECK(ti->shape == t.shape, path, ": tensor '", t.name, "' has shape ", shape_str(ti->shape), ", expected ",
                shape_str(t.shape),
                t.name.size() > 6 && t.name.substr(t.name.size() - 6) == ".codes" ? " (wrong packed length)" : "");
  }
  for (const auto& ti : p.file_.tensors())
    DFSSM_CHECK(expected.count(ti.name), path, ": unexpected tensor '", ti.name, "' for format ", p.q_.format);
  if (check_codes) {
    for (const auto& s : projections(p.cfg_, p.q_)) {
      if (!s.quantized) continue;
      const int64_t bad = count_invalid_codes(p.q_.fmt(), p.data(s.prefix + ".codes"), s.rows, s.cols);
      DFSSM_CHECK(bad == 0, path, ": tensor '", s.prefix, ".codes' has ", bad, " invalid codes or nonzero pad bits");
    }
  }
  return p;
}

std::vector<float> PackedFile::floats(const std::string& name) const {
  const auto& ti = file_.get(name);
  return floats_from(file_.data(ti), ti.dtype, size_t(ti.numel()), name);
}

std::vector<float> PackedFile::dense_weight_ref(const ProjSpec& p) const {
  const int64_t R = p.rows, C = p.cols;
  if (!p.quantized) return floats(p.prefix + ".weight");
  const auto& f = q_.fmt();
  std::vector<int8_t> codes(size_t(R * C));
  unpack_codes(f, data(p.prefix + ".codes"), R, C, codes.data());
  std::vector<float> w(size_t(R * C));
  if (f.field) {
    const auto a = floats(p.prefix + ".field_a"), b = floats(p.prefix + ".field_b");
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) w[size_t(r * C + c)] = a[size_t(r)] * float(codes[size_t(r * C + c)]) * b[size_t(c)];
  } else {
    const auto s = floats(p.prefix + ".scale");
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        float sc;
        if (f.id == FormatId::Ternary) sc = s.size() == 1 ? s[0] : s[size_t(r)];
        else sc = s[size_t(r * ((C + q_.int4_group - 1) / q_.int4_group) + c / q_.int4_group)];
        w[size_t(r * C + c)] = float(codes[size_t(r * C + c)]) * sc;
      }
  }
  if (const int64_t k = q_.effective_rank(); k > 0) {
    const auto u = floats(p.prefix + ".lr_u"), us = floats(p.prefix + ".lr_u_scale");
    const auto v = floats(p.prefix + ".lr_v"), vs = floats(p.prefix + ".lr_v_scale");
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        double acc = 0;  // fp64: the reference is the exact value, kernels are compared to it
        for (int64_t j = 0; j < k; ++j)
          acc += double(u[size_t(r * k + j)] * us[size_t(j)]) * double(v[size_t(c * k + j)] * vs[size_t(j)]);
        w[size_t(r * C + c)] += float(acc);
      }
  }
  return w;
}

std::vector<float> PackedFile::embedding_row_ref(int64_t token) const {
  const int64_t V = cfg_.padded_vocab(), d = cfg_.d_model;
  DFSSM_CHECK(token >= 0 && token < V, "token id ", token, " outside [0, ", V, ")");
  std::vector<float> row(static_cast<size_t>(d));
  if (q_.embedding == "fp16") {
    const uint8_t* p = data("backbone.embedding.weight") + 2 * token * d;
    for (int64_t i = 0; i < d; ++i) row[size_t(i)] = half_to_float(uint16_t(p[2 * i] | p[2 * i + 1] << 8));
    return row;
  }
  const auto* codes = reinterpret_cast<const int8_t*>(data("backbone.embedding.codes")) + token * d;
  const uint8_t* sp = data("backbone.embedding.scale") + 2 * token;
  const float s = half_to_float(uint16_t(sp[0] | sp[1] << 8));
  for (int64_t i = 0; i < d; ++i) row[size_t(i)] = float(codes[i]) * s;
  return row;
}

}  // namespace dfssm::quant
