// `dfssm eval`: student against teacher with lm-evaluation-harness's scoring (docs/eval.md);
// `dfssm eval --check-export` (LibTorch student vs its packed file); `dfssm eval make-task`.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "eval/make_task.h"
#include "eval/run.h"

namespace fs = std::filesystem;

namespace dfssm::cli {

const char* const kEvalUsage =
    "usage: dfssm eval [CONFIG.yaml] [--teacher CKPT] [--student FILE.dfssm.safetensors|STUDENT_DIR]\n"
    "                  [--tasks SPEC[,SPEC...]] [--data DATASET_DIR] [-o OUT_DIR] [options] [key=value ...]\n"
    "       dfssm eval --check-export --student FILE.dfssm.safetensors --student-checkpoint DIR\n"
    "                  [--tasks ...|--data DIR] [--tolerance 1e-3]\n"
    "       dfssm eval make-task (--data DATASET_DIR | FILE...) -o TASK.jsonl [--n 200] [--choices 4]\n"
    "                  [--distractors other-files|same-file] [--split val] [--seed 0]\n\n"
    "Evaluates the teacher, the student and the init-only student (the teacher binarized with the\n"
    "student's quant config, untrained) on language-modelling and zero-shot multiple-choice tasks,\n"
    "scored as lm-evaluation-harness scores them (docs/eval.md). Prints a Markdown table (teacher |\n"
    "student | init-only | delta) and, with -o, writes OUT/<model>/results.json (lm-eval's shape),\n"
    "OUT/summary.json and OUT/eval.png.\n\n"
    "  --teacher P            a Mamba-2 checkpoint (any layout `dfssm info` loads)\n"
    "  --student P            a packed file (runs on the CPU runtime) or a student checkpoint (LibTorch)\n"
    "  --student-checkpoint D / --packed F   the other form of the student, for --check-export\n"
    "  --tasks SPEC,...       [name=]PATH[:layout]; PATH is a prepared dataset directory (rolling\n"
    "                         perplexity on its val split), a .txt, a .jsonl (multiple choice:\n"
    "                         generic / hellaswag / piqa / arc / winogrande; lambada; or text with\n"
    "                         layout lm) or a .bin/.npy token file\n"
    "  --data DIR             a prepared dataset: its tokenizer, and the default task (its val split)\n"
    "  --tokenizer F.model    the SentencePiece model (default: the dataset's, else the packed file's)\n"
    "  --limit N              the first N documents of each task (0 = all)\n"
    "  --max-length N         lm-eval's max_length: rolling window / truncation (default 2048)\n"
    "  --prefix-token T       auto (BOS, else EOS, as lm-eval) | bos | eos | an id\n"
    "  --device cpu|cuda      device of the LibTorch models and of the packed file (CUDA runtime)\n"
    "  --teacher-dtype fp32|fp16|bf16   --batch-size N (LibTorch)   --threads N   --seed N (init-only)\n"
    "  --init-only false      leave out the init-only row         --plot false   no PNG\n"
    "  --check-export         only compare the LibTorch student with the packed file on the same inputs\n"
    "                         (the tasks, --data's val split, or random ids); exit 1 if their CE per\n"
    "                         token differs by more than --tolerance (default 1e-3 nats)\n"
    "  --check-limit N        documents per task for --check-export (default 8)\n"
    "A CONFIG.yaml holds the same keys (underscores: student_checkpoint, max_length, ...); tasks may\n"
    "be a list of specs or of mappings {name, path, layout, split, field, target_delimiter, limit}.\n";

namespace {

int cmd_make_task(int argc, char** argv) {
  Args args(argc, argv);
  eval::MakeTaskOptions o;
  const std::string data = args.get("data", ""), split = args.get("split", "val"), out = args.get("output", "");
  o.kind = args.get("kind", o.kind);
  o.distractors = args.get("distractors", o.distractors);
  o.n = args.get_int("n", o.n);
  o.choices = args.get_int("choices", o.choices);
  o.seed = uint64_t(args.get_int("seed", 0));
  o.context_lines = args.get_int("context-lines", o.context_lines);
  o.max_context_bytes = args.get_int("max-context-bytes", o.max_context_bytes);
  o.min_line_chars = args.get_int("min-line-chars", o.min_line_chars);
  o.max_line_chars = args.get_int("max-line-chars", o.max_line_chars);
  args.check_unused();
  DFSSM_CHECK(!out.empty(), "make-task: -o TASK.jsonl is required");
  std::vector<std::string> texts, names;
  if (!data.empty()) texts = eval::dataset_texts(data, split, &names);
  for (const auto& p : args.positionals()) {
    std::ifstream f(p, std::ios::binary);
    DFSSM_CHECK(f, "make-task: cannot open '", p, "'");
    std::stringstream ss;
    ss << f.rdbuf();
    texts.push_back(ss.str());
    names.push_back(p);
  }
  DFSSM_CHECK(!texts.empty(), "make-task: give --data DATASET_DIR (its held-out split) or text files");
  const auto lines = eval::make_nextline_task(texts, names, o);
  eval::write_jsonl(out, lines);
  std::printf("wrote %s: %zu items (%s, %lld choices, distractors %s) from %zu documents\n", out.c_str(), lines.size(),
              o.kind.c_str(), (long long)o.choices, o.distractors.c_str(), texts.size());
  return 0;
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  if (argc > 0 && std::string(argv[0]) == "make-task") return cmd_make_task(argc - 1, argv + 1);
  Args args(argc, argv, {"check-export", "quiet"});
  DFSSM_CHECK(args.positionals().size() <= 1, "dfssm eval takes at most one positional argument (a config YAML), got ",
              args.positionals().size());
  auto overrides = args.overrides();
  for (const auto& k : eval::EvalConfig::keys()) {
    std::string flag = k;
    for (auto& ch : flag)
      if (ch == '_') ch = '-';
    if (args.has(flag)) overrides.emplace_back(k, args.get(flag, ""));
  }
  args.check_unused();
  const auto cfg = eval::load_eval_config(args.positionals().empty() ? "" : args.positionals()[0], overrides);
  if (cfg.check_export) {
    const auto r = eval::check_export(cfg);
    std::printf("check-export: LibTorch student vs packed file (runtime), CE in nats/token\n");
    std::printf("| %-20s | %7s | %12s | %12s | %10s | %12s | %12s |\n", "inputs", "tokens", "CE torch", "CE runtime",
                "|dCE|", "max|dlogit|", "max rel l2");
    for (const auto& row : r.rows)
      std::printf("| %-20s | %7lld | %12.6f | %12.6f | %10.2e | %12.3e | %12.3e |\n", row.task.c_str(),
                  (long long)row.tokens, row.ce_torch, row.ce_runtime, std::fabs(row.ce_torch - row.ce_runtime),
                  row.max_abs_logit_diff, row.max_rel_logit_diff);
    if (!r.passed)
      throw Error("check-export FAILED: the packed file's CE differs from the LibTorch student's by " +
                  std::to_string(r.worst) + " nats/token, more than the tolerance " + std::to_string(cfg.tolerance));
    std::printf("check-export passed: worst |dCE| %.2e <= tolerance %.1e\n", r.worst, cfg.tolerance);
    return 0;
  }
  eval::run_eval(cfg);
  return 0;
}

}  // namespace dfssm::cli
