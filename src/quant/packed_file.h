// Reading a packed checkpoint (.dfssm.safetensors) without LibTorch: the runtime's loader and
// `dfssm inspect` use this. open() validates everything docs/format.md promises before any
// tensor is used: the container (safetensors checks), format name and version, the config and
// quant metadata, and every tensor of the expected layout by name, dtype and shape (the packed
// code length included), with no unknown tensors left over. Errors name the file and tensor.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/config.h"
#include "quant/layout.h"
#include "quant/quant_config.h"

namespace dfssm::quant {

class PackedFile {
 public:
  // check_codes also scans every code blob for undefined codes and nonzero padding.
  static PackedFile open(const std::string& path, bool check_codes = false);

  const SafeTensorsFile& file() const { return file_; }
  const Mamba2Config& config() const { return cfg_; }
  const QuantConfig& quant() const { return q_; }
  const std::vector<PackedTensor>& layout() const { return layout_; }
  const std::map<std::string, std::string>& metadata() const { return file_.metadata(); }
  const uint8_t* data(const std::string& name) const { return file_.data(file_.get(name)); }

  // Reference (scalar) reconstruction of one projection's effective weight, rows x cols fp32:
  // the runtime's kernels are tested against this.
  std::vector<float> dense_weight_ref(const ProjSpec& p) const;
  // Reference int8 embedding row -> fp32 (codes * scale), or the fp16 row.
  std::vector<float> embedding_row_ref(int64_t token) const;
  // Any small tensor (F16/F32) as fp32.
  std::vector<float> floats(const std::string& name) const;

 private:
  explicit PackedFile(SafeTensorsFile f) : file_(std::move(f)) {}
  SafeTensorsFile file_;
  Mamba2Config cfg_;
  QuantConfig q_;
  std::vector<PackedTensor> layout_;
};

}  // namespace dfssm::quant
