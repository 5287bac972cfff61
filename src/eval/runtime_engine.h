// The runtime (src/runtime, LibTorch-free) as an evaluation engine, for packed files.
//
// RuntimeEngine runs the CPU runtime; CudaRuntimeEngine the CUDA backend (runtime/cuda, built
// when DFSSM_HAVE_CUDA_RUNTIME: the INT8 tensor-core prefill). Both feed requests one at a time
// through eval/runtime_requests.h (the chunked prefill already reads the 1-bit weights once per
// chunk, so batching sequences would not save weight traffic).
#pragma once

#include <memory>
#include <string>

#include "eval/engine.h"

namespace dfssm::runtime {
class Model;
class Session;
class CudaSession;
}  // namespace dfssm::runtime

namespace dfssm::eval {

class RuntimeEngine : public Engine {
 public:
  // threads 0: all cores.
  RuntimeEngine(std::shared_ptr<const runtime::Model> model, int threads);
  ~RuntimeEngine() override;
  std::string describe() const override;
  int64_t vocab() const override;
  int64_t vocab_size() const override;
  void run(const std::vector<const Request*>& reqs, const Sink& sink) override;

 private:
  std::shared_ptr<const runtime::Model> model_;
  std::unique_ptr<runtime::Session> session_;
  std::vector<float> buf_;
};

#ifdef DFSSM_HAVE_CUDA_RUNTIME
class CudaRuntimeEngine : public Engine {
 public:
  explicit CudaRuntimeEngine(std::shared_ptr<const runtime::Model> model);
  ~CudaRuntimeEngine() override;
  std::string describe() const override;
  int64_t vocab() const override;
  int64_t vocab_size() const override;
  void run(const std::vector<const Request*>& reqs, const Sink& sink) override;

 private:
  std::shared_ptr<const runtime::Model> model_;
  std::unique_ptr<runtime::CudaSession> session_;
  std::vector<float> buf_;
};
#endif

}  // namespace dfssm::eval
