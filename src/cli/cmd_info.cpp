// `dfssm info <checkpoint-dir-or-file>`: config, parameters per tensor group, dtypes, bytes.
// LibTorch-free: reads only headers (safetensors) or the pickle index (torch.save zip).
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "core/torch_zip.h"
#include "model/checkpoint_files.h"

namespace dfssm::cli {

const char* const kInfoUsage =
    "usage: dfssm info <checkpoint-dir-or-file>\n\n"
    "Prints the model config (from config.json, safetensors metadata, or inferred from shapes),\n"
    "parameter counts per tensor group with dtypes and bytes, and the file's metadata.\n"
    "Accepts a directory with config.json + model.safetensors or pytorch_model.bin (mamba_ssm or\n"
    "HF transformers layout), or a single .safetensors / .bin file.\n";

namespace {

struct Entry {
  std::string name;
  std::string dtype;
  int64_t numel;
  uint64_t bytes;
};

// Tensor groups, by key: what a user compares between teacher and student.
std::string group_of(const std::string& key) {
  const std::string k = canonical_key(key);
  auto has = [&](const char* s) { return k.find(s) != std::string::npos; };
  if (k == "backbone.embedding.weight") return "embedding";
  if (k == "lm_head.weight") return "lm_head";
  if (has(".mixer.in_proj.")) return "in_proj";
  if (has(".mixer.out_proj.")) return "out_proj";
  if (has(".mixer.conv1d.")) return "conv1d";
  if (has(".mixer.A_log") || has(".mixer.D") || has(".mixer.dt_bias")) return "ssm (A_log, D, dt_bias)";
  if (has("norm")) return "norms";
  return "other";
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(1ull << 30));
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", double(b) / double(1ull << 20));
  else std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  return buf;
}

std::string commas(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

void print_config(const Mamba2Config& c, const std::string& source) {
  std::printf("config:   %s\n", source.c_str());
  std::printf("  d_model %lld  n_layer %lld  vocab_size %lld (padded %lld)  d_state %lld  headdim %lld  ngroups %lld\n",
              (long long)c.d_model, (long long)c.n_layer, (long long)c.vocab_size, (long long)c.padded_vocab(),
              (long long)c.d_state, (long long)c.headdim, (long long)c.ngroups);
  std::printf("  expand %lld  d_conv %lld  chunk_size %lld  d_inner %lld  nheads %lld  conv_dim %lld  d_in_proj %lld\n",
              (long long)c.expand, (long long)c.d_conv, (long long)c.chunk_size, (long long)c.d_inner(),
              (long long)c.nheads(), (long long)c.conv_dim(), (long long)c.d_in_proj());
  std::printf("  tie_embeddings %s  residual_in_fp32 %s  norm_eps %g\n", c.tie_embeddings ? "yes" : "no",
              c.residual_in_fp32 ? "yes" : "no", c.norm_eps);
}

}  // namespace

int cmd_info(int argc, char** argv) {
  Args args(argc, argv);
  args.check_unused();
  DFSSM_CHECK(args.positionals().size() == 1, "usage: dfssm info <checkpoint-dir-or-file>");
  const CheckpointFiles files = locate_checkpoint(args.positionals()[0]);

  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t file_size = 0;
  if (files.format == CheckpointFiles::Format::Safetensors) {
    const auto st = SafeTensorsFile::open(files.weights);
    metadata = st.metadata();
    for (const auto& t : st.tensors()) entries.push_back({t.name, dtype_name(t.dtype), t.numel(), t.nbytes()});
  } else {
    const auto zf = TorchZipFile::open(files.weights);
    for (const auto& t : zf.tensors())
      entries.push_back({t.name, dtype_name(t.dtype), t.numel(), uint64_t(t.numel()) * dtype_size(t.dtype)});
  }
  file_size = std::filesystem::file_size(files.weights);
  std::printf("weights:  %s (%s, %s)\n", files.weights.c_str(),
              files.format == CheckpointFiles::Format::Safetensors ? "safetensors" : "torch.save zip",
              human_bytes(file_size).c_str());

  std::string how;
  bool have_cfg = false;
  Mamba2Config cfg;
  try {
    cfg = read_checkpoint_config(files, &how);
    have_cfg = true;
    print_config(cfg, how);
  } catch (const Error& e) {
    std::printf("config:   unavailable (%s)\n", e.what());
  }

  struct Group {
    int tensors = 0;
    int64_t params = 0;
    uint64_t bytes = 0;
    std::set<std::string> dtypes;
  };
  std::map<std::string, Group> groups;
  int64_t total_params = 0;
  uint64_t total_bytes = 0;
  for (const auto& e : entries) {
    auto& g = groups[group_of(e.name)];
    ++g.tensors;
    g.params += e.numel;
    g.bytes += e.bytes;
    g.dtypes.insert(e.dtype);
    // A tied lm_head stored anyway (mamba_ssm does) is the embedding again: not a parameter.
    if (!(have_cfg && cfg.tie_embeddings && canonical_key(e.name) == "lm_head.weight")) total_params += e.numel;
    total_bytes += e.bytes;
  }
  std::printf("\n%-26s %7s %15s %-10s %15s\n", "group", "tensors", "params", "dtype", "bytes");
  for (const auto& [name, g] : groups) {
    std::string dt;
    for (const auto& d : g.dtypes) dt += (dt.empty() ? "" : ",") + d;
    std::printf("%-26s %7d %15s %-10s %15s\n", name.c_str(), g.tensors, commas(uint64_t(g.params)).c_str(), dt.c_str(),
                commas(g.bytes).c_str());
  }
  std::printf("%-26s %7zu %15s %-10s %15s  (%s)\n", "total", entries.size(), commas(uint64_t(total_params)).c_str(), "",
              commas(total_bytes).c_str(), human_bytes(total_bytes).c_str());
  if (have_cfg) {
    const int64_t expect = cfg.num_params();
    std::printf("params expected from config: %s (%s)\n", commas(uint64_t(expect)).c_str(),
                expect == total_params ? "matches" : "MISMATCH: config and weights disagree");
  }
  if (!metadata.empty()) {
    std::printf("\nmetadata:\n");
    for (const auto& [k, v] : metadata) {
      std::string s = v;
      for (auto& ch : s)
        if (ch == '\n') ch = ' ';
      if (s.size() > 100) s = s.substr(0, 97) + "...";
      std::printf("  %s: %s\n", k.c_str(), s.c_str());
    }
  }
  return 0;
}

}  // namespace dfssm::cli
