// The CUDA runtime (runtime::CudaSession) as an evaluation engine for packed files: `dfssm eval
// --device cuda` and `dfssm run` with device: cuda. Prompts of 16+ tokens prefill through the
// INT8 tensor-core GEMMs (activations quantized per token), shorter ones as decode steps; the
// logits of every position come back to the host. test_cuda_student compares these logits with
// the LibTorch student's.
#include "eval/runtime_engine.h"
#include "eval/runtime_requests.h"
#include "runtime/cuda/cuda_session.h"

namespace dfssm::eval {

CudaRuntimeEngine::CudaRuntimeEngine(std::shared_ptr<const runtime::Model> model) : model_(std::move(model)) {
  session_ = std::make_unique<runtime::CudaSession>(model_, 1);
}

CudaRuntimeEngine::~CudaRuntimeEngine() = default;

std::string CudaRuntimeEngine::describe() const {
  return "runtime cuda (" + session_->device_name() +
         (session_->options().int8_prefill ? ", int8 prefill)" : ", prefill as decode steps)");
}
int64_t CudaRuntimeEngine::vocab() const { return session_->vocab(); }
int64_t CudaRuntimeEngine::vocab_size() const { return model_->config().vocab_size; }

void CudaRuntimeEngine::run(const std::vector<const Request*>& reqs, const Sink& sink) {
  run_requests(*session_, reqs, sink, buf_);
}

}  // namespace dfssm::eval
