#include "model/config.h"

#include <cmath>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/safetensors.h"

namespace dfssm {

using nlohmann::json;

int64_t Mamba2Config::padded_vocab() const {
  const int64_t m = pad_vocab_size_multiple > 0 ? pad_vocab_size_multiple : 1;
  return (vocab_size + m - 1) / m * m;
}

bool Mamba2Config::has_dt_limit() const {
  return dt_limit_min > 0.0 || dt_limit_max < std::numeric_limits<double>::infinity();
}

void Mamba2Config::validate(const std::string& source) const {
  auto pos = [&](int64_t v, const char* name) {
    DFSSM_CHECK(v > 0, source, ": ", name, " must be positive, got ", v);
  };
  pos(d_model, "d_model");
  pos(n_layer, "n_layer");
  pos(vocab_size, "vocab_size");
  pos(d_state, "d_state");
  pos(headdim, "headdim");
  pos(ngroups, "ngroups");
  pos(expand, "expand");
  pos(d_conv, "d_conv");
  pos(chunk_size, "chunk_size");
  // Upper bounds keep every derived size (d_in_proj, padded vocab, V x d, ...) far from int64
  // overflow for any input file; they are orders of magnitude above real Mamba-2 models.
  auto at_most = [&](int64_t v, int64_t hi, const char* name) {
    DFSSM_CHECK(v <= hi, source, ": ", name, " = ", v, " is out of range (at most ", hi, ")");
  };
  at_most(d_model, 1 << 16, "d_model");
  at_most(n_layer, 1 << 12, "n_layer");
  at_most(vocab_size, 1 << 24, "vocab_size");
  at_most(pad_vocab_size_multiple, 1 << 16, "pad_vocab_size_multiple");
  at_most(d_state, 1 << 12, "d_state");
  at_most(headdim, 1 << 12, "headdim");
  at_most(ngroups, 1 << 12, "ngroups");
  at_most(expand, 16, "expand");
  at_most(d_conv, 64, "d_conv");
  at_most(chunk_size, 1 << 16, "chunk_size");
  DFSSM_CHECK(d_inner() % headdim == 0, source, ": d_inner = expand*d_model = ", d_inner(),
              " is not divisible by headdim = ", headdim);
  DFSSM_CHECK(nheads() % ngroups == 0, source, ": nheads = ", nheads(), " is not divisible by ngroups = ", ngroups);
  DFSSM_CHECK(norm_eps > 0, source, ": norm epsilon must be positive");
  DFSSM_CHECK(dt_limit_min < dt_limit_max, source, ": dt_limit must be (min, max) with min < max");
}

namespace {

// Reads obj[key] into out when present, with a type error naming file and key.
template <class T>
void opt(const json& obj, const char* key, T& out, const std::string& source) {
  if (!obj.contains(key) || obj[key].is_null()) return;
  // Integer fields must be JSON integers: a float such as 1e300 would be cast (UB) by get<>.
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
    DFSSM_CHECK(obj[key].is_number_integer(), source, ": field '", key, "' has the wrong type (", obj[key].dump(),
                "; expected an integer)");
  try {
    out = obj[key].get<T>();
  } catch (const std::exception&) {
    throw Error(str(source, ": field '", key, "' has the wrong type (", obj[key].dump(), ")"));
  }
}

template <class T>
void req(const json& obj, const char* key, T& out, const std::string& source, const char* convention) {
  DFSSM_CHECK(obj.contains(key), source, ": missing required field '", key, "' (", convention, " config.json)");
  opt(obj, key, out, source);
}

void read_dt_limit(const json& v, Mamba2Config& c, const std::string& source, const char* key) {
  DFSSM_CHECK(v.is_array() && v.size() == 2, source, ": '", key, "' must be a two-element list");
  // JSON has no infinity; HF writes a huge number or null for "no upper limit".
  c.dt_limit_min = v[0].is_number() ? v[0].get<double>() : 0.0;
  c.dt_limit_max = v[1].is_number() ? v[1].get<double>() : std::numeric_limits<double>::infinity();
  if (c.dt_limit_max >= 1e30) c.dt_limit_max = std::numeric_limits<double>::infinity();
}

Mamba2Config from_mamba_ssm(const json& j, const std::string& source) {
  const char* conv = "mamba_ssm";
  Mamba2Config c;
  req(j, "d_model", c.d_model, source, conv);
  req(j, "n_layer", c.n_layer, source, conv);
  req(j, "vocab_size", c.vocab_size, source, conv);
  opt(j, "pad_vocab_size_multiple", c.pad_vocab_size_multiple, source);
  opt(j, "tie_embeddings", c.tie_embeddings, source);
  opt(j, "residual_in_fp32", c.residual_in_fp32, source);
  opt(j, "norm_epsilon", c.norm_eps, source);
  int64_t d_intermediate = 0;
  opt(j, "d_intermediate", d_intermediate, source);
  DFSSM_CHECK(d_intermediate == 0, source, ": d_intermediate = ", d_intermediate,
              " (an MLP after each mixer) is not supported; dfssm handles pure Mamba-2 stacks");
  if (j.contains("attn_layer_idx") && j["attn_layer_idx"].is_array())
    DFSSM_CHECK(j["attn_layer_idx"].empty(), source, ": hybrid attention layers (attn_layer_idx) are not supported");
  if (j.contains("rms_norm") && j["rms_norm"].is_boolean())
    DFSSM_CHECK(j["rms_norm"].get<bool>(), source, ": rms_norm=false (LayerNorm) is not supported");
  DFSSM_CHECK(j.contains("ssm_cfg"), source, ": missing 'ssm_cfg' (mamba_ssm config.json); expected {\"layer\": \"Mamba2\", ...}");
  const json& s = j["ssm_cfg"];
  DFSSM_CHECK(s.is_object(), source, ": 'ssm_cfg' must be an object");
  std::string layer = "Mamba1";
  opt(s, "layer", layer, source);
  DFSSM_CHECK(layer == "Mamba2", source, ": ssm_cfg.layer is \"", layer, "\"; dfssm supports only Mamba2");
  opt(s, "d_state", c.d_state, source);
  opt(s, "headdim", c.headdim, source);
  opt(s, "ngroups", c.ngroups, source);
  opt(s, "expand", c.expand, source);
  opt(s, "d_conv", c.d_conv, source);
  opt(s, "chunk_size", c.chunk_size, source);
  opt(s, "conv_bias", c.conv_bias, source);
  opt(s, "dt_min", c.dt_min, source);
  opt(s, "dt_max", c.dt_max, source);
  opt(s, "dt_init_floor", c.dt_init_floor, source);
  if (s.contains("A_init_range")) {
    DFSSM_CHECK(s["A_init_range"].is_array() && s["A_init_range"].size() == 2 && s["A_init_range"][0].is_number() &&
                    s["A_init_range"][1].is_number(),
                source, ": A_init_range must be [lo, hi] (two numbers)");
    c.A_init_min = s["A_init_range"][0].get<double>();
    c.A_init_max = s["A_init_range"][1].get<double>();
  }
  if (s.contains("dt_limit")) read_dt_limit(s["dt_limit"], c, source, "dt_limit");
  bool bias = false;
  opt(s, "bias", bias, source);
  DFSSM_CHECK(!bias, source, ": ssm_cfg.bias=true (in/out_proj bias) is not supported");
  int64_t d_ssm = -1;
  opt(s, "d_ssm", d_ssm, source);
  DFSSM_CHECK(d_ssm < 0 || d_ssm == c.d_inner(), source, ": ssm_cfg.d_ssm != d_inner is not supported");
  bool rmsnorm = true;
  opt(s, "rmsnorm", rmsnorm, source);
  DFSSM_CHECK(rmsnorm, source, ": ssm_cfg.rmsnorm=false is not supported");
  bool nbg = false;
  opt(s, "norm_before_gate", nbg, source);
  DFSSM_CHECK(!nbg, source, ": ssm_cfg.norm_before_gate=true is not supported");
  return c;
}

Mamba2Config from_hf(const json& j, const std::string& source) {
  const char* conv = "HF transformers";
  Mamba2Config c;
  req(j, "hidden_size", c.d_model, source, conv);
  req(j, "num_hidden_layers", c.n_layer, source, conv);
  req(j, "vocab_size", c.vocab_size, source, conv);
  // HF sizes the embedding by vocab_size directly (no padding in the model).
  c.pad_vocab_size_multiple = 1;
  opt(j, "state_size", c.d_state, source);
  opt(j, "head_dim", c.headdim, source);
  opt(j, "n_groups", c.ngroups, source);
  opt(j, "expand", c.expand, source);
  opt(j, "conv_kernel", c.d_conv, source);
  opt(j, "chunk_size", c.chunk_size, source);
  opt(j, "tie_word_embeddings", c.tie_embeddings, source);
  opt(j, "residual_in_fp32", c.residual_in_fp32, source);
  opt(j, "layer_norm_epsilon", c.norm_eps, source);
  opt(j, "use_conv_bias", c.conv_bias, source);
  opt(j, "time_step_min", c.dt_min, source);
  opt(j, "time_step_max", c.dt_max, source);
  opt(j, "time_step_floor", c.dt_init_floor, source);
  if (j.contains("time_step_limit") && !j["time_step_limit"].is_null())
    read_dt_limit(j["time_step_limit"], c, source, "time_step_limit");
  bool use_bias = false;
  opt(j, "use_bias", use_bias, source);
  DFSSM_CHECK(!use_bias, source, ": use_bias=true (in/out_proj bias) is not supported");
  if (j.contains("num_heads") && j["num_heads"].is_number_integer()) {
    const int64_t nh = j["num_heads"].get<int64_t>();
    DFSSM_CHECK(nh == c.nheads(), source, ": num_heads = ", nh, " but expand*hidden_size/head_dim = ", c.nheads());
  }
  return c;
}

}  // namespace

Mamba2Config Mamba2Config::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw Error(str(source, ": not valid JSON (", e.what(), ")"));
  }
  DFSSM_CHECK(j.is_object(), source, ": expected a JSON object");
  Mamba2Config c;
  if (j.contains("d_model")) {
    c = from_mamba_ssm(j, source);
  } else if (j.contains("hidden_size") || (j.contains("model_type") && j["model_type"] == "mamba2")) {
    if (j.contains("model_type"))
      DFSSM_CHECK(j["model_type"] == "mamba2", source, ": model_type is ", j["model_type"].dump(), ", expected \"mamba2\"");
    c = from_hf(j, source);
  } else {
    throw Error(str(source, ": not a Mamba-2 config: needs 'd_model' (mamba_ssm) or 'hidden_size' (HF transformers)"));
  }
  c.validate(source);
  return c;
}

