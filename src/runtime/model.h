// The runtime's model: the packed file's weights in kernel-ready form, LibTorch-free.
//
// Loading maps the .dfssm.safetensors file read-only (quant::PackedFile validates everything
// docs/format.md promises: format and version, config, every tensor's name, dtype and shape).
// The big tensors are used in place, straight from the mapping (no copy): the 1-bit codes, the
// int8 low-rank factors, the int8 embedding / LM head and fp16 dense weights. The small ones are
// converted once at load (docs/runtime.md, "Load-time repacking"): field a/b and every scale to
// fp32, conv1d.weight [D, 1, K] to fp32 tap-major [K, D], norms and biases to fp32, and
// A = -exp(A_log). ternary / int4 projections have no packed kernel yet: they are expanded at
// load to fp16 dense rows (low-rank term included) and run through the fp16 GEMM.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "quant/quant_config.h"

namespace dfssm::quant {
class PackedFile;
}

namespace dfssm::runtime {

// One in_proj / out_proj: y = W x with W as in docs/format.md.
struct Projection {
  enum class Kind { Binary, DenseF16 } kind = Kind::Binary;
  int64_t rows = 0, cols = 0;
  // Binary: packed signs (row_bytes per row), field a [rows] and b [cols] in fp32.
  const uint8_t* codes = nullptr;
  int64_t row_bytes = 0;
  std::vector<float> a, b;
  // Low-rank term (rank 0: none): u int8 [rows, rank], v int8 [cols, rank], fp32 scales.
  int64_t rank = 0;
  const int8_t* u = nullptr;
  const int8_t* v = nullptr;
  std::vector<float> us, vs;
  // DenseF16: [rows, cols] IEEE half.
  const uint16_t* w16 = nullptr;
};

struct Layer {
  std::vector<float> norm;                 // [d]
  Projection in_proj;                      // d -> d_in_proj
  std::vector<float> conv_w;               // [K, conv_dim], tap-major
  std::vector<float> conv_b;               // [conv_dim] or empty
  std::vector<float> dt_bias, A, D;        // [H]; A = -exp(A_log)
  std::vector<float> gnorm;                // [d_inner]
  Projection out_proj;                     // d_inner -> d
};

// The token embedding and the LM head (the same matrix when tied).
struct EmbeddingTable {
  const int8_t* codes = nullptr;  // int8 [V, d]
  std::vector<float> scale;       // [V]
  const uint16_t* w16 = nullptr;  // fp16 [V, d] when embedding = fp16
};

struct LoadOptions {
  bool verify_codes = false;  // also scan every code blob for invalid codes / nonzero padding
};

class Model {
 public:
  // Maps and validates `path`; throws dfssm::Error naming the file and the tensor at fault.
  static std::shared_ptr<Model> load(const std::string& path, const LoadOptions& opt = {});
  // A random model of a geometry, built in memory (no file): for `dfssm bench --random`.
  // The values are drawn like a trained student's (magnitudes of a random Mamba-2 init) so the
  // activations stay finite; the point is the speed, not the text.
  static std::shared_ptr<Model> random(const Mamba2Config& cfg, const quant::QuantConfig& q, uint64_t seed);
  // The same weights with only the first k layers (embedding, final norm and head kept); shares
  // m's buffers. For tests that follow a disagreement between engines layer by layer.
  static std::shared_ptr<Model> first_layers(const std::shared_ptr<const Model>& m, int64_t k);

  ~Model();
  const Mamba2Config& config() const { return cfg_; }
  const quant::QuantConfig& quant() const { return q_; }
  const std::map<std::string, std::string>& metadata() const { return meta_; }
  const std::string& source() const { return source_; }

  const std::vector<Layer>& layers() const { return layers_; }
  const EmbeddingTable& embedding() const { return embed_; }
  const EmbeddingTable& lm_head() const { return cfg_.tie_embeddings ? embed_ : lm_head_; }
  const std::vector<float>& norm_f() const { return norm_f_; }

  // Bytes a decode step must read per sequence: every projection's stored tensors, the LM head,
  // one embedding row and the small fp32 tensors (not counting the recurrent state).
  uint64_t weight_bytes_per_token() const { return bytes_per_token_; }

 private:
  Model() = default;
  struct Source;  // name -> bytes (a mapped file or in-memory buffers)
  void build(const Source& src);

  Mamba2Config cfg_;
  quant::QuantConfig q_;
  std::map<std::string, std::string> meta_;
  std::string source_;
  std::vector<Layer> layers_;
  EmbeddingTable embed_, lm_head_;
  std::vector<float> norm_f_;
  uint64_t bytes_per_token_ = 0;
  // Keeps the mapping / buffers alive while the pointers above are in use.
  std::unique_ptr<quant::PackedFile> file_;
  std::vector<std::vector<uint8_t>> owned_;
  std::shared_ptr<const Model> parent_;  // first_layers(): the model whose buffers these are
};

}  // namespace dfssm::runtime
