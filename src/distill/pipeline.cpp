#include "distill/pipeline.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/safetensors.h"
#include "distill/data/config.h"
#include "distill/data/loader.h"
#include "distill/data/manifest.h"
#include "distill/data/prepare.h"
#include "distill/data/tokenizer.h"
#include "distill/dist.h"
#include "distill/loss.h"
#include "distill/trainer.h"
#include "eval/make_task.h"
#include "eval/run.h"
#include "model/checkpoint.h"
#include "model/checkpoint_files.h"
#include "quant/student.h"

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace dfssm::distill {

std::string sample_text(const Mamba2Model& model, const std::string& dataset_dir, const std::string& prompt, int64_t n,
                        uint64_t seed) {
  at::NoGradGuard ng;
  const auto m = data::read_manifest(dataset_dir);
  if (m.tokenizer_file.empty()) return "(no tokenizer: the dataset is pre-tokenized)";
  const auto tok = data::Tokenizer::load((fs::path(dataset_dir) / m.tokenizer_file).string());
  auto ids = tok.encode(prompt);
  const auto dev = model.device();
  auto st = model.new_state(1);
  std::vector<int64_t> p(ids.begin(), ids.end());
  auto logits = model.forward(at::tensor(p, at::kLong).view({1, -1}).to(dev), &st).select(1, -1);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    auto l = logits.to(at::kFloat).cpu().view({-1}).narrow(0, 0, m.vocab_size) / 0.8;  // temperature 0.8
    auto [top, idx] = l.topk(40);
    const auto probs = at::softmax(top, 0);
    const int64_t k = at::multinomial(probs, 1, false, gen).item<int64_t>();
    const int32_t next = int32_t(idx[k].item<int64_t>());
    if (next == m.eos_id) break;
    out.push_back(next);
    logits = model.step(at::full({1}, int64_t(next), at::kLong).to(dev), st);
  }
  return prompt + tok.decode(out);
}

namespace {

using Clock = std::chrono::steady_clock;

void stage(const char* name, const std::string& what) { std::printf("\n== %s: %s\n", name, what.c_str()), std::fflush(stdout); }

// A training stage, in this process or as opt.nproc data-parallel ones (which print their own
// summary line).
void train_stage(const JobConfig& job, Mode mode, const PipelineOptions& opt) {
  const char* name = mode == Mode::Pretrain ? "pretrain" : "distill";
  if (opt.nproc > 1) {
    std::vector<std::string> args = {"dfssm", name};
    args.insert(args.end(), opt.train_args.begin(), opt.train_args.end());
    std::fflush(stdout);
    const int rc = launch_local(opt.nproc, args);
    DFSSM_CHECK(rc == 0, "the ", name, " stage's ", opt.nproc, " processes failed (exit status ", rc,
                "); its checkpoints are kept: re-run to continue");
    return;
  }
  const auto s = train(job, mode);
  std::printf("%s %lld steps, %lld tokens in %.1f s\n", mode == Mode::Pretrain ? "pretrained" : "distilled",
              (long long)s.steps, (long long)s.tokens, s.seconds);
}

}  // namespace