Mamba2Config Mamba2Config::from_file(const std::string& path) { return from_json(read_text_file(path), path); }

std::string Mamba2Config::to_json() const {
  nlohmann::ordered_json s = {{"layer", "Mamba2"},         {"d_state", d_state},
                              {"d_conv", d_conv},          {"expand", expand},
                              {"headdim", headdim},        {"ngroups", ngroups},
                              {"chunk_size", chunk_size},  {"conv_bias", conv_bias},
                              {"dt_min", dt_min},          {"dt_max", dt_max},
                              {"dt_init_floor", dt_init_floor}, {"A_init_range", {A_init_min, A_init_max}}};
  if (has_dt_limit()) s["dt_limit"] = {dt_limit_min, std::isinf(dt_limit_max) ? 1e38 : dt_limit_max};
  nlohmann::ordered_json j = {{"d_model", d_model},
                              {"d_intermediate", 0},
                              {"n_layer", n_layer},
                              {"vocab_size", vocab_size},
                              {"ssm_cfg", s},
                              {"attn_layer_idx", json::array()},
                              {"attn_cfg", json::object()},
                              {"rms_norm", true},
                              {"norm_epsilon", norm_eps},
                              {"residual_in_fp32", residual_in_fp32},
                              {"fused_add_norm", true},
                              {"pad_vocab_size_multiple", pad_vocab_size_multiple},
                              {"tie_embeddings", tie_embeddings}};
  return j.dump(2) + "\n";
}

