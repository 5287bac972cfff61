// Loading and saving Mamba-2 checkpoints into the LibTorch model.
//
// Reads model.safetensors (own validated parser) or pytorch_model.bin (own torch.save zip
// reader), in either key convention, into fp32, fp16 or bf16 on any device. Loading is strict:
// every expected tensor must be present with the expected shape, and no unknown tensor may be
// left over (a tied lm_head.weight is accepted and ignored). Errors name the file and tensor.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "model/mamba2.h"

namespace dfssm {

std::unique_ptr<Mamba2Model> load_model(const std::string& path, at::ScalarType dtype = at::kFloat,
                                        at::Device device = at::kCPU);

// Writes <dir>/config.json (mamba_ssm convention) and <dir>/model.safetensors, atomically.
// Tensors are stored in their in-memory dtype; `metadata` goes into __metadata__.
void save_model(const Mamba2Model& model, const std::string& dir,
                const std::map<std::string, std::string>& metadata = {});

at::ScalarType parse_dtype(const std::string& name);  // "fp32"/"float32", "fp16", "bf16"
DType to_dtype(at::ScalarType t);
at::ScalarType to_scalar_type(DType t);

}  // namespace dfssm
