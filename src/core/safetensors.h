// A LibTorch-free safetensors reader and writer.
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of UTF-8 JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {str: str}}, then the data region. Offsets are relative to the data region.
//
// The reader maps the file read-only and validates the whole header before any tensor is
// handed out, with the same strictness as the reference Rust implementation: known dtypes,
// byte lengths that match the shapes, offsets that tile the data region exactly (no gaps,
// overlaps or bytes past the end). Every error names the file and, where it applies, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dfssm {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offset into the data region
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

std::string shape_str(const std::vector<int64_t>& shape);

class SafeTensorsFile {
 public:
  // Maps `path` and validates it; throws dfssm::Error on any problem.
  static SafeTensorsFile open(const std::string& path);

  SafeTensorsFile(SafeTensorsFile&&) noexcept;
  SafeTensorsFile& operator=(SafeTensorsFile&&) noexcept;
  ~SafeTensorsFile();

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  // Tensors in ascending data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  const TensorInfo* find(const std::string& name) const;
  // Like find, but throws "<file>: missing tensor '<name>'".
  const TensorInfo& get(const std::string& name) const;
  // get() plus a shape (and optionally dtype) check with an expected-vs-actual message.
  const TensorInfo& require(const std::string& name, const std::vector<int64_t>& shape,
                            std::optional<DType> dtype = std::nullopt) const;
  const uint8_t* data(const TensorInfo& t) const { return data_ + t.begin; }

 private:
  SafeTensorsFile() = default;
  std::string path_;
  uint64_t size_ = 0;
  void* map_ = nullptr;
  const uint8_t* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Parses and validates a header against a data region of `data_size` bytes. Exposed so
// that tests (and fuzzers) can exercise validation without files.
void parse_safetensors_header(const std::string& path, const char* json, size_t json_len,
                              uint64_t data_size, std::vector<TensorInfo>* tensors,
                              std::map<std::string, std::string>* metadata);

struct TensorWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};

// The JSON header the writer emits (space-padded to a multiple of 8 bytes), and the exact
// size of the file it would write. Data pointers are not read.
std::string safetensors_header(const std::vector<TensorWrite>& tensors,
                               const std::map<std::string, std::string>& metadata = {});
uint64_t safetensors_file_size(const std::vector<TensorWrite>& tensors,
                               const std::map<std::string, std::string>& metadata = {});

// Writes a safetensors file atomically: to a temporary name beside `path`, fsynced, then
// renamed, so a crash never leaves a half-written file under the final name.
void write_safetensors(const std::string& path, const std::vector<TensorWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a small text file atomically (same temp+fsync+rename protocol).
void write_file_atomic(const std::string& path, const std::string& contents);
std::string read_text_file(const std::string& path);

}  // namespace dfssm
