// The runtime (src/runtime, LibTorch-free) as an evaluation engine, for packed files.
//
// Requests are prefilled one at a time (the chunked prefill already reads the 1-bit weights once
// per 64 tokens, so batching sequences would not save weight traffic on the CPU). Requests of one
// group (the choices of a multiple-choice document) share their context: it is prefilled once,
// its recurrent state saved, and each choice continues from a restored copy. This is exact for a
// recurrent model (the same logits up to summation order).
#pragma once

#include <memory>
#include <string>

#include "eval/engine.h"

namespace dfssm::runtime {
class Model;
class Session;
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

}  // namespace dfssm::eval
