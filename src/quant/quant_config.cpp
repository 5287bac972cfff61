#include "quant/quant_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dfssm::quant {

using json = nlohmann::ordered_json;

int64_t QuantConfig::effective_rank() const { return fmt().id == FormatId::Binary ? 0 : rank; }

void QuantConfig::validate(const std::string& source) const {
  std::string errs;
  auto bad = [&](const std::string& m) { errs += "\n  " + m; };
  try {
    const auto& f = fmt();
    if (f.needs_rank && rank < 1) bad(str("rank must be >= 1 for ", f.name, " (got ", rank, ")"));
  } catch (const Error& e) {
    bad(e.what());
  }
  if (rank < 0 || rank > 65536) bad(str("rank must be in [0, 65536] (got ", rank, ")"));
  if (!(ste_clip > 0)) bad(str("ste_clip must be > 0 (got ", ste_clip, ")"));
  if (ternary_scale != "per_row" && ternary_scale != "per_tensor")
    bad(str("ternary_scale must be per_row or per_tensor (got '", ternary_scale, "')"));
  if (int4_group < 1 || int4_group > 65536) bad(str("int4_group must be in [1, 65536] (got ", int4_group, ")"));
  if (embedding != "int8" && embedding != "fp16") bad(str("embedding must be int8 or fp16 (got '", embedding, "')"));
  if (small_dtype != "f16" && small_dtype != "f32") bad(str("small_dtype must be f16 or f32 (got '", small_dtype, "')"));
  if (svid_iters < 1) bad("svid_iters must be >= 1");
  if (svd_oversample < 0 || svd_power_iters < 0) bad("svd_oversample and svd_power_iters must be >= 0");
  DFSSM_CHECK(errs.empty(), source, ": invalid quant config:", errs);
}

std::string QuantConfig::to_json() const {
  json j;
  j["format"] = format;
  j["rank"] = rank;
  j["ste_clip"] = ste_clip;
  j["ternary_scale"] = ternary_scale;
  j["int4_group"] = int4_group;
  j["quantize_in_proj"] = quantize_in_proj;
  j["quantize_out_proj"] = quantize_out_proj;
  j["embedding"] = embedding;
  j["small_dtype"] = small_dtype;
  j["svid_iters"] = svid_iters;
  j["svd_oversample"] = svd_oversample;
  j["svd_power_iters"] = svd_power_iters;
  return j.dump(2);
}

std::vector<std::string> QuantConfig::keys() {
  std::vector<std::string> k;
  const json j = json::parse(QuantConfig().to_json());  // must outlive the items() range
  for (auto& [key, v] : j.items()) k.push_back(key);
  return k;
}

namespace {
std::string known_keys() {
  std::string s;
  for (const auto& k : QuantConfig::keys()) s += (s.empty() ? "" : ", ") + k;
  return s;
}

// Assigns j (a JSON value) to the field named `key`, checking its type.
void assign(QuantConfig& c, const std::string& key, const json& v, const std::string& source) {
  auto want = [&](bool ok, const char* type) {
    DFSSM_CHECK(ok, source, ": quant key '", key, "' must be ", type, " (got ", v.dump(), ")");
  };
  auto as_int = [&](int64_t& dst) { want(v.is_number_integer(), "an integer"), dst = v.get<int64_t>(); };
  auto as_str = [&](std::string& dst) { want(v.is_string(), "a string"), dst = v.get<std::string>(); };
  auto as_bool = [&](bool& dst) { want(v.is_boolean(), "true or false"), dst = v.get<bool>(); };
  if (key == "format") as_str(c.format);
  else if (key == "rank") as_int(c.rank);
  else if (key == "ste_clip") want(v.is_number(), "a number"), c.ste_clip = v.get<double>();
  else if (key == "ternary_scale") as_str(c.ternary_scale);
  else if (key == "int4_group") as_int(c.int4_group);
  else if (key == "quantize_in_proj") as_bool(c.quantize_in_proj);
  else if (key == "quantize_out_proj") as_bool(c.quantize_out_proj);
  else if (key == "embedding") as_str(c.embedding);
  else if (key == "small_dtype") as_str(c.small_dtype);
  else if (key == "svid_iters") as_int(c.svid_iters);
  else if (key == "svd_oversample") as_int(c.svd_oversample);
  else if (key == "svd_power_iters") as_int(c.svd_power_iters);
  else throw Error(str(source, ": unknown quant key '", key, "' (known: ", known_keys(), ")"));
}
}  // namespace

QuantConfig QuantConfig::from_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw Error(str(source, ": quant config is not valid JSON (", e.what(), ")"));
  }
  DFSSM_CHECK(j.is_object(), source, ": quant config must be a JSON object");
  QuantConfig c;
  for (auto& [k, v] : j.items()) assign(c, k, v, source);
  c.validate(source);
  return c;
}

void QuantConfig::set(const std::string& key, const std::string& value) {
  // Parse the value as JSON when it is one (numbers, true/false), else as a bare string.
  json v;
  try {
    v = json::parse(value);
  } catch (...) {
    v = value;
  }
  if (v.is_number_integer() && key == "ste_clip") v = v.get<double>();
  assign(*this, key, v, "override " + key + "=" + value);
}

}  // namespace dfssm::quant
