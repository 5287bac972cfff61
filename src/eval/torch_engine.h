// A LibTorch Mamba2Model as an evaluation engine (teacher, student checkpoint, init-only
// student), on the CPU or CUDA.
//
// Requests are sorted by length and run in right-padded batches of up to batch_size sequences
// (and batch_tokens padded tokens): the model is causal, so padding after a sequence never
// changes its logits. Only the scored positions go through the LM head, in fp32.
#pragma once

#include <string>

#include "eval/engine.h"
#include "model/mamba2.h"

namespace dfssm::eval {

class TorchEngine : public Engine {
 public:
  TorchEngine(const Mamba2Model& model, int64_t batch_size, int64_t batch_tokens = 32768);
  std::string describe() const override;
  int64_t vocab() const override { return model_.config().padded_vocab(); }
  int64_t vocab_size() const override { return model_.config().vocab_size; }
  void run(const std::vector<const Request*>& reqs, const Sink& sink) override;

 private:
  const Mamba2Model& model_;
  int64_t batch_size_, batch_tokens_;
};

}  // namespace dfssm::eval
