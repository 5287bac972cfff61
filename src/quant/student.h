// The DF-SSM student: a Mamba-2 model whose in_proj/out_proj are ScaffoldLinear layers and whose
// tied embedding is int8 fake-quantized, initialised from a teacher; its checkpoint directory;
// and the export to the packed file (docs/format.md).
//
// Student checkpoint directory (what the trainer saves and `dfssm export` reads):
//   config.json          the model config (mamba_ssm convention)
//   quant.json           the QuantConfig
//   student.safetensors  every fp32 master tensor: the model's non-projection parameters under
//                        their mamba_ssm keys, each projection's latents as
//                        <prefix>.{w_lat, field_a, field_b, lr_u, lr_u_scale, lr_v, lr_v_scale}
//                        (a dense projection keeps <prefix>.weight); __metadata__ holds the
//                        provenance (teacher_sha256, tokens_seen, steps, tokenizer_sha256, ...).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/mamba2.h"
#include "quant/quant_config.h"
#include "quant/scaffold_linear.h"

namespace dfssm::quant {

struct Student {
  std::unique_ptr<Mamba2Model> model;  // fp32 master weights
  QuantConfig quant;
  // Provenance carried into the packed file: teacher_sha256, tokens_seen, steps,
  // tokenizer_sha256, tokenizer_path (a SentencePiece .model to embed), ...
  std::map<std::string, std::string> meta;

  // The quantized projections, in layout order (layer 0 in_proj, out_proj, layer 1 ...); null
  // for a projection kept dense.
  std::vector<std::shared_ptr<ScaffoldLinear>> scaffolds() const;
};

// Copies the teacher's small parameters (as fp32), replaces each configured projection by a
// ScaffoldLinear initialised from the teacher's weight, and installs the embedding fake quant.
std::unique_ptr<Student> make_student(const Mamba2Model& teacher, const QuantConfig& q, uint64_t seed,
                                      at::Device device = at::kCPU);

// An empty student of a given geometry (parameters allocated, unset): for loading.
std::unique_ptr<Student> empty_student(const Mamba2Config& cfg, const QuantConfig& q, at::Device device = at::kCPU);

void save_student(const Student& s, const std::string& dir);
std::unique_ptr<Student> load_student(const std::string& dir, at::Device device = at::kCPU);

// Relative Frobenius error sum‖W - W_eff‖² / sum‖W‖² of the projections against a teacher.
double projection_error(const Student& s, const Mamba2Model& teacher);

// Writes the packed file (atomic). Returns its size in bytes.
uint64_t export_packed(const Student& s, const std::string& path);

// The __metadata__ the exporter writes for `s` (so size accounting can be exact).
std::map<std::string, std::string> packed_metadata(const Student& s);

}  // namespace dfssm::quant