int run_pipeline(const JobConfig& job, const PipelineOptions& opt) {
  const auto t0 = Clock::now();
  const at::Device dev = job.device == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  if (job.threads > 0) at::set_num_threads(int(job.threads));
  // 1. Data.
  if (fs::exists(job.dataset_dir() + "/manifest.json")) {
    stage("data", "using " + job.dataset_dir());
  } else {
    DFSSM_CHECK(!job.data_prepare.empty(), "no dataset at ", job.dataset_dir(), " and no data.prepare config");
    stage("data", "preparing " + job.data_prepare + " -> " + job.dataset_dir());
    auto dc = data::load_data_config(job.data_prepare, {{"output", job.dataset_dir()}, {"overwrite", "true"}});
    data::PrepareLog log;
    log.info = [](const std::string& s) { std::printf("%s\n", s.c_str()); };
    log.warn = [](const std::string&) {};
    data::prepare_data(dc, log);
  }
  // 2. Teacher.
  const bool have_teacher = !job.teacher_path.empty() || stage_done(job, Mode::Pretrain);
  if (have_teacher) {
    stage("pretrain", "teacher " + job.teacher_dir() + " exists, skipped");
  } else {
    stage("pretrain", "no teacher given: pretraining a " + job.geometry + " Mamba-2 -> " + job.teacher_dir());
    train_stage(job, Mode::Pretrain, opt);
  }
  // 3. Distill.
  if (stage_done(job, Mode::Distill)) {
    stage("distill", "student " + job.student_dir() + "/final exists, skipped");
  } else {
    stage("distill", "1-bit student (" + job.quant.format + ", rank " + std::to_string(job.quant.effective_rank()) +
                         ") -> " + job.student_dir());
    train_stage(job, Mode::Distill, opt);
  }
  // 4. Export.
  auto student = quant::load_student(job.student_dir() + "/final", dev);
  // The export is current only if it is newer than the finished distillation it packs.
  const bool exported = fs::exists(job.packed_path()) &&
                        fs::last_write_time(job.packed_path()) >= fs::last_write_time(job.student_dir() + "/DONE");
  if (exported) {
    stage("export", job.packed_path() + " is up to date, skipped");
  } else {
    stage("export", job.packed_path());
    quant::export_packed(*student, job.packed_path());
  }
  // 5. Evaluation through src/eval (docs/eval.md): teacher | distilled student (the packed file,
  // on the runtime) | init-only student (binarized from the teacher, untrained), on the held-out
  // split (rolling perplexity, lm-eval's rules, windows of data.seq_len) and a multiple-choice
  // "next line" task generated from the held-out documents.
  stage("eval", "held-out split of " + job.dataset_dir() + " -> " + job.run_dir + "/eval");
  const std::string eval_dir = job.run_dir + "/eval";
  eval::EvalConfig ec;
  ec.teacher = job.teacher_dir();
  ec.student = job.packed_path();
  ec.student_checkpoint = job.student_dir() + "/final";
  ec.data = job.dataset_dir();
  ec.device = job.device;
  ec.threads = int(job.threads);
  ec.max_length = job.distill.seq_len;
  ec.limit = job.eval_limit;
  ec.prefix_token = "eos";  // the trainer's streams separate documents by EOS, never BOS
  ec.seed = job.seed;
  ec.output = eval_dir;
  ec.tasks.push_back(eval::parse_task_spec("heldout=" + job.dataset_dir()));
  const auto manifest = data::read_manifest(job.dataset_dir());
  if (manifest.tokenizer_type == "sentencepiece") {
    const std::string nextline = eval_dir + "/tasks/nextline.jsonl";
    if (!fs::exists(nextline)) {
      std::vector<std::string> names;
      const auto texts = eval::dataset_texts(job.dataset_dir(), "val", &names);
      eval::MakeTaskOptions mo;
      mo.seed = job.seed;
      eval::write_jsonl(nextline, eval::make_nextline_task(texts, names, mo));
    }
    ec.tasks.push_back(eval::parse_task_spec(nextline));
  }
  eval::run_eval(ec);
  std::filesystem::copy_file(eval_dir + "/summary.json", job.run_dir + "/eval.json",
                             std::filesystem::copy_options::overwrite_existing);
  // 6. A sample from the distilled student.
  stage("sample", "student, top-k 40, temperature 0.8");
  std::printf("%s\n", sample_text(*student->model, job.dataset_dir(), "def ", 60, job.seed).c_str());
  std::printf("\nrun finished in %.1f s; outputs in %s\n", std::chrono::duration<double>(Clock::now() - t0).count(),
              job.run_dir.c_str());
  return 0;
}

}  // namespace dfssm::distill
