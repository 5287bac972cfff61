// The dfssm subcommands. Each returns the process exit code; errors are thrown as
// dfssm::Error and reported by main().
#pragma once

namespace dfssm::cli {

struct Command {
  const char* name;
  const char* summary;
  const char* usage;  // full help text for `dfssm <name> --help`
  int (*run)(int argc, char** argv);
};

int cmd_info(int argc, char** argv);
extern const char* const kInfoUsage;
int cmd_inspect(int argc, char** argv);
extern const char* const kInspectUsage;
// The runtime (no LibTorch): generation and benchmarks. `bench --engine torch` forwards to
// cmd_bench_torch when LibTorch is built in.
int cmd_generate(int argc, char** argv);
extern const char* const kGenerateUsage;
int cmd_bench(int argc, char** argv);
extern const char* const kBenchUsage;
#ifdef DFSSM_WITH_TORCH
int cmd_init(int argc, char** argv);
extern const char* const kInitUsage;
int cmd_bench_torch(int argc, char** argv);
int cmd_quantize(int argc, char** argv);
extern const char* const kQuantizeUsage;
int cmd_export(int argc, char** argv);
extern const char* const kExportUsage;
int cmd_pretrain(int argc, char** argv);
int cmd_distill(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_validate(int argc, char** argv);
extern const char* const kTrainUsage;
// Evaluation (src/eval, docs/eval.md): `dfssm eval`, `eval --check-export`, `eval make-task`.
int cmd_eval(int argc, char** argv);
extern const char* const kEvalUsage;
#endif
#ifdef DFSSM_WITH_DATA
int cmd_data(int argc, char** argv);
extern const char* const kDataUsage;
#endif

}  // namespace dfssm::cli
