// An evaluation engine: something that turns token sequences into logits. Implementations: the
// runtime on a packed file (runtime_engine.h, LibTorch-free) and a LibTorch Mamba2Model
// (torch_engine.h: the teacher, a trainer checkpoint of the student, the init-only student).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/scoring.h"

namespace dfssm::eval {

class Engine {
 public:
  virtual ~Engine() = default;
  // e.g. "runtime cpu (avx2, 2 threads)" or "torch cpu fp32".
  virtual std::string describe() const = 0;
  virtual int64_t vocab() const = 0;       // logits per position: the padded vocabulary
  virtual int64_t vocab_size() const = 0;  // the model's vocabulary (ids must be below it)
  // For each request i: the logits of the last reqs[i]->targets.size() input positions, passed
  // to sink(i, logits) as a row-major [targets.size(), vocab()] array, valid during the call.
  // Requests may be computed in any order and batched.
  using Sink = std::function<void(size_t, const float*)>;
  virtual void run(const std::vector<const Request*>& reqs, const Sink& sink) = 0;
};

}  // namespace dfssm::eval
