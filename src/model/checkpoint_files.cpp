#include "model/checkpoint_files.h"

#include <filesystem>
#include <map>

#include "core/error.h"
#include "core/safetensors.h"

namespace fs = std::filesystem;

namespace dfssm {

CheckpointFiles locate_checkpoint(const std::string& path) {
  CheckpointFiles f;
  DFSSM_CHECK(fs::exists(path), path, ": no such file or directory");
  if (fs::is_directory(path)) {
    const fs::path d(path);
    if (fs::exists(d / "model.safetensors")) {
      f.weights = (d / "model.safetensors").string();
    } else if (fs::exists(d / "pytorch_model.bin")) {
      f.weights = (d / "pytorch_model.bin").string();
      f.format = CheckpointFiles::Format::TorchBin;
    } else {
      throw Error(str(path, ": no model.safetensors or pytorch_model.bin in this directory"));
    }
    if (fs::exists(d / "config.json")) f.config_json = (d / "config.json").string();
    return f;
  }
  f.weights = path;
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".bin" || ext == ".pt" || ext == ".pth") f.format = CheckpointFiles::Format::TorchBin;
  const fs::path cfg = fs::path(path).parent_path() / "config.json";
  if (fs::exists(cfg)) f.config_json = cfg.string();
  return f;
}

std::string canonical_key(const std::string& key) {
  static const std::string hf = "backbone.embeddings.";
  if (key.rfind(hf, 0) == 0) return "backbone.embedding." + key.substr(hf.size());
  return key;
}

namespace {
// Recovers the geometry from tensor shapes. ngroups and chunk_size are not visible in the
// shapes; mamba_ssm's defaults (1, 256) are assumed and reported.
Mamba2Config infer_from_shapes(const SafeTensorsFile& st) {
  std::map<std::string, const TensorInfo*> t;
  for (const auto& ti : st.tensors()) t[canonical_key(ti.name)] = &ti;
  auto need = [&](const std::string& k) -> const TensorInfo& {
    auto it = t.find(k);
    DFSSM_CHECK(it != t.end(), st.path(), ": cannot infer the model config (no config.json, no 'config' metadata) "
                                          "and tensor '", k, "' is missing");
    return *it->second;
  };
  Mamba2Config c;
  const auto& emb = need("backbone.embedding.weight");
  DFSSM_CHECK(emb.shape.size() == 2, st.path(), ": embedding must be 2-D");
  c.vocab_size = emb.shape[0];
  c.pad_vocab_size_multiple = 1;
  c.d_model = emb.shape[1];
  c.n_layer = 0;
  while (t.count("backbone.layers." + std::to_string(c.n_layer) + ".mixer.in_proj.weight")) ++c.n_layer;
  DFSSM_CHECK(c.n_layer > 0, st.path(), ": no backbone.layers.0.mixer.in_proj.weight");
  const auto& out = need("backbone.layers.0.mixer.out_proj.weight");
  const auto& alog = need("backbone.layers.0.mixer.A_log");
  const auto& conv = need("backbone.layers.0.mixer.conv1d.weight");
  DFSSM_CHECK(out.shape.size() == 2 && alog.shape.size() == 1 && conv.shape.size() == 3, st.path(),
              ": unexpected ranks for out_proj/A_log/conv1d");
  const int64_t d_inner = out.shape[1], h = alog.shape[0];
  DFSSM_CHECK(d_inner % c.d_model == 0 && d_inner % h == 0, st.path(), ": inconsistent out_proj/A_log shapes");
  c.expand = d_inner / c.d_model;
  c.headdim = d_inner / h;
  c.d_conv = conv.shape[2];
  c.ngroups = 1;
  c.d_state = (conv.shape[0] - d_inner) / 2;
  c.tie_embeddings = !t.count("lm_head.weight");
  c.conv_bias = t.count("backbone.layers.0.mixer.conv1d.bias") > 0;
  c.validate(st.path());
  return c;
}
}  // namespace

Mamba2Config read_checkpoint_config(const CheckpointFiles& files, std::string* how) {
  if (!files.config_json.empty()) {
    if (how) *how = files.config_json;
    return Mamba2Config::from_file(files.config_json);
  }
  DFSSM_CHECK(files.format == CheckpointFiles::Format::Safetensors, files.weights,
              ": a pytorch_model.bin needs a config.json beside it");
  const auto st = SafeTensorsFile::open(files.weights);
  auto it = st.metadata().find("config");
  if (it != st.metadata().end()) {
    if (how) *how = files.weights + " (metadata 'config')";
    return Mamba2Config::from_json(it->second, files.weights + " metadata 'config'");
  }
  if (how) *how = files.weights + " (inferred from tensor shapes; ngroups=1 and chunk_size=256 assumed)";
  return infer_from_shapes(st);
}

}  // namespace dfssm
