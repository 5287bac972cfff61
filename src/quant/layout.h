// The packed checkpoint's tensor list (names, dtypes, shapes) for any model + quant config, and
// the size accounting built on it. LibTorch-free. The exporter writes exactly this list, the
// reader validates against it, and `dfssm inspect --geometry` prints it without building a model,
// so the accounting cannot drift from the file (docs/format.md is the spec).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"
#include "quant/quant_config.h"

namespace dfssm::quant {

inline constexpr const char* kFormatName = "dfssm-packed";
inline constexpr int kFormatVersion = 1;

struct PackedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string group;      // accounting group: in_proj, out_proj, embedding, conv1d, norms, ssm
  int64_t weights = 0;    // model weights this tensor (with its siblings) represents; 0 for side tensors
  uint64_t nbytes() const;
};

// One large projection of one layer.
struct ProjSpec {
  std::string prefix;  // e.g. "backbone.layers.3.mixer.in_proj"
  std::string group;   // in_proj | out_proj
  int64_t rows = 0, cols = 0;
  bool quantized = true;
};
std::vector<ProjSpec> projections(const Mamba2Config& cfg, const QuantConfig& q);

// Tensors of one projection under `q` (codes + scales or field + low-rank, or a dense weight).
std::vector<PackedTensor> projection_tensors(const ProjSpec& p, const QuantConfig& q);

// The whole file, in the order the exporter writes it.
std::vector<PackedTensor> packed_layout(const Mamba2Config& cfg, const QuantConfig& q);

// Exact size of the safetensors file holding `layout` with `metadata` (same header bytes as the
// writer), and the data bytes alone.
uint64_t packed_file_size(const std::vector<PackedTensor>& layout, const std::map<std::string, std::string>& metadata);
uint64_t packed_data_bytes(const std::vector<PackedTensor>& layout);

// Per-group accounting: bytes, weights and bits per weight, plus the fp16 teacher's bytes.
struct GroupSize {
  std::string group;
  int64_t tensors = 0;
  int64_t weights = 0;
  uint64_t bytes = 0;
  uint64_t fp16_bytes = 0;
};
std::vector<GroupSize> account(const std::vector<PackedTensor>& layout);

// The metadata every packed file has (format, version, config, quant); exports add provenance
// and the tokenizer.
std::map<std::string, std::string> basic_metadata(const Mamba2Config& cfg, const QuantConfig& q);

// The rank whose packed file (with basic_metadata) is closest to `target_bytes`.
int64_t rank_for_budget(const Mamba2Config& cfg, QuantConfig q, uint64_t target_bytes);

}  // namespace dfssm::quant
