// A LibTorch-free reader for PyTorch `torch.save` zip archives holding a state dict
// (the pytorch_model.bin that state-spaces/mamba2-* checkpoints ship).
//
// LibTorch's own pickle_load fails on `model.state_dict()` (the OrderedDict's `_metadata`
// BUILD), and the runtime must not link LibTorch anyway, so the format is parsed here:
//  * a zip (ZIP64 supported) of STORED entries under one top-level folder whose name varies
//    (`archive/`, `pytorch_model/`, ...): <dir>/data.pkl, <dir>/data/<key> (raw little-endian
//    storage bytes), <dir>/byteorder, <dir>/version, ...
//  * <dir>/data.pkl: a pickle (protocol 2 as torch.save writes by default; protocol 3-5 opcodes
//    accepted) whose top level is a dict of name -> tensor. Tensors are
//      torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
//    with storage = persistent id ('storage', torch.<Type>Storage, key, location, numel), or, for
//    dtypes without a legacy <Type>Storage class (uint16/32/64, float8_*),
//      torch._utils._rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
//    with ('storage', torch.storage.UntypedStorage, key, location, nbytes) and dtype a global such
//    as `torch float8_e4m3fn`. _rebuild_parameter(_with_state) and _rebuild_from_type_v2 wrappers
//    are unwrapped. Non-tensor values of the top-level dict are skipped.
// The file is mapped read-only and validated fully in open(): every read is bounds-checked,
// every tensor's size/stride/offset must fit its storage, every error is a dfssm::Error naming
// the file (and the tensor where there is one). Legacy (pre-1.6, non-zip) torch.save files,
// compressed or encrypted entries and big-endian archives are rejected with a clear message.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"

namespace dfssm {

struct TorchZipTensor {
  std::string name;  // state-dict key
  DType dtype = DType::F32;
  std::vector<int64_t> shape, stride;  // stride in elements
  int64_t storage_offset = 0;          // in elements
  std::string storage_key;             // zip entry name: <dir>/data/<key>
  const uint8_t* storage = nullptr;    // start of the storage bytes inside the mapped file
  uint64_t storage_nbytes = 0;
  int64_t numel() const;
  // Row-major dense (dimensions of size 1 may have any stride).
  bool is_contiguous() const;
};

class TorchZipFile {
 public:
  // Maps `path` and validates it completely; throws dfssm::Error on any problem.
  static TorchZipFile open(const std::string& path);

  TorchZipFile(TorchZipFile&&) noexcept;
  TorchZipFile& operator=(TorchZipFile&&) noexcept;
  TorchZipFile(const TorchZipFile&) = delete;
  TorchZipFile& operator=(const TorchZipFile&) = delete;
  ~TorchZipFile();

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  // Tensors in pickle (state-dict) order.
  const std::vector<TorchZipTensor>& tensors() const { return tensors_; }
  const TorchZipTensor* find(const std::string& name) const;
  // Copies a (possibly strided, offset or storage-sharing) tensor of this file into a dense
  // row-major buffer of numel() * dtype_size(dtype) bytes.
  void copy_contiguous(const TorchZipTensor& t, void* dst) const;

 private:
  TorchZipFile() = default;
  std::string path_;
  void* map_ = nullptr;
  uint64_t size_ = 0;
  std::vector<TorchZipTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace dfssm
