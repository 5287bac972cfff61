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
#ifdef DFSSM_WITH_TORCH
int cmd_init(int argc, char** argv);
extern const char* const kInitUsage;
int cmd_bench(int argc, char** argv);
extern const char* const kBenchUsage;
#endif
#ifdef DFSSM_WITH_DATA
int cmd_data(int argc, char** argv);
extern const char* const kDataUsage;
#endif

}  // namespace dfssm::cli
