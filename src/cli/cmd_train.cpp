// Training commands: `dfssm pretrain|distill|run|validate <job.yaml> [key.sub=value ...]`.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "distill/dist.h"
#include "distill/job_config.h"
#include "distill/pipeline.h"
#include "distill/trainer.h"

namespace dfssm::cli {

const char* const kTrainUsage =
    "usage: dfssm pretrain <job.yaml> [key.sub=value ...] [--dry-run] [--nproc N]\n"
    "       dfssm distill  <job.yaml> [key.sub=value ...] [--dry-run] [--nproc N]\n"
    "       dfssm run      <job.yaml> [key.sub=value ...] [--nproc N]\n"
    "       dfssm validate <job.yaml> [key.sub=value ...]\n"
    "       dfssm validate --schema      (every key, type, default: the table in docs/config.md)\n\n"
    "pretrain  trains a full-precision Mamba-2 teacher with cross-entropy (into teacher.path or <run_dir>/teacher)\n"
    "distill   distills the teacher into the 1-bit DF-SSM student (<run_dir>/student)\n"
    "run       data prepare -> pretrain (if no teacher) -> distill -> export -> eval table -> sample;\n"
    "          finished stages are skipped, so re-running after a crash continues\n"
    "validate  reports every problem of a job at once (unknown keys, types, ranges, files, vocab)\n"
    "--dry-run prints the memory estimate for the job and stops (exit status 1, after the estimate,\n"
    "          when the run would not start: e.g. no prepared data or teacher yet).\n"
    "--nproc N runs N data-parallel processes on this machine (one per GPU with device: cuda;\n"
    "          NCCL on CUDA, Gloo on CPU: dp_backend). torchrun-style RANK, WORLD_SIZE, LOCAL_RANK,\n"
    "          LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT work too. batch_size is per process.\n"
    "          With run, the pretrain and distill stages run as N processes.\n"
    "Checkpoints resume automatically (distill.resume=auto|none|DIR). Example:\n"
    "  dfssm run configs/quickstart.yaml distill.steps=600 run_dir=runs/qs2\n";

namespace {

struct Parsed {
  std::string job;
  std::vector<std::pair<std::string, std::string>> overrides;
  bool dry_run = false, schema = false;
  int nproc = 1;
  std::vector<std::string> rest;  // the arguments without --nproc (for the launched processes)
};

Parsed parse(int argc, char** argv) {
  Parsed p;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (a == "--nproc") {
      DFSSM_CHECK(i + 1 < argc, "--nproc needs a number of processes");
      p.nproc = std::atoi(argv[++i]);
      DFSSM_CHECK(p.nproc >= 1 && p.nproc <= 1024, "--nproc must be between 1 and 1024, got '", argv[i], "'");
      continue;
    }
    p.rest.push_back(a);
    if (a == "--dry-run") p.dry_run = true;
    else if (a == "--schema") p.schema = true;
    else if (a.rfind("--", 0) == 0) throw Error(str("unknown flag ", a, " (see --help)"));
    else if (eq != std::string::npos && eq > 0 && a.substr(0, eq).find('/') == std::string::npos)
      p.overrides.emplace_back(a.substr(0, eq), a.substr(eq + 1));
    else {
      DFSSM_CHECK(p.job.empty(), "one job file expected; got '", p.job, "' and '", a, "'");
      p.job = a;
    }
  }
  DFSSM_CHECK(!p.job.empty() || p.schema, "missing <job.yaml> (see --help)");
  return p;
}

// --dry-run: the memory estimate, then whatever would stop the run. A config that does not parse
// stops here as a run would; missing files (no prepared data or teacher yet) still get the
// estimate (from the job's geometry where the teacher is not on disk) and exit status 1.
int dry_run(const Parsed& p, distill::Mode mode, const char* stage) {
  std::vector<std::string> errors;
  const auto job = distill::load_job(p.job, p.overrides, &errors);
  const bool parsed = errors.empty();
  if (parsed) distill::check_job_files(job, stage, &errors);
  if (parsed) std::printf("%s", distill::memory_estimate(job, mode).c_str()), std::fflush(stdout);
  if (errors.empty()) return 0;
  std::fprintf(stderr, "dfssm %s: %zu problem(s) in %s%s:\n", stage, errors.size(), p.job.c_str(),
               parsed ? " (the run would not start)" : "");
  for (const auto& e : errors) std::fprintf(stderr, "  - %s\n", e.c_str());
  return 1;
}

int train_cmd(int argc, char** argv, distill::Mode mode) {
  const auto p = parse(argc, argv);
  const char* stage = mode == distill::Mode::Pretrain ? "pretrain" : "distill";
  if (p.dry_run) return dry_run(p, mode, stage);  // per process (batch_size is per process)
  if (p.nproc > 1 && !std::getenv("WORLD_SIZE")) {  // launcher: validate once, then start the ranks
    distill::load_job_or_throw(p.job, p.overrides, stage);
    std::vector<std::string> args = {"dfssm", stage};
    args.insert(args.end(), p.rest.begin(), p.rest.end());
    return distill::launch_local(p.nproc, args);
  }
  const auto job = distill::load_job_or_throw(p.job, p.overrides, stage);
  const auto s = distill::train(job, mode);
  std::printf("done: %lld steps, %lld tokens in %.1f s -> %s\n", (long long)s.steps, (long long)s.tokens, s.seconds,
              s.output.c_str());
  return 0;
}

}  // namespace

int cmd_pretrain(int argc, char** argv) { return train_cmd(argc, argv, distill::Mode::Pretrain); }
int cmd_distill(int argc, char** argv) { return train_cmd(argc, argv, distill::Mode::Distill); }

int cmd_run(int argc, char** argv) {
  const auto p = parse(argc, argv);
  DFSSM_CHECK(!p.dry_run, "dfssm run has no --dry-run: use dfssm distill <job.yaml> --dry-run (or pretrain)");
  const char* ws = std::getenv("WORLD_SIZE");
  DFSSM_CHECK(!ws || std::atoi(ws) <= 1, "dfssm run starts its own data-parallel processes: run it once with --nproc N, "
              "not under a launcher (WORLD_SIZE=", ws ? ws : "", ")");
  distill::PipelineOptions opt;
  opt.nproc = p.nproc;
  opt.train_args = p.rest;  // the job file and the overrides
  return distill::run_pipeline(distill::load_job_or_throw(p.job, p.overrides, "run"), opt);
}

int cmd_validate(int argc, char** argv) {
  const auto p = parse(argc, argv);
  if (p.schema) {
    std::printf("%s", distill::schema_markdown().c_str());
    return 0;
  }
  std::vector<std::string> errors;
  const auto job = distill::load_job(p.job, p.overrides, &errors);
  if (errors.empty()) distill::check_job_files(job, "run", &errors);
  if (errors.empty()) {
    std::printf("%s: ok\n%s", p.job.c_str(), job.to_yaml().c_str());
    return 0;
  }
  std::fprintf(stderr, "%zu problem(s) in %s:\n", errors.size(), p.job.c_str());
  for (const auto& e : errors) std::fprintf(stderr, "  - %s\n", e.c_str());
  return 1;
}

}  // namespace dfssm::cli
