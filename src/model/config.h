// Mamba-2 model hyperparameters. LibTorch-free: the runtime reads the same struct.
//
// Two config.json conventions are accepted (see from_json):
//  * mamba_ssm: d_model, n_layer, vocab_size, ssm_cfg{...}, pad_vocab_size_multiple, ...
//  * HF transformers: hidden_size, num_hidden_layers, state_size, head_dim, n_groups, ...
// Defaults follow mamba_ssm's Mamba2 module. dfssm writes the mamba_ssm convention.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace dfssm {

struct Mamba2Config {
  int64_t d_model = 768;
  int64_t n_layer = 24;
  int64_t vocab_size = 50277;  // as given by the tokenizer; see padded_vocab()
  int64_t pad_vocab_size_multiple = 16;
  int64_t d_state = 128;
  int64_t headdim = 64;
  int64_t ngroups = 1;
  int64_t expand = 2;
  int64_t d_conv = 4;
  int64_t chunk_size = 256;
  double norm_eps = 1e-5;
  bool tie_embeddings = true;
  bool residual_in_fp32 = true;
  bool conv_bias = true;
  // Initialisation (used only by random init / pretraining).
  double dt_min = 0.001, dt_max = 0.1, dt_init_floor = 1e-4;
  double A_init_min = 1.0, A_init_max = 16.0;
  // dt clamp in the chunked path; (0, inf) is mamba_ssm's default and a no-op.
  double dt_limit_min = 0.0, dt_limit_max = std::numeric_limits<double>::infinity();

  // Derived sizes.
  int64_t d_inner() const { return expand * d_model; }
  int64_t nheads() const { return d_inner() / headdim; }
  int64_t conv_dim() const { return d_inner() + 2 * ngroups * d_state; }
  int64_t d_in_proj() const { return 2 * d_inner() + 2 * ngroups * d_state + nheads(); }
  int64_t padded_vocab() const;
  bool has_dt_limit() const;

  // Throws dfssm::Error naming `source` and the bad field when the geometry is inconsistent.
  void validate(const std::string& source) const;

  // Parses a config.json text in either convention. `source` names the file in errors.
  static Mamba2Config from_json(const std::string& text, const std::string& source);
  static Mamba2Config from_file(const std::string& path);
  // mamba_ssm convention, with every ssm_cfg field spelled out.
  std::string to_json() const;

  // Named geometries: mamba2-130m, -370m, -780m, -1.3b, -2.7b, and tiny ones for tests.
  static Mamba2Config geometry(const std::string& name);
  static std::vector<std::string> geometry_names();

  // Applies a "key=value" override (mamba_ssm field names, e.g. d_model=256).
  void set(const std::string& key, const std::string& value);

  // Parameter count of the model with untied lm_head counted only when untied.
  int64_t num_params() const;
};

}  // namespace dfssm
