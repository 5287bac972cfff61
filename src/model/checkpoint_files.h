// Finding a checkpoint's files and its config, without LibTorch (the runtime and `dfssm info`
// use this too).
//
// A checkpoint is either a directory holding config.json plus model.safetensors or
// pytorch_model.bin (the state-spaces/mamba2-* and HF layouts), or a single weights file.
// For a single file the config comes from config.json beside it, else from the safetensors
// "config" metadata entry, else it is inferred from the tensor shapes.
#pragma once

#include <string>

#include "model/config.h"

namespace dfssm {

struct CheckpointFiles {
  enum class Format { Safetensors, TorchBin };
  std::string weights;      // path of model.safetensors / pytorch_model.bin / given file
  std::string config_json;  // empty when there is none
  Format format = Format::Safetensors;
};

CheckpointFiles locate_checkpoint(const std::string& path);

// Maps both key conventions onto mamba_ssm's (HF's "backbone.embeddings." -> "backbone.embedding.").
std::string canonical_key(const std::string& key);

// Reads the config as described above. `how` (optional) receives where it came from.
Mamba2Config read_checkpoint_config(const CheckpointFiles& files, std::string* how = nullptr);

}  // namespace dfssm
