#include "model/checkpoint.h"

#include <filesystem>
#include <functional>
#include <map>
#include <set>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/torch_zip.h"
#include "model/checkpoint_files.h"

namespace fs = std::filesystem;

namespace dfssm {

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32" || name == "f32") return at::kFloat;
  if (name == "fp16" || name == "float16" || name == "f16" || name == "half") return at::kHalf;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  throw Error(str("unknown dtype '", name, "' (use fp32, fp16 or bf16)"));
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kBool: return DType::BOOL;
    default: throw Error(str("dtype ", c10::toString(t), " cannot be stored in a checkpoint"));
  }
}

at::ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::BOOL: return at::kBool;
    default: throw Error(str("dtype ", dtype_name(t), " is not supported by the LibTorch model"));
  }
}

namespace {

bool is_float(DType t) { return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// A tensor as found in a weights file, readable into a dense CPU tensor on demand.
struct SourceTensor {
  std::string file_key;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<at::Tensor()> read;
};

// Fills `model` from `src` (canonical key -> tensor), strictly.
void assign_all(Mamba2Model& model, std::map<std::string, SourceTensor>& src, const std::string& file) {
  const auto& cfg = model.config();
  std::vector<std::string> missing;
  for (auto& [key, dst] : model.named_parameters()) {
    auto it = src.find(key);
    if (it == src.end()) {
      missing.push_back(key);
      continue;
    }
    const SourceTensor& s = it->second;
    DFSSM_CHECK(is_float(s.dtype), file, ": tensor '", s.file_key, "' has dtype ", dtype_name(s.dtype),
                ", expected a floating-point type");
    DFSSM_CHECK(at::IntArrayRef(s.shape) == dst.sizes(), file, ": tensor '", s.file_key, "' has shape ",
                shape_str(s.shape), ", expected ", shape_str(dst.sizes().vec()), " for d_model=", cfg.d_model,
                " n_layer=", cfg.n_layer, " vocab=", cfg.padded_vocab(), " d_state=", cfg.d_state,
                " ngroups=", cfg.ngroups, " headdim=", cfg.headdim, " (does config.json match the weights?)");
    at::NoGradGuard ng;
    dst.copy_(s.read());
    src.erase(it);
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 5) list += str(", ... (", missing.size() - 5, " more)");
    throw Error(str(file, ": missing ", missing.size(), " tensor(s): ", list));
  }
  // A tied checkpoint may still carry lm_head.weight (mamba_ssm saves it); it must then be unused.
  if (cfg.tie_embeddings) src.erase("lm_head.weight");
  if (!src.empty()) {
    std::string list;
    for (auto& [k, s] : src) list += (list.empty() ? "" : ", ") + s.file_key;
    throw Error(str(file, ": unexpected tensor(s) not used by a Mamba-2 model with this config: ", list));
  }
}

}  // namespace

std::unique_ptr<Mamba2Model> load_model(const std::string& path, at::ScalarType dtype, at::Device device) {
  const CheckpointFiles files = locate_checkpoint(path);
  const Mamba2Config cfg = read_checkpoint_config(files);
  auto model = std::make_unique<Mamba2Model>(cfg, at::TensorOptions().dtype(dtype).device(device));
  std::map<std::string, SourceTensor> src;
  if (files.format == CheckpointFiles::Format::Safetensors) {
    auto st = std::make_shared<SafeTensorsFile>(SafeTensorsFile::open(files.weights));
    for (const auto& t : st->tensors()) {
      const TensorInfo* ti = &t;
      src[canonical_key(t.name)] = {t.name, t.dtype, t.shape, [st, ti]() {
                                      return at::from_blob(const_cast<uint8_t*>(st->data(*ti)), ti->shape,
                                                           at::TensorOptions().dtype(to_scalar_type(ti->dtype)));
                                    }};
    }
    assign_all(*model, src, files.weights);
  } else {
    auto zf = std::make_shared<TorchZipFile>(TorchZipFile::open(files.weights));
    for (const auto& t : zf->tensors()) {
      const TorchZipTensor* tt = &t;
      src[canonical_key(t.name)] = {t.name, t.dtype, t.shape, [zf, tt]() {
                                      auto out = at::empty(tt->shape, at::TensorOptions().dtype(to_scalar_type(tt->dtype)));
                                      zf->copy_contiguous(*tt, out.data_ptr());
                                      return out;
                                    }};
    }
    assign_all(*model, src, files.weights);
  }
  return model;
}

void save_model(const Mamba2Model& model, const std::string& dir, const std::map<std::string, std::string>& metadata) {
  fs::create_directories(dir);
  std::vector<at::Tensor> keep;  // dense CPU copies that back the write
  std::vector<TensorWrite> writes;
  for (auto& [key, t] : model.named_parameters()) {
    keep.push_back(t.detach().to(at::kCPU).contiguous());
    const auto& c = keep.back();
    writes.push_back({key, to_dtype(c.scalar_type()), c.sizes().vec(), c.data_ptr(), size_t(c.nbytes())});
  }
  auto meta = metadata;
  meta["format"] = "pt";  // what HF tooling expects for plain state dicts
  meta["config"] = model.config().to_json();
  write_safetensors((fs::path(dir) / "model.safetensors").string(), writes, meta);
  write_file_atomic((fs::path(dir) / "config.json").string(), model.config().to_json());
}

}  // namespace dfssm
