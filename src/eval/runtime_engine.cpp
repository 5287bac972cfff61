#include "eval/runtime_engine.h"

#include "eval/runtime_requests.h"

#include "kernels/cpu/isa.h"
#include "runtime/model.h"
#include "runtime/session.h"

namespace dfssm::eval {

RuntimeEngine::RuntimeEngine(std::shared_ptr<const runtime::Model> model, int threads) : model_(std::move(model)) {
  runtime::SessionOptions o;
  o.threads = threads;
  session_ = std::make_unique<runtime::Session>(model_, 1, o);
}

RuntimeEngine::~RuntimeEngine() = default;

std::string RuntimeEngine::describe() const {
  return "runtime cpu (" + std::string(kernels::cpu::isa_name(session_->isa())) + ", " +
         std::to_string(session_->threads()) + " threads)";
}
int64_t RuntimeEngine::vocab() const { return session_->vocab(); }
int64_t RuntimeEngine::vocab_size() const { return model_->config().vocab_size; }

void RuntimeEngine::run(const std::vector<const Request*>& reqs, const Sink& sink) {
  run_requests(*session_, reqs, sink, buf_);
}

}  // namespace dfssm::eval
