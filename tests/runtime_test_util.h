// Helpers shared by the runtime tests against the trainer (test_runtime.cpp, CPU engine;
// test_cuda_student.cpp, CUDA engine): a student exported to a packed file, and an engine's
// logits (prefill of every position, then decode steps) against the LibTorch student's.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "catch_compat.h"
#include "model_test_util.h"
#include "quant/student.h"

namespace dfssm::test {

struct Exported {
  std::unique_ptr<quant::Student> student;
  std::string path;
};

// A student initialised from a random teacher, with its latents/fields nudged by noise (so the
// test does not only see an init-only student), exported to a packed file.
inline Exported make_exported(const Mamba2Config& cfg, const quant::QuantConfig& q, const std::string& path,
                              uint64_t seed) {
  auto teacher = test::make_test_model(cfg, seed);
  Exported e;
  e.student = quant::make_student(teacher, q, seed);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 7);
  at::NoGradGuard ng;
  for (auto& sc : e.student->scaffolds())
    if (sc) sc->w_lat.add_(at::randn(sc->w_lat.sizes(), gen) * 0.05);
  e.path = path;
  quant::export_packed(*e.student, e.path);
  // The file stores conv1d and the norms in small_dtype and dense projections in fp16, rounded
  // from the fp32 masters (docs/format.md). Round the LibTorch student the same way, so the two
  // sides hold the same weights and only the arithmetic differs.
  for (auto& [key, t] : e.student->model->named_parameters()) {
    const bool dense_proj = key.find("_proj.weight") != std::string::npos;
    const bool small = key.find("conv1d") != std::string::npos || key.find("norm") != std::string::npos;
    if (dense_proj || (small && q.small_dtype == "f16")) t.copy_(t.to(at::kHalf).to(at::kFloat));
  }
  return e;
}

inline double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    REQUIRE(std::isfinite(a[i]));
    num += double(a[i] - b[i]) * double(a[i] - b[i]);
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / den);
}

inline std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& t : ids) t = int32_t(rng() % uint64_t(vocab));
  return ids;
}

// The engine (runtime::Session or runtime::CudaSession on sequence 0, fresh) against the
// LibTorch student: prefill of `ids` (every position's logits), then `steps` decode steps on
// fixed random ids. Returns the worst relative L2 error over all positions.
template <class Engine>
double engine_vs_trainer(const Exported& e, Engine& s, const std::vector<int32_t>& ids, int steps) {
  const auto& model = *e.student->model;
  const int64_t V = model.config().padded_vocab(), n = int64_t(ids.size());
  at::NoGradGuard ng;
  auto ids_t = at::empty({1, n}, at::kLong);
  for (int64_t i = 0; i < n; ++i) ids_t[0][i] = ids[size_t(i)];
  auto state = model.new_state(1);
  const auto ref_prefill = model.forward(ids_t, &state).contiguous();  // (1, n, V) fp32
  std::vector<float> all(static_cast<size_t>(n * V));
  s.prefill(0, ids.data(), n, all.data());
  double worst = 0;
  for (int64_t t = 0; t < n; ++t)
    worst = std::max(worst, rel_l2(all.data() + t * V, ref_prefill.data_ptr<float>() + t * V, V));
  const auto next_ids = random_ids(steps, model.config().vocab_size, 99);
  std::vector<int32_t> tok(static_cast<size_t>(s.batch()), 0);
  for (int i = 0; i < steps; ++i) {
    const auto ref = model.step(at::full({1}, int64_t(next_ids[size_t(i)]), at::kLong), state).contiguous();
    tok[0] = next_ids[size_t(i)];
    const float* got = s.step(tok.data());
    worst = std::max(worst, rel_l2(got, ref.data_ptr<float>(), V));
  }
  return worst;
}

}  // namespace dfssm::test
