// Inference sessions over a runtime Model: prefill, step, reset, several independent sequences
// and state save/restore. LibTorch-free; kernels from src/kernels/cpu, chosen by CPUID
// (DFSSM_CPU_ISA forces one), rows of every GEMV split across a spinning thread pool.
//
// A session holds `batch` independent sequences, each with its own recurrent state: per layer the
// conv cache (the last d_conv raw xBC columns, fp32 [d_conv, conv_dim]) and the SSM state
// [nheads, headdim, d_state] in fp32 or fp16 (SessionOptions::state_dtype). Activations are fp32.
//
//   prefill(seq, tokens, n)  feeds n tokens of one sequence in chunks of prefill_chunk tokens:
//                            each chunk's projections are one GEMM (the weights are read once
//                            per chunk, not once per token); the conv and the SSM recurrence
//                            then run token by token inside the chunk. Returns the last logits.
//   step(tokens)             one token for every sequence (tokens[batch]) -> logits [batch, vocab].
//
// Logits cover the padded vocabulary (as the trainer's do); token ids must be < vocab_size.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"
#include "runtime/model.h"

namespace dfssm::runtime {

class ThreadPool;

struct SessionOptions {
  int threads = 0;                  // 0: one per hardware thread
  std::string isa;                  // "" : DFSSM_CPU_ISA or the best the CPU has
  std::string state_dtype = "f32";  // f32 | f16 (SSM state storage; math is fp32)
  int64_t prefill_chunk = 64;       // tokens per prefill GEMM
  // Activations of the sign GEMM: i16 (per-token int16, the default: exact integer sums, ~1e-5
  // relative error, about twice the fp32 path's speed), f32 (bit-faithful to the trainer's
  // arithmetic up to summation order), or i8 (per-token int8, fastest, ~1e-2 relative error).
  std::string act = "i16";
};

class Session {
 public:
  Session(std::shared_ptr<const Model> model, int64_t batch = 1, const SessionOptions& opt = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  int64_t batch() const { return batch_; }
  int64_t vocab() const { return V_; }  // padded vocabulary: the logits' length
  const Model& model() const { return *model_; }
  kernels::cpu::Isa isa() const { return isa_; }
  int threads() const;
  const SessionOptions& options() const { return opt_; }

  void reset();             // every sequence
  void reset(int64_t seq);  // one sequence
  int64_t position(int64_t seq) const { return pos_.at(size_t(seq)); }

  // Feeds tokens[0..n) to sequence `seq`. Returns the logits after the last token (vocab()
  // floats, valid until the next call). With all_logits (n x vocab), every position's logits.
  const float* prefill(int64_t seq, const int32_t* tokens, int64_t n, float* all_logits = nullptr);
  // One token per sequence; returns logits [batch, vocab], valid until the next call.
  const float* step(const int32_t* tokens);

  // One sequence's recurrent state as an opaque blob (header + caches), and back. restore
  // checks that the blob comes from the same geometry and state dtype.
  std::vector<uint8_t> save_state(int64_t seq) const;
  void restore_state(int64_t seq, const std::vector<uint8_t>& blob);
  uint64_t state_bytes_per_sequence() const { return state_bytes_; }

 private:
  void check_tokens(const int32_t* tokens, int64_t n) const;
  void check_seq(int64_t seq) const;
  // T rows; row t is token tokens[t] of sequence seqs[t] (rows of one sequence in order).
  // Writes logits of rows [logit_from, T) to logits + (t - logit_from) * vocab.
  void forward_rows(const int32_t* tokens, const int64_t* seqs, int64_t T, int64_t logit_from, float* logits);
  void project(const Projection& p, const float* x, int64_t ldx, int64_t T, float* y, int64_t ldy);
  void lm_head(const float* x, int64_t T, float* logits);
  float* conv_state(int64_t seq, int64_t layer);
  void* ssm_state(int64_t seq, int64_t layer);

  std::shared_ptr<const Model> model_;
  SessionOptions opt_;
  kernels::cpu::Isa isa_;
  const kernels::cpu::KernelTable* k_;
  std::unique_ptr<ThreadPool> pool_;
  int64_t batch_, V_, rows_max_;
  bool f16_state_;
  enum class Act { F32, I16, I8 } act_;  // opt_.act, parsed once (it is read per projection)
  uint64_t conv_bytes_, ssm_bytes_, state_bytes_;
  std::vector<std::vector<uint8_t>> state_;  // per sequence: per layer conv then ssm
  std::vector<int64_t> pos_;
  std::vector<int64_t> step_seqs_;  // 0 .. batch-1: step()'s row -> sequence map
  // Scratch, rows_max_ rows each.
  std::vector<float> residual_, hidden_, normed_, xb_, zxbcdt_, lrz_, xbc_, y_, g_, logits_;
  std::vector<int8_t> xq_;
  std::vector<int16_t> xq16_;
  std::vector<float> xs_;
  std::vector<int32_t> xsum_;
};

}  // namespace dfssm::runtime
