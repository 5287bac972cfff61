// The runtime's CUDA backend: the same API and semantics as runtime::Session (session.h), on
// one GPU, with the kernels of src/kernels/cuda (decode.h). LibTorch-free: CUDA runtime only.
//
// Construction uploads the Model's weights once, in kernel layouts (docs: "CUDA backend"):
//   * packed signs of every binary projection repacked on the GPU into the mma-fragment tile
//     layout (kernels/cuda/decode.h, repack_signs); same size as the file's codes (rows padded
//     to 16, columns to 256);
//   * low-rank factors int8 as in the file ([R, r], [C, r]); field a/b, scales, norms, conv
//     (fp32, tap-major [K, conv_dim]), dt_bias, A = -exp(A_log), D as the Model holds them (fp32);
//   * the int8 embedding / tied LM head as in the file ([V, d] int8 + fp32 row scale).
// Supported: binary / binary_lowrank projections (rank <= 32), int8 embedding, d_model and
// d_inner multiples of 64, headdim even, d_state % 4 == 0 and <= 256; other models are refused
// with an error naming what is missing (ternary, int4, dense fp16 and fp16 embeddings run on
// the CPU runtime).
//
// State: per sequence, exactly the CPU Session's bytes (per layer the conv cache fp32
// [d_conv, conv_dim] then the SSM state [H, P, N] fp32 or fp16), so save_state blobs move
// between the CPU and CUDA sessions.
//
// step() runs one token for every sequence (batch <= 8) and copies the logits [batch, vocab]
// to pinned host memory. The whole forward (at 1.3B: 48 layers x 3 kernels with folded norms at
// batch 1, else x 5, + norm_f + LM head)
// is captured once per (rows, first sequence, with LM head) in a CUDA graph and replayed; with
// graphs off the same kernels are launched one by one (identical results: the kernels are
// deterministic and the graph holds the same launches). Kernels are chained with programmatic
// dependent launch (PDL) unless disabled.
//
// prefill(seq, tokens, n) runs the prompt in chunks of `prefill_chunk` tokens through the
// prefill kernels (kernels/cuda/prefill.h): per layer RMSNorm rows, per-token int8 activations
// and the cuBLASLt INT8 tensor-core GEMM against an int8 ±1 copy of the scaffold (expanded once
// at construction: R x C bytes per projection, ~1.24 GB at 1.3B), the low-rank term and field a
// in a small epilogue kernel, the causal conv over the chunk, a parallel SSM scan, gated
// RMSNorm. The LM head runs on the last token only (on every token with all_logits). Prompts
// shorter than `int8_prefill_min` tokens (or with int8_prefill off) run as decode steps instead
// (fp16 activations, ~1e-3 from fp32; the per-token int8 activations of the INT8 path cost ~5e-2
// relative logit error on a random 1.3B model, as much as the CPU engine's `i8` path).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/decode.h"
#include "runtime/model.h"

namespace dfssm::runtime {

struct CudaSessionOptions {
  std::string state_dtype = "f32";  // f32 | f16 (SSM state storage; math is fp32)
  bool cuda_graph = true;           // capture and replay the decode step
  bool pdl = true;                  // programmatic dependent launch between kernels
  // Decode layers with the RMSNorms folded into their neighbours: 3 kernels per layer instead of
  // 5 (needs ngroups = 1; kernels/cuda/decode.h), for steps of at most fold_max_rows sequences.
  // Measured at 1.3B on an H200: 0.93 vs 1.22 ms/step at batch 1, but 2.51 vs 1.91 ms/step at
  // batch 8 (each consumer block sums B x (rank + 1) x 128 partials), so larger batches run the
  // five-kernel layers.
  bool fold_norms = true;
  int64_t fold_max_rows = 1;
  int device = 0;
  // The INT8 GEMM prefill (else: prefill = a loop of decode steps). Turned off at construction
  // (options() shows it) for head shapes the scan kernel does not support.
  bool int8_prefill = true;
  int64_t int8_prefill_min = 16;  // prompts shorter than this run as decode steps
  // Tokens per chunk of the INT8 prefill. Each chunk launches ~12 kernels per layer: 1x2048 on
  // an H200 took 47.8 ms in chunks of 512, 40.9 ms in 1024, 37.7 ms in one chunk of 2048.
  int64_t prefill_chunk = 2048;
  // Batch 1 (folded) runs the lean batch-1 GEMV kernel (kernels/cuda/sign_gemv.cu,
  // sign_gemv_b1_kernel): the same sums in another rounding order. false (or the debug switch
  // DFSSM_CUDA_LEAN=0): the general kernel, as at batch > 1.
  bool lean_batch1 = true;
  // With the lean kernel: in_proj's input as int16 bit planes per 16 columns and its signs in
  // the 1-bit mma layout (kernels/cuda/decode.h "1-bit activation planes"; a second copy of the
  // signs on the device; out_proj as well with the debug switch DFSSM_CUDA_PLANES=2). false (or the debug switch DFSSM_CUDA_PLANES=0):
  // fp16 fragments, the fp16 mma. Off where the shapes do not allow it (kc::planes_supported*).
  bool planes_batch1 = true;
};

class CudaSession {
 public:
  CudaSession(std::shared_ptr<const Model> model, int64_t batch = 1, const CudaSessionOptions& opt = {});
  ~CudaSession();
  CudaSession(const CudaSession&) = delete;
  CudaSession& operator=(const CudaSession&) = delete;

