// `dfssm inspect`: size accounting of a packed file, or of a named geometry without building it.
// LibTorch-free (uses the packed reader and the layout only).
#include <algorithm>
#include <cstdio>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "quant/layout.h"
#include "quant/packed_file.h"

namespace dfssm::cli {

const char* const kInspectUsage =
    "usage: dfssm inspect <model.dfssm.safetensors> [--verify]\n"
    "       dfssm inspect --geometry NAME [--rank R] [--target-mb MB] [quant.key=value | key=value ...]\n\n"
    "Prints per-group bytes, bits per weight and totals against the FP16 teacher, ending with\n"
    "`packed total: <X> MB` (MB = 10^6 bytes).\n"
    "  <file>        a packed file from `dfssm export`; it is fully validated (docs/format.md)\n"
    "  --verify      also scan every code blob for undefined codes and nonzero padding\n"
    "  --geometry    mamba2-130m ... mamba2-2.7b: accounting from the layout alone\n"
    "  --rank R      low-rank correction rank (default from the quant config)\n"
    "  --target-mb   also print the rank whose file is closest to this size\n"
    "  key=value     quant options: format=binary|binary_lowrank|ternary|int4, embedding=int8|fp16, ...\n"
    "                (model fields such as n_layer=24 are accepted with --geometry too)\n";

namespace {

void print_accounting(const std::vector<quant::PackedTensor>& layout, uint64_t total) {
  std::printf("%-10s %8s %16s %16s %8s %16s\n", "group", "tensors", "weights", "bytes", "bits/w", "fp16 bytes");
  uint64_t fp16 = 0, data = 0;
  int64_t weights = 0;
  for (const auto& g : quant::account(layout)) {
    std::printf("%-10s %8lld %16lld %16llu %8.3f %16llu\n", g.group.c_str(), (long long)g.tensors,
                (long long)g.weights, (unsigned long long)g.bytes, g.weights ? 8.0 * double(g.bytes) / double(g.weights) : 0.0,
                (unsigned long long)g.fp16_bytes);
    fp16 += g.fp16_bytes;
    data += g.bytes;
    weights += g.weights;
  }
  std::printf("%-10s %8zu %16lld %16llu %8.3f %16llu\n", "all", layout.size(), (long long)weights,
              (unsigned long long)data, 8.0 * double(data) / double(weights), (unsigned long long)fp16);
  std::printf("header + metadata: %llu bytes\n", (unsigned long long)(total - data));
  std::printf("compression vs fp16 teacher: %.2fx\n", double(fp16) / double(total));
  std::printf("packed total: %.2f MB (%llu bytes)\n", double(total) / 1e6, (unsigned long long)total);
}

}  // namespace

int cmd_inspect(int argc, char** argv) {
  Args args(argc, argv, {"verify"});
  if (args.has("geometry")) {
    Mamba2Config cfg = Mamba2Config::geometry(args.get("geometry", ""));
    quant::QuantConfig q;
    for (auto [k, v] : args.overrides()) {
      if (k.rfind("quant.", 0) == 0) k = k.substr(6);
      const auto keys = quant::QuantConfig::keys();
      if (std::find(keys.begin(), keys.end(), k) != keys.end()) q.set(k, v);
      else cfg.set(k, v);
    }
    if (args.has("rank")) q.rank = args.get_int("rank", q.rank);
    const double target_mb = args.get_double("target-mb", 0);
    args.check_unused();
    cfg.validate("--geometry");
    q.validate("quant options");
    const auto layout = quant::packed_layout(cfg, q);
    // Metadata as an export without a tokenizer would write it (the config and quant JSON).
    const auto meta = quant::basic_metadata(cfg, q);
    std::printf("geometry %s: d_model %lld, %lld layers, vocab %lld; format %s, rank %lld, embedding %s\n\n",
                args.get("geometry", "").c_str(), (long long)cfg.d_model, (long long)cfg.n_layer,
                (long long)cfg.padded_vocab(), q.format.c_str(), (long long)q.effective_rank(), q.embedding.c_str());
    print_accounting(layout, quant::packed_file_size(layout, meta));
    if (target_mb > 0)
      std::printf("rank closest to %.1f MB: %lld\n", target_mb,
                  (long long)quant::rank_for_budget(cfg, q, uint64_t(target_mb * 1e6)));
    return 0;
  }
  const bool verify = args.has("verify");
  args.check_unused();
  DFSSM_CHECK(args.positionals().size() == 1, "usage: dfssm inspect <model.dfssm.safetensors> | --geometry NAME");
  const auto p = quant::PackedFile::open(args.positionals()[0], verify);
  const auto& c = p.config();
  std::printf("%s: %s v%s, d_model %lld, %lld layers, vocab %lld; format %s, rank %lld, embedding %s\n",
              args.positionals()[0].c_str(), quant::kFormatName, p.metadata().at("format_version").c_str(),
              (long long)c.d_model, (long long)c.n_layer, (long long)c.padded_vocab(), p.quant().format.c_str(),
              (long long)p.quant().effective_rank(), p.quant().embedding.c_str());
  for (const char* k : {"provenance", "tokenizer_sha256"})
    if (p.metadata().count(k)) std::printf("%s: %s\n", k, p.metadata().at(k).c_str());
  std::printf("tokenizer model: %s\n\n", p.metadata().count("tokenizer_model") ? "embedded" : "none");
  print_accounting(p.layout(), p.file().file_size());
  if (verify) std::printf("codes: all valid\n");
  return 0;
}

}  // namespace dfssm::cli
