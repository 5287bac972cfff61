// The student's quantization settings (one per model). Stored as JSON in the student checkpoint
// (quant.json) and in the packed file's `quant` metadata; set from YAML/key=value in jobs.
// LibTorch-free.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "quant/format.h"

namespace dfssm::quant {

struct QuantConfig {
  std::string format = "binary_lowrank";  // binary | binary_lowrank | ternary | int4
  int64_t rank = 19;             // low-rank correction rank (binary_lowrank; optional for ternary/int4)
  double ste_clip = 1.0;         // STE passes the sign gradient where |W_lat| <= ste_clip
  std::string ternary_scale = "per_row";  // per_row | per_tensor
  int64_t int4_group = 128;      // inputs sharing one int4 scale
  bool quantize_in_proj = true;  // false keeps that projection dense fp16
  bool quantize_out_proj = true;
  std::string embedding = "int8";  // int8 (per-row scale, tied with lm_head) | fp16
  std::string small_dtype = "f16";  // conv1d and norm weights in the packed file: f16 | f32
  // Initialisation from the teacher.
  int64_t svid_iters = 30;       // power iterations for the rank-1 field of |W|
  int64_t svd_oversample = 8;    // randomized SVD of the residual
  int64_t svd_power_iters = 2;

  const QuantFormat& fmt() const { return format_by_name(format); }
  // rank as used: 0 for plain binary.
  int64_t effective_rank() const;

  // Throws dfssm::Error naming `source` and every bad field.
  void validate(const std::string& source) const;
  std::string to_json() const;
  static QuantConfig from_json(const std::string& text, const std::string& source);
  // "key=value" (keys as in to_json). Throws on unknown keys (with the list of known ones).
  void set(const std::string& key, const std::string& value);
  static std::vector<std::string> keys();
};

}  // namespace dfssm::quant
