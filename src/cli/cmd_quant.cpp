// Student commands (LibTorch): `dfssm quantize` (initialise a DF-SSM student from a teacher,
// no training) and `dfssm export` (student checkpoint -> packed file).
#include <chrono>
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "distill/data/sha256.h"
#include "model/checkpoint_files.h"
#include "model/checkpoint.h"
#include "quant/layout.h"
#include "quant/student.h"

namespace dfssm::cli {

const char* const kQuantizeUsage =
    "usage: dfssm quantize <teacher-checkpoint> -o <student-dir> [--seed N] [--device cpu|cuda] [key=value ...]\n"
    "       dfssm quantize --geometry NAME --random [--teacher-seed N] [-o <student-dir>] [key=value ...]\n\n"
    "Initialises a DF-SSM student from a teacher without training (docs/method.md): the SVID\n"
    "magnitude field, row-normalised sign latents and an int8 low-rank fit of the residual. Prints\n"
    "the relative reconstruction error of the projections and writes a student checkpoint that\n"
    "`dfssm export` packs (and the trainer resumes from).\n"
    "  key=value   quant options (docs/format.md): format=binary_lowrank rank=19 embedding=int8 ...\n"
    "  --random    use a randomly initialised teacher of --geometry (for measurements)\n"
    "  -o          output directory; omitted with --random to only report the error\n";

const char* const kExportUsage =
    "usage: dfssm export <student-dir> -o <model.dfssm.safetensors> [--tokenizer FILE.model]\n"
    "                    [--teacher-sha256 HEX] [--tokens-seen N] [--steps N]\n\n"
    "Packs a student checkpoint into the packed file (docs/format.md): bit-packed codes, fp16\n"
    "field and scales, int8 low-rank factors and embedding, small fp parameters. The tokenizer\n"
    "model is embedded in the metadata. Provenance flags override what the checkpoint records.\n";

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

at::Device device_of(const std::string& s) {
  DFSSM_CHECK(s == "cpu" || s == "cuda", "--device must be cpu or cuda, got '", s, "'");
  return s == "cuda" ? at::Device(at::kCUDA) : at::Device(at::kCPU);
}
}  // namespace

int cmd_quantize(int argc, char** argv) {
  Args args(argc, argv, {"random"});
  quant::QuantConfig q;
  Mamba2Config overrides_cfg;
  std::vector<std::pair<std::string, std::string>> model_over;
  const auto keys = quant::QuantConfig::keys();
  for (auto [k, v] : args.overrides()) {
    if (k.rfind("quant.", 0) == 0) k = k.substr(6);
    if (std::find(keys.begin(), keys.end(), k) != keys.end()) q.set(k, v);
    else model_over.emplace_back(k, v);
  }
  q.validate("quant options");
  const uint64_t seed = uint64_t(args.get_int("seed", 0));
  const auto device = device_of(args.get("device", "cpu"));
  const std::string out = args.get("output", "");
  const bool random = args.has("random");
  const std::string geometry = args.get("geometry", "");
  const uint64_t teacher_seed = uint64_t(args.get_int("teacher-seed", 0));
  args.check_unused();

  auto t0 = Clock::now();
  std::unique_ptr<Mamba2Model> teacher;
  std::string teacher_path;
  if (random) {
    DFSSM_CHECK(!geometry.empty(), "--random needs --geometry NAME");
    auto cfg = Mamba2Config::geometry(geometry);
    for (auto& [k, v] : model_over) cfg.set(k, v);
    cfg.validate("--geometry");
    teacher = std::make_unique<Mamba2Model>(cfg, at::TensorOptions().dtype(at::kFloat).device(device));
    teacher->init_random(teacher_seed);
  } else {
    DFSSM_CHECK(args.positionals().size() == 1, "usage: dfssm quantize <teacher-checkpoint> -o <student-dir>");
    DFSSM_CHECK(model_over.empty(), "unknown quant key '", model_over[0].first, "' (known: see dfssm quantize --help)");
    DFSSM_CHECK(!out.empty(), "dfssm quantize: -o <student-dir> is required");
    teacher_path = args.positionals()[0];
    teacher = load_model(teacher_path, at::kFloat, device);
  }
  std::printf("teacher: %lld parameters (%.1f s)\n", (long long)teacher->config().num_params(), since(t0));
  t0 = Clock::now();
  auto student = quant::make_student(*teacher, q, seed, device);
  const double init_s = since(t0);
  std::printf("student init (%s, rank %lld): %.1f s\n", q.format.c_str(), (long long)q.effective_rank(), init_s);
  std::printf("projection reconstruction error ||W - W_eff||_F / ||W||_F: %.6f\n",
              quant::projection_error(*student, *teacher));
  if (!out.empty()) {
    student->meta["teacher_path"] = teacher_path.empty() ? "random:" + geometry : teacher_path;
    if (!teacher_path.empty())  // the provenance names the exact teacher weights
      student->meta["teacher_sha256"] = data::sha256_file(locate_checkpoint(teacher_path).weights);
    student->meta["init_seed"] = std::to_string(seed);
    student->meta["tokens_seen"] = "0";
    student->meta["steps"] = "0";
    t0 = Clock::now();
    save_student(*student, out);
    std::printf("wrote student checkpoint %s (%.1f s)\n", out.c_str(), since(t0));
  }
  return 0;
}

int cmd_export(int argc, char** argv) {
  Args args(argc, argv);
  const std::string out = args.require("output");
  const std::string tok = args.get("tokenizer", "");
  const std::string teacher_sha = args.get("teacher-sha256", "");
  const std::string tokens = args.get("tokens-seen", ""), steps = args.get("steps", "");
  args.check_unused();
  DFSSM_CHECK(args.positionals().size() == 1, "usage: dfssm export <student-dir> -o <file>");
  auto t0 = Clock::now();
  auto s = quant::load_student(args.positionals()[0]);
  if (!tok.empty()) {
    DFSSM_CHECK(std::filesystem::exists(tok), "--tokenizer ", tok, ": file not found");
    s->meta["tokenizer_path"] = tok;
    s->meta["tokenizer_sha256"] = data::sha256_file(tok);
  }
  if (!teacher_sha.empty()) s->meta["teacher_sha256"] = teacher_sha;
  if (!tokens.empty()) s->meta["tokens_seen"] = tokens;
  if (!steps.empty()) s->meta["steps"] = steps;
  const double load_s = since(t0);
  t0 = Clock::now();
  const uint64_t bytes = quant::export_packed(*s, out);
  const auto layout = quant::packed_layout(s->model->config(), s->quant);
  const uint64_t predicted = quant::packed_file_size(layout, quant::packed_metadata(*s));
  DFSSM_ASSERT(bytes == predicted, "exported ", bytes, " bytes, accounting predicted ", predicted);
  std::printf("wrote %s: %.2f MB (%llu bytes; load %.1f s, pack+write %.1f s)\n", out.c_str(), double(bytes) / 1e6,
              (unsigned long long)bytes, load_s, since(t0));
  return 0;
}

}  // namespace dfssm::cli
