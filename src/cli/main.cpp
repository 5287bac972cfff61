// dfssm: one binary, many subcommands (`dfssm --help`).
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"

namespace dfssm::cli {
namespace {

const std::vector<Command>& commands() {
  static const std::vector<Command> cmds = {
      {"info", "show a checkpoint's config, parameter groups, dtypes and bytes", kInfoUsage, cmd_info},
      {"inspect", "size accounting of a packed file, or of a geometry + quant config", kInspectUsage, cmd_inspect},
      {"generate", "generate text with a packed model on the runtime (no LibTorch)", kGenerateUsage, cmd_generate},
      {"bench", "time the runtime (or, with --engine torch, the LibTorch model)", kBenchUsage, cmd_bench},
#ifdef DFSSM_WITH_TORCH
      {"init", "write a randomly initialised Mamba-2 checkpoint (mamba_ssm init)", kInitUsage, cmd_init},
      {"quantize", "initialise a DF-SSM student from a teacher (no training)", kQuantizeUsage, cmd_quantize},
      {"export", "pack a student checkpoint into a .dfssm.safetensors file", kExportUsage, cmd_export},
      {"pretrain", "train a full-precision Mamba-2 teacher (cross-entropy) from a job YAML", kTrainUsage, cmd_pretrain},
      {"distill", "distill a teacher into the 1-bit DF-SSM student from a job YAML", kTrainUsage, cmd_distill},
      {"run", "the whole pipeline: data -> pretrain -> distill -> export -> eval", kTrainUsage, cmd_run},
      {"validate", "check a job YAML and report every problem at once", kTrainUsage, cmd_validate},
      {"eval", "student vs teacher with lm-eval scoring; --check-export; make-task", kEvalUsage, cmd_eval},
#endif
#ifdef DFSSM_WITH_DATA
      {"data", "prepare, inspect and benchmark tokenized training data (HDF5 shards)", kDataUsage, cmd_data},
#endif
  };
  return cmds;
}

void print_help() {
  std::printf(
      "dfssm %s: compress Mamba-2 language models to 1 bit by distillation\n\n"
      "usage: dfssm <command> [args] [--help]\n\ncommands:\n",
      DFSSM_VERSION);
  for (const auto& c : commands()) std::printf("  %-10s %s\n", c.name, c.summary);
  std::printf("\nRun `dfssm <command> --help` for a command's options. Docs: README.md, docs/.\n");
}

}  // namespace
}  // namespace dfssm::cli

int main(int argc, char** argv) {
  using namespace dfssm::cli;
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_help();
    return argc < 2 ? 1 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("dfssm %s\n", DFSSM_VERSION);
    return 0;
  }
  const std::string name = argv[1];
  for (const auto& c : commands()) {
    if (name != c.name) continue;
    for (int i = 2; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
        std::printf("%s", c.usage);
        return 0;
      }
    }
    try {
      return c.run(argc - 2, argv + 2);
    } catch (const dfssm::InternalError& e) {
      std::fprintf(stderr, "dfssm %s: %s\n", c.name, e.what());
      return 70;
    } catch (const dfssm::Error& e) {
      std::fprintf(stderr, "dfssm %s: error: %s\n", c.name, e.what());
      return 1;
    } catch (const std::exception& e) {
      // Library errors (LibTorch, HDF5, ...): keep the first line, it holds the message.
      std::string msg = e.what();
      if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
      std::fprintf(stderr, "dfssm %s: error: %s\n", c.name, msg.c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "dfssm: unknown command '%s' (see dfssm --help)\n", name.c_str());
  return 2;
}