namespace {
struct Geometry {
  const char* name;
  int64_t d_model, n_layer, vocab;
};
// Public state-spaces/mamba2-* geometries (vocab 50277 padded to 50288), plus small ones.
constexpr Geometry kGeometries[] = {
    {"mamba2-130m", 768, 24, 50277}, {"mamba2-370m", 1024, 48, 50277}, {"mamba2-780m", 1536, 48, 50277},
    {"mamba2-1.3b", 2048, 48, 50277}, {"mamba2-2.7b", 2560, 64, 50277},
};
}  // namespace

Mamba2Config Mamba2Config::geometry(const std::string& name) {
  Mamba2Config c;
  for (const auto& g : kGeometries) {
    if (name == g.name) {
      c.d_model = g.d_model;
      c.n_layer = g.n_layer;
      c.vocab_size = g.vocab;
      return c;
    }
  }
  if (name == "tiny") {  // quickstart-sized: trains on 2 CPU cores in minutes
    c.d_model = 128;
    c.n_layer = 4;
    c.vocab_size = 4096;
    c.d_state = 32;
    c.headdim = 32;
    c.chunk_size = 64;
    return c;
  }
  if (name == "test") {  // unit-test sized
    c.d_model = 64;
    c.n_layer = 2;
    c.vocab_size = 100;
    c.d_state = 16;
    c.headdim = 16;
    c.chunk_size = 16;
    return c;
  }
  std::string names;
  for (const auto& n : geometry_names()) names += " " + n;
  throw Error(str("unknown geometry '", name, "'; known:", names));
}

