// Helpers for the LibTorch model tests.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "model/mamba2.h"

namespace dfssm::test {

// ||a - b|| / ||b||, computed in fp64.
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const auto a64 = a.to(at::kDouble).cpu(), b64 = b.to(at::kDouble).cpu();
  return (a64 - b64).norm().item<double>() / b64.norm().item<double>();
}

// A test-size model whose weights are random enough that a wrong formula changes the logits:
// mamba_ssm init plus noise on the norms, D, the conv and larger projections.
inline Mamba2Model make_test_model(Mamba2Config cfg, uint64_t seed, at::ScalarType dtype = at::kFloat) {
  Mamba2Model m(cfg, at::TensorOptions().dtype(dtype));
  m.init_random(seed);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  at::NoGradGuard ng;
  for (auto& [name, p] : m.named_parameters()) {
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_D = name.size() >= 2 && name.substr(name.size() - 2) == ".D";
    if (is_norm || is_D) p.add_(at::randn(p.sizes(), gen).to(dtype) * 0.2);
    if (name.find("embedding") != std::string::npos) p.mul_(20.0);  // unit-scale activations
  }
  return m;
}

}  // namespace dfssm::test
