// The CUDA engine against the trainer: a student exported to a packed file and run by
// runtime::CudaSession must give the LibTorch fake-quant student's logits (fp32, CPU): prefill of
// every position, then 64 decode steps. ngroups 1 (folded norms at batch 1, and the five-kernel
// layers) and 2 (five kernels), fp32 and fp16 state, 3 and 48 layers.
//
// Tolerance: the CUDA projections take fp16 activation operands (the CPU engine's fp32 path
// matches the trainer to ~6e-7, test_runtime.cpp), ~1e-3 relative logit error measured against
// the CPU engine at 1.3B (tests/test_cuda_runtime.cpp); asserted < 2e-2 as there. The INT8
// prefill quantizes activations per token to 8 bits: it must be no worse than 1.5x the CPU
// engine's own int8 path (`act i8`) on the same file, + 1e-2.
// Needs LibTorch and a GPU (label gpu): scripts/device/build_and_test.sh runs it.
#include <cstdio>
#include <string>

#include "catch_compat.h"
#include "runtime/cuda/cuda_session.h"
#include "runtime/model.h"
#include "runtime/session.h"
#include "runtime_test_util.h"
#include "test_util.h"

using namespace dfssm;

namespace {

Mamba2Config config(int64_t ngroups, int64_t layers) {
  auto c = Mamba2Config::geometry("test");
  c.d_model = 128;  // d_inner 256: the CUDA kernels want multiples of 64
  c.n_layer = layers;
  c.vocab_size = 250;
  c.ngroups = ngroups;
  return c;
}

double cuda_vs_trainer(const test::Exported& e, const std::vector<int32_t>& ids, int steps,
                       const runtime::CudaSessionOptions& o) {
  runtime::CudaSession s(runtime::Model::load(e.path), 1, o);
  return test::engine_vs_trainer(e, s, ids, steps);
}

}  // namespace

TEST_CASE("CUDA engine logits equal the LibTorch student's (prefill + 64 decode steps)", "[gpu][cuda_student]") {
  for (const auto& [groups, layers] : std::vector<std::pair<int64_t, int64_t>>{{1, 3}, {2, 3}, {1, 48}}) {
    quant::QuantConfig q;
    q.rank = 8;
    const auto cfg = config(groups, layers);
    const std::string path = test::tmp_path("cuda_student", "s_g" + std::to_string(groups) + "_l" +
                                                                std::to_string(layers) + ".dfssm.safetensors");
    const auto e = test::make_exported(cfg, q, path, 31 + uint64_t(groups) + uint64_t(layers));
    const auto ids = test::random_ids(150, cfg.vocab_size, 5);
    for (const char* st : {"f32", "f16"})
      for (bool fold : {true, false}) {
        runtime::CudaSessionOptions o;
        o.state_dtype = st;
        o.fold_norms = fold;
        o.int8_prefill = false;  // prefill through the decode kernels: the fp16-operand path
        const double err = cuda_vs_trainer(e, ids, 64, o);
        std::printf("cuda vs trainer: ngroups %lld, %lld layers, %s state, folded norms %d: worst rel err %.2e\n",
                    (long long)groups, (long long)layers, st, int(fold && groups == 1), err);
        CHECK(err < 2e-2);
      }
    // The INT8 prefill against the CPU engine's own int8 activations, both vs the trainer. (This
    // geometry, headdim = d_state = 16, once made the scan refuse its block shape: an exception
    // in the engine, found by this test; the scan now falls back to 8 state elements per thread.)
    runtime::CudaSessionOptions o8;
    REQUIRE(runtime::CudaSession(runtime::Model::load(e.path), 1, o8).options().int8_prefill);
    const double e_gpu = cuda_vs_trainer(e, ids, 64, o8);
    runtime::SessionOptions so;
    so.act = "i8";
    runtime::Session cs(runtime::Model::load(e.path), 1, so);
    const double e_cpu = test::engine_vs_trainer(e, cs, ids, 64);
    std::printf("cuda int8 prefill vs trainer: ngroups %lld, %lld layers: %.2e (cpu i8: %.2e)\n", (long long)groups,
                (long long)layers, e_gpu, e_cpu);
    CHECK(e_gpu < 1.5 * e_cpu + 1e-2);
  }
}