std::vector<std::string> Mamba2Config::geometry_names() {
  std::vector<std::string> v;
  for (const auto& g : kGeometries) v.push_back(g.name);
  v.push_back("tiny");
  v.push_back("test");
  return v;
}

void Mamba2Config::set(const std::string& key, const std::string& value) {
  auto as_int = [&]() -> int64_t {
    try {
      size_t n = 0;
      const int64_t v = std::stoll(value, &n);
      if (n == value.size()) return v;
    } catch (...) {
    }
    throw Error(str("model override ", key, "=", value, ": expected an integer"));
  };
  auto as_bool = [&]() {
    if (value == "true" || value == "1") return true;
    if (value == "false" || value == "0") return false;
    throw Error(str("model override ", key, "=", value, ": expected true or false"));
  };
  if (key == "d_model") d_model = as_int();
  else if (key == "n_layer") n_layer = as_int();
  else if (key == "vocab_size") vocab_size = as_int();
  else if (key == "pad_vocab_size_multiple") pad_vocab_size_multiple = as_int();
  else if (key == "d_state") d_state = as_int();
  else if (key == "headdim") headdim = as_int();
  else if (key == "ngroups") ngroups = as_int();
  else if (key == "expand") expand = as_int();
  else if (key == "d_conv") d_conv = as_int();
  else if (key == "chunk_size") chunk_size = as_int();
  else if (key == "tie_embeddings") tie_embeddings = as_bool();
  else if (key == "residual_in_fp32") residual_in_fp32 = as_bool();
  else
    throw Error(str("unknown model field '", key,
                    "' (known: d_model n_layer vocab_size pad_vocab_size_multiple d_state headdim ngroups expand "
                    "d_conv chunk_size tie_embeddings residual_in_fp32)"));
}

int64_t Mamba2Config::num_params() const {
  const int64_t per_layer = d_model                        // block RMSNorm
                            + d_in_proj() * d_model         // in_proj
                            + conv_dim() * d_conv           // conv1d weight
                            + (conv_bias ? conv_dim() : 0)  // conv1d bias
                            + 3 * nheads()                  // dt_bias, A_log, D
                            + d_inner()                     // gated norm
                            + d_model * d_inner();          // out_proj
  const int64_t emb = padded_vocab() * d_model;
  return emb * (tie_embeddings ? 1 : 2) + n_layer * per_layer + d_model;
}

}  // namespace dfssm