  int64_t batch() const { return batch_; }
  int64_t vocab() const { return V_; }
  const Model& model() const { return *model_; }
  const CudaSessionOptions& options() const { return opt_; }
  // Whether steps of `rows` sequences run with folded norms.
  bool folded(int64_t rows = 1) const { return fold_ && rows <= opt_.fold_max_rows; }
  bool planes() const { return planes_; }        // batch 1 runs in_proj on 1-bit activation planes
  bool planes_out() const { return oplanes_; }   // and out_proj
  // Kernels of one decode step of `rows` sequences: 3 per layer + the embedding's norm, norm_f
  // and the LM head (folded norms), else 5 per layer + norm_f and the LM head.
  int64_t kernels_per_step(int64_t rows) const {
    return folded(rows) ? 3 * model_->config().n_layer + 3 : 5 * model_->config().n_layer + 2;
  }
  std::string device_name() const;

  void reset();
  void reset(int64_t seq);
  int64_t position(int64_t seq) const { return pos_.at(size_t(seq)); }

  const float* prefill(int64_t seq, const int32_t* tokens, int64_t n, float* all_logits = nullptr);
  const float* step(const int32_t* tokens);

  std::vector<uint8_t> save_state(int64_t seq) const;
  void restore_state(int64_t seq, const std::vector<uint8_t>& blob);
  uint64_t state_bytes_per_sequence() const { return state_bytes_; }

  // Bytes of weights one decode step streams from device memory (repacked signs, low-rank
  // factors, fields, the LM head, one embedding row per sequence, the small fp32 tensors).
  uint64_t weight_bytes_per_step() const { return weight_bytes_; }
  // Device bytes of the int8 ±1 scaffold copies the INT8 prefill GEMMs read (0 when off).
  uint64_t prefill_weight_bytes() const { return prefill_bytes_; }
  // Device time of `iters` back-to-back decode steps of all sequences (graph replays when
  // graphs are on; no host copies, no sync in between), in ms per step. Advances the state.
  double time_steps_ms(int iters);
  // Device time per kernel kind of one decode step launched kernel by kernel (no graph, no
  // PDL; events between launches): {"norm", "in_proj", "ssm", "gnorm", "out_proj", "lm_head"}.
  std::map<std::string, double> profile_step_ms();
  // Debug timeline of one folded decode step (batch 1; empty otherwise): a graph captured with
  // the kernels' trace slots set (kernels/cuda/decode.h TraceSlot), replayed twice, the second
  // replay's %globaltimer stamps (ns) per in_proj / ssm / out_proj launch, in launch order.
  std::vector<std::pair<std::string, std::vector<uint64_t>>> trace_step();

 private:
  struct Dev;  // device buffers
  void forward(int64_t rows, int64_t seq0, bool head, bool pdl, std::vector<std::pair<std::string, void*>>* events);
  void run_forward(int64_t rows, int64_t seq0, bool head);
  void* capture_forward(int64_t rows, int64_t seq0, bool head);  // an instantiated cudaGraphExec_t
  kernels::cuda::DecodeLayerArgs layer_args(int64_t l, int B, int64_t seq0) const;
  void forward_folded(int B, int64_t seq0, bool pdl, const std::function<void(const char*)>& mark);
  void check_tokens(const int32_t* tokens, int64_t n) const;
  void prefill_steps(int64_t seq, int64_t n, float* all_logits);
  void prefill_int8(int64_t seq, int64_t n, float* all_logits);
  void head_rows(const float* res, const float* hidden, int64_t rows, float* host_logits);

  std::shared_ptr<const Model> model_;
  CudaSessionOptions opt_;
  int64_t batch_, V_;
  bool f16_state_;
  bool fold_ = false;  // folded norms in use (options and model permitting)
  bool planes_ = false;   // batch-1 planes path in use for in_proj (options and shapes permitting)
  bool oplanes_ = false;  // and for out_proj
  uint64_t conv_bytes_, ssm_bytes_, state_bytes_, weight_bytes_ = 0, prefill_bytes_ = 0;
  std::vector<int64_t> pos_;
  std::unique_ptr<Dev> dev_;
  std::map<std::tuple<int64_t, int64_t, bool>, void*> graphs_;  // cudaGraphExec_t
  unsigned long long* trace_ = nullptr;  // trace_step: slots of the next launch
  std::vector<std::string> trace_names_;
};

}  // namespace dfssm::runtime
