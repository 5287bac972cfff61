// The CUDA backend's session (cuda_session.h): weight upload, device state, the decode step
// as a sequence of src/kernels/cuda launches, CUDA graph capture and replay.
#include "runtime/cuda/cuda_session.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "kernels/cuda/decode.h"
#include "kernels/cuda/prefill.h"
#include "runtime/state_blob.h"

namespace dfssm::runtime {

namespace kc = kernels::cuda;

#define CUDA_CHECK(expr)                                                                              \
  do {                                                                                                \
    const cudaError_t e_ = (expr);                                                                    \
    DFSSM_CHECK(e_ == cudaSuccess, "CUDA error in ", #expr, ": ", cudaGetErrorString(e_), " (", __FILE__, \
                ":", __LINE__, ")");                                                                  \
  } while (0)

struct CudaSession::Dev {
  cudaStream_t stream = nullptr;
  std::vector<void*> allocs;
  uint64_t bytes = 0;

  template <class T>
  T* alloc(size_t n) {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n * sizeof(T), 16)));
    allocs.push_back(p);
    return static_cast<T*>(p);
  }
  // Every host-to-device copy goes on `stream`, ordered with the kernels that read it. (A plain
  // cudaMemcpy from pageable memory returns once the data is staged, before the DMA has landed,
  // and runs on the legacy default stream, which a non-blocking stream does not wait for: the
  // load-time repack once read half-copied signs, differently from run to run.)
  template <class T>
  T* upload(const T* h, size_t n) {
    T* d = alloc<T>(n);
    CUDA_CHECK(cudaMemcpyAsync(d, h, n * sizeof(T), cudaMemcpyHostToDevice, stream));
    return d;
  }
  template <class T>
  T* upload(const std::vector<T>& v) {
    return v.empty() ? nullptr : upload(v.data(), v.size());
  }

  struct Proj {
    int64_t R = 0, C = 0, r = 0;
    void* w = nullptr;
    int8_t* S = nullptr;  // int8 ±1 [R, ldq] for the INT8 prefill GEMM (int8_prefill only)
    int64_t ldq = 0;
    float *a = nullptr, *b = nullptr, *us = nullptr, *vs = nullptr;
    int8_t *U = nullptr, *V = nullptr;
    void* wq = nullptr;  // the signs in the 1-bit mma layout (in_proj, planes path)
  };
  struct Layer {
    float* norm;
    Proj in, out;
    float *conv_w, *conv_b, *dt_bias, *A, *D, *gnorm;
  };
  std::vector<Layer> layers;
  int8_t* emb = nullptr;
  float* emb_scale = nullptr;
  float* norm_f = nullptr;

  // Activations (kMaxBatch rows each) and state.
  float *res[2] = {nullptr, nullptr}, *hidden = nullptr, *zx = nullptr, *xbc = nullptr, *y = nullptr;
  float *zp_in = nullptr, *zp_out = nullptr, *logits = nullptr;
  float *parts_in = nullptr, *parts_out = nullptr;  // folded norms (decode.h "parts")
  void *xf_in = nullptr, *xf_out = nullptr, *x16 = nullptr;
  void* xq_in = nullptr;  // in_proj's input as planes (batch 1) and their scales
  int8_t* xq_in_exp = nullptr;
  void* xq_out = nullptr;  // out_proj's input as planes (batch 1) and their exponents
  int8_t* xq_out_exp = nullptr;
  uint8_t* state = nullptr;
  int32_t* tok = nullptr;   // [batch] tokens of the current step
  int32_t* prompt = nullptr;
  int64_t prompt_cap = 0;
  int32_t* h_tok = nullptr;    // pinned
  float* h_logits = nullptr;   // pinned [batch, V]

  // INT8 prefill: buffers for one chunk of `pf_cap` tokens (allocated at the first prefill).
  std::unique_ptr<kc::I8Gemm> gemm;
  int64_t pf_cap = 0, ldacc = 0;
  float *pf_res = nullptr, *pf_hidden = nullptr, *pf_xn = nullptr, *pf_sx = nullptr, *pf_zl = nullptr;
  float *pf_zx = nullptr, *pf_xbc = nullptr, *pf_y = nullptr, *pf_g = nullptr;
  int8_t* pf_q = nullptr;
  int32_t* pf_acc = nullptr;

  ~Dev() {
    for (void* p : allocs) cudaFree(p);
    if (prompt) cudaFree(prompt);
    if (h_tok) cudaFreeHost(h_tok);
    if (h_logits) cudaFreeHost(h_logits);
    if (stream) cudaStreamDestroy(stream);
  }
};

CudaSession::CudaSession(std::shared_ptr<const Model> model, int64_t batch, const CudaSessionOptions& opt)
    : model_(std::move(model)), opt_(opt), batch_(batch) {
  DFSSM_CHECK(model_, "CudaSession: no model");
  DFSSM_CHECK(batch >= 1 && batch <= kc::kMaxBatch, "CUDA decode batch must be in [1, ", kc::kMaxBatch, "] (got ",
              batch, ")");
  DFSSM_CHECK(opt.state_dtype == "f32" || opt.state_dtype == "f16", "state dtype must be f32 or f16 (got '",
              opt.state_dtype, "')");
  const auto& c = model_->config();
  const auto& q = model_->quant();
  int ndev = 0;
  const cudaError_t de = cudaGetDeviceCount(&ndev);
  DFSSM_CHECK(de == cudaSuccess && ndev > 0, "--device cuda: no CUDA device (",
              de == cudaSuccess ? "none found" : cudaGetErrorString(de), ")");
  DFSSM_CHECK(opt.device >= 0 && opt.device < ndev, "CUDA device ", opt.device, " does not exist (", ndev, " found)");
  CUDA_CHECK(cudaSetDevice(opt.device));

  const int64_t d = c.d_model, di = c.d_inner(), D = c.conv_dim(), dip = c.d_in_proj(), H = c.nheads();
  const int64_t r = q.effective_rank();
  DFSSM_CHECK(q.embedding == "int8", "the CUDA backend supports int8 embeddings only (this model has ", q.embedding,
              "); use --device cpu");
  DFSSM_CHECK(d % 64 == 0 && di % 64 == 0, "the CUDA backend needs d_model and d_inner multiples of 64 (got ", d, ", ",
              di, ")");
  DFSSM_CHECK(c.d_state % 4 == 0 && c.d_state <= 256, "the CUDA backend needs d_state % 4 == 0 and <= 256 (got ",
              c.d_state, ")");
  DFSSM_CHECK(c.headdim % 2 == 0, "the CUDA backend needs an even headdim (got ", c.headdim, ")");
  DFSSM_CHECK(r <= kc::kMaxRank, "the CUDA backend supports low-rank rank <= ", kc::kMaxRank, " (got ", r, ")");
  DFSSM_CHECK(c.d_conv >= 1, "d_conv must be >= 1");
  DFSSM_CHECK(c.tie_embeddings, "the CUDA backend supports tied embeddings only; use --device cpu");

  V_ = c.padded_vocab();
  f16_state_ = opt.state_dtype == "f16";
  conv_bytes_ = uint64_t(c.d_conv * D * 4);
  ssm_bytes_ = uint64_t(H * c.headdim * c.d_state) * (f16_state_ ? 2 : 4);
  state_bytes_ = uint64_t(c.n_layer) * (conv_bytes_ + ssm_bytes_);
  pos_.assign(size_t(batch), 0);

  dev_ = std::make_unique<Dev>();
  Dev& g = *dev_;
  CUDA_CHECK(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
  // The INT8 prefill's scan must support the head shapes; otherwise prompts run as decode steps.
  if (opt_.int8_prefill &&
      !kc::ssm_scan_supported(int(c.nheads()), int(c.headdim), int(c.d_state), int(c.ngroups)))
    opt_.int8_prefill = false;

  // Folded norms need ngroups = 1 (one rstd per row of the gated norm) and few enough producer
  // blocks; otherwise the five-kernel layer. The batch-1 planes path needs them and the lean kernel.
  fold_ = opt_.fold_norms && c.ngroups == 1 && kc::sign_gemv_grid(d) <= kc::kMaxParts &&
          kc::ssm_parts(int(c.nheads())) <= kc::kMaxParts;
  // Debug switch DFSSM_CUDA_PLANES: 0 = fp16 fragments at batch 1, 1 (default) = planes for
  // in_proj, 2 = for out_proj as well (measured slower: docs/benchmarks.md, fifth pass).
  static const int planes_env = [] {
    const char* e = std::getenv("DFSSM_CUDA_PLANES");
    return e ? std::atoi(e) : 1;
  }();
  planes_ = fold_ && opt_.fold_max_rows >= 1 && opt_.lean_batch1 && opt_.planes_batch1 && planes_env >= 1 &&
            kc::planes_supported(dip, d, int(r), d);
  oplanes_ = planes_ && planes_env >= 2 && kc::planes_supported_out(d, di, int(r), int(H), int(c.headdim));

  // ---- weights ----
  uint64_t wbytes = 0;
  auto proj = [&](const Projection& p, bool b1) {
    DFSSM_CHECK(p.kind == Projection::Kind::Binary,
                "the CUDA backend supports binary / binary_lowrank projections only (this model has dense or "
                "expanded ternary/int4 rows); use --device cpu");
    Dev::Proj o;
    o.R = p.rows, o.C = p.cols, o.r = p.rank;
    const size_t nb = kc::repacked_sign_bytes(p.rows, p.cols);
    o.w = g.alloc<uint8_t>(nb);
    uint8_t* tmp = nullptr;
    CUDA_CHECK(cudaMalloc(&tmp, size_t(p.rows * p.row_bytes)));
    CUDA_CHECK(cudaMemcpyAsync(tmp, p.codes, size_t(p.rows * p.row_bytes), cudaMemcpyHostToDevice, g.stream));
    CUDA_CHECK(kc::repack_signs(tmp, p.row_bytes, p.rows, p.cols, o.w, g.stream));
    if (b1) {
      o.wq = g.alloc<uint8_t>(kc::repacked_b1_bytes(p.rows, p.cols));
      CUDA_CHECK(kc::repack_signs_b1(tmp, p.row_bytes, p.rows, p.cols, o.wq, g.stream));
    }
    if (opt_.int8_prefill) {
      o.ldq = kc::i8_cols(p.cols);
      o.S = g.alloc<int8_t>(size_t(p.rows * o.ldq));
      CUDA_CHECK(kc::expand_signs_i8(tmp, p.row_bytes, p.rows, p.cols, o.S, o.ldq, g.stream));
      prefill_bytes_ += uint64_t(p.rows * o.ldq);
    }
    CUDA_CHECK(cudaStreamSynchronize(g.stream));
    CUDA_CHECK(cudaFree(tmp));
    o.a = g.upload(p.a);
    o.b = g.upload(p.b);
    wbytes += nb + 4 * uint64_t(p.rows + p.cols);
    if (p.rank > 0) {
      o.U = g.upload(p.u, size_t(p.rows * p.rank));
      o.V = g.upload(p.v, size_t(p.cols * p.rank));
      o.us = g.upload(p.us);
      o.vs = g.upload(p.vs);
      wbytes += uint64_t(p.rank * (p.rows + p.cols) + 8 * p.rank);
    }
    return o;
  };
  for (const Layer& L : model_->layers()) {
    Dev::Layer o;
    o.norm = g.upload(L.norm);
    o.in = proj(L.in_proj, planes_);
    o.out = proj(L.out_proj, oplanes_);
    o.conv_w = g.upload(L.conv_w);
    o.conv_b = g.upload(L.conv_b);
    o.dt_bias = g.upload(L.dt_bias);
    o.A = g.upload(L.A);
    o.D = g.upload(L.D);
    o.gnorm = g.upload(L.gnorm);
    wbytes += 4 * uint64_t(d + c.d_conv * D + (L.conv_b.empty() ? 0 : D) + 3 * H + di);
    g.layers.push_back(o);
  }
  const auto& e = model_->embedding();
  g.emb = g.upload(e.codes, size_t(V_ * d));
  g.emb_scale = g.upload(e.scale);
  g.norm_f = g.upload(model_->norm_f());
  wbytes += uint64_t(V_ * d + V_ * 4) + uint64_t(batch) * uint64_t(d) + 4 * uint64_t(d);
  weight_bytes_ = wbytes;

  // ---- activations and state ----
  const size_t MB = kc::kMaxBatch;
  g.res[0] = g.alloc<float>(MB * size_t(d));
  g.res[1] = g.alloc<float>(MB * size_t(d));
  g.hidden = g.alloc<float>(MB * size_t(d));
  g.zx = g.alloc<float>(MB * size_t(dip));
  g.xbc = g.alloc<float>(MB * size_t(D));
  g.y = g.alloc<float>(MB * size_t(di));
  g.zp_in = g.alloc<float>(MB * 64 * size_t(std::max<int64_t>(r, 1)));
  g.zp_out = g.alloc<float>(MB * 64 * size_t(std::max<int64_t>(r, 1)));
  g.parts_in = g.alloc<float>(kc::parts_floats());
  g.parts_out = g.alloc<float>(kc::parts_floats());
  CUDA_CHECK(cudaMemsetAsync(g.parts_in, 0, kc::parts_floats() * 4, g.stream));
  CUDA_CHECK(cudaMemsetAsync(g.parts_out, 0, kc::parts_floats() * 4, g.stream));
  g.logits = g.alloc<float>(MB * size_t(V_));
  g.xf_in = g.alloc<uint8_t>(kc::fragment_bytes(d));
  g.xf_out = g.alloc<uint8_t>(kc::fragment_bytes(di));
  g.x16 = g.alloc<uint16_t>(MB * size_t(d));
  // Fragment lanes of sequences >= rows are never read; zero everything once anyway.
  CUDA_CHECK(cudaMemsetAsync(g.xf_in, 0, kc::fragment_bytes(d), g.stream));
  CUDA_CHECK(cudaMemsetAsync(g.xf_out, 0, kc::fragment_bytes(di), g.stream));
  if (planes_) {
    g.xq_in = g.alloc<uint8_t>(kc::plane_bytes(d));
    g.xq_in_exp = g.alloc<int8_t>(size_t(d / 16));
    CUDA_CHECK(cudaMemsetAsync(g.xq_in, 0, kc::plane_bytes(d), g.stream));
    CUDA_CHECK(cudaMemsetAsync(g.xq_in_exp, 0, size_t(d / 16), g.stream));
  }
  if (oplanes_) {
    g.xq_out = g.alloc<uint8_t>(kc::plane_bytes(di));
    g.xq_out_exp = g.alloc<int8_t>(size_t(di / 16));
    CUDA_CHECK(cudaMemsetAsync(g.xq_out, 0, kc::plane_bytes(di), g.stream));
    CUDA_CHECK(cudaMemsetAsync(g.xq_out_exp, 0, size_t(di / 16), g.stream));
  }
  CUDA_CHECK(cudaMemsetAsync(g.hidden, 0, MB * size_t(d) * 4, g.stream));
  g.state = g.alloc<uint8_t>(size_t(batch) * state_bytes_);
  g.tok = g.alloc<int32_t>(MB);
  CUDA_CHECK(cudaMallocHost(&g.h_tok, MB * sizeof(int32_t)));
  CUDA_CHECK(cudaMallocHost(&g.h_logits, size_t(batch) * size_t(V_) * sizeof(float)));
  CUDA_CHECK(cudaDeviceSynchronize());
  reset();
}

CudaSession::~CudaSession() {
  for (auto& [k, ge] : graphs_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(ge));
}

std::string CudaSession::device_name() const {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, opt_.device) != cudaSuccess) return "cuda";
  return p.name;
}

void CudaSession::reset() {
  CUDA_CHECK(cudaMemsetAsync(dev_->state, 0, size_t(batch_) * state_bytes_, dev_->stream));
  CUDA_CHECK(cudaStreamSynchronize(dev_->stream));
  std::fill(pos_.begin(), pos_.end(), 0);
}

void CudaSession::reset(int64_t seq) {
  DFSSM_CHECK(seq >= 0 && seq < batch_, "sequence ", seq, " outside [0, ", batch_, ")");
  CUDA_CHECK(cudaMemsetAsync(dev_->state + uint64_t(seq) * state_bytes_, 0, state_bytes_, dev_->stream));
  CUDA_CHECK(cudaStreamSynchronize(dev_->stream));
  pos_[size_t(seq)] = 0;
}

void CudaSession::check_tokens(const int32_t* tokens, int64_t n) const {
  const int64_t vs = model_->config().vocab_size;
  for (int64_t i = 0; i < n; ++i)
    DFSSM_CHECK(tokens[i] >= 0 && tokens[i] < vs, "token id ", tokens[i], " at position ", i,
                " is outside the vocabulary [0, ", vs, ")");
}

// The decode step for sequences [seq0, seq0 + rows), tokens in dev_->tok[0..rows).
// The five kernels' arguments of layer l for B rows starting at sequence seq0.
kernels::cuda::DecodeLayerArgs CudaSession::layer_args(int64_t l, int B, int64_t seq0) const {
  const Dev& g = *dev_;
  const auto& c = model_->config();
  const int64_t d = c.d_model, di = c.d_inner(), D = c.conv_dim(), dip = c.d_in_proj(), H = c.nheads();
  const auto& L = g.layers[size_t(l)];
  uint8_t* st = g.state + uint64_t(seq0) * state_bytes_ + uint64_t(l) * (conv_bytes_ + ssm_bytes_);
  kc::DecodeLayerArgs A;
  kc::NormArgs& na = A.norm;
  na.mode = 0;
  na.n = int(d);
  na.eps = float(c.norm_eps);
  na.w = L.norm;
  na.res_in = g.res[l % 2];
  na.hidden = l == 0 ? nullptr : g.hidden;
  na.res_out = g.res[(l + 1) % 2];
  if (l == 0) na.tokens = g.tok, na.emb = g.emb, na.emb_scale = g.emb_scale;
  na.b = L.in.b;
  na.out16 = g.xf_in;
  na.V = L.in.V;
  na.r = int(L.in.r);
  na.zp = g.zp_in;
  A.ns_in = kc::norm_splits(na);

  kc::SignGemvArgs& ga = A.in;
  ga.w = L.in.w, ga.R = L.in.R, ga.C = L.in.C, ga.xf = g.xf_in, ga.B = B, ga.a = L.in.a;
  ga.U = L.in.U, ga.us = L.in.us, ga.vs = L.in.vs, ga.zp = g.zp_in, ga.nsplit = A.ns_in, ga.r = int(L.in.r);
  ga.y = g.zx, ga.ldy = dip;
  ga.conv_lo = di, ga.conv_D = D, ga.conv_K = int(c.d_conv);
  ga.conv_state = reinterpret_cast<float*>(st);
  ga.conv_seq_stride = int64_t(state_bytes_ / 4);
  ga.conv_w = L.conv_w, ga.conv_b = L.conv_b, ga.conv_out = g.xbc;

  kc::SsmArgs& sa = A.ssm;
  sa.state = st + conv_bytes_;
  sa.f16 = f16_state_;
  sa.state_seq_stride = int64_t(state_bytes_);
  sa.xbc = g.xbc, sa.D = D;
  sa.dt_raw = g.zx + di + D, sa.ld_dt = dip;
  sa.dt_bias = L.dt_bias, sa.A = L.A, sa.Dskip = L.D, sa.y = g.y;
  sa.dt_min = float(c.dt_limit_min), sa.dt_max = float(c.dt_limit_max);
  sa.H = int(H), sa.P = int(c.headdim), sa.N = int(c.d_state), sa.G = int(c.ngroups);

  kc::NormArgs& nb = A.gnorm;
  nb.mode = 1;
  nb.n = int(di);
  nb.eps = float(c.norm_eps);
  nb.w = L.gnorm;
  nb.y = g.y, nb.z = g.zx, nb.ldz = dip, nb.G = int(c.ngroups);
  nb.b = L.out.b, nb.out16 = g.xf_out, nb.V = L.out.V, nb.r = int(L.out.r), nb.zp = g.zp_out;
  A.ns_out = kc::norm_splits(nb);

  kc::SignGemvArgs& gb = A.out;
  gb.w = L.out.w, gb.R = L.out.R, gb.C = L.out.C, gb.xf = g.xf_out, gb.B = B, gb.a = L.out.a;
  gb.U = L.out.U, gb.us = L.out.us, gb.vs = L.out.vs, gb.zp = g.zp_out, gb.nsplit = A.ns_out, gb.r = int(L.out.r);
  gb.y = g.hidden, gb.ldy = d;
  return A;
}

// The layers with folded norms (decode.h): the embedding rows through norm_prologue (fold), then
// per layer in_proj + conv, SSM + gate, out_proj + residual + the next layer's input. The
// residual stream ends in res[n_layer % 2].
void CudaSession::forward_folded(int B, int64_t seq0, bool pdl, const std::function<void(const char*)>& mark) {
  Dev& g = *dev_;
  const auto& c = model_->config();
  const int64_t d = c.d_model, di = c.d_inner(), dip = c.d_in_proj();
  const float eps = float(c.norm_eps);
  cudaStream_t s = g.stream;
  kc::DecodeLayerArgs A = layer_args(0, B, seq0);
  kc::NormArgs k0 = A.norm;
  k0.fold = 1;
  k0.parts = g.parts_in;
  k0.res_out = g.res[0];
  const bool pl = planes_ && B == 1;  // in_proj's input as planes (decode.h)
  if (pl) k0.xq = g.xq_in, k0.xq_exp = g.xq_in_exp;
  CUDA_CHECK(kc::norm_prologue(k0, B, s, false));  // follows a memcpy
  mark("norm");
  auto traced = [&](const char* name) {  // trace_step only: the next launch's timeline slots
    if (!trace_) return static_cast<unsigned long long*>(nullptr);
    trace_names_.push_back(name);
    return trace_ + (trace_names_.size() - 1) * kc::kTraceSlots;
  };
  for (int64_t l = 0; l < c.n_layer; ++l) {
    if (l > 0) A = layer_args(l, B, seq0);
    const auto& L = g.layers[size_t(l)];
    A.in.parts = g.parts_in;
    A.in.nparts = l == 0 ? kc::norm_splits(k0) : kc::sign_gemv_grid(d);
    A.in.n_norm = d;
    A.in.eps = eps;
    A.in.lean = A.out.lean = opt_.lean_batch1;
    if (pl) A.in.xq = g.xq_in, A.in.xq_exp = g.xq_in_exp, A.in.wq = L.in.wq;
    A.in.trace = traced("in_proj");
    CUDA_CHECK(kc::sign_gemv(A.in, s, pdl));
    mark("in_proj");
    A.ssm.trace = traced("ssm");
    A.ssm.z = g.zx, A.ssm.ldz = dip;
    A.ssm.gw = L.gnorm, A.ssm.ob = L.out.b, A.ssm.oV = L.out.V, A.ssm.orank = int(L.out.r);
    A.ssm.xf = g.xf_out, A.ssm.parts = g.parts_out;
    const bool opl = pl && oplanes_;  // out_proj's input as planes
    if (opl) A.ssm.xf = nullptr, A.ssm.xq = g.xq_out, A.ssm.xq_exp = g.xq_out_exp;
    CUDA_CHECK(kc::ssm_step(A.ssm, B, s, pdl));
    mark("ssm");
    A.out.parts = g.parts_out;
    A.out.nparts = kc::ssm_parts(int(c.nheads()));
    A.out.n_norm = di;
    A.out.eps = eps;
    A.out.res_in = g.res[l % 2];
    A.out.res_out = g.res[(l + 1) % 2];
    A.out.nxf = pl ? nullptr : g.xf_in;
    if (pl) A.out.nxq = g.xq_in, A.out.nxq_exp = g.xq_in_exp;
    if (opl) A.out.xq = g.xq_out, A.out.xq_exp = g.xq_out_exp, A.out.wq = L.out.wq;
    A.out.nparts_out = g.parts_in;
    if (l + 1 < c.n_layer) {
      const auto& N = g.layers[size_t(l + 1)];
      A.out.nw = N.norm, A.out.nb = N.in.b, A.out.nV = N.in.V, A.out.nr = int(N.in.r);
    } else {  // the residual only (the next-layer outputs land in buffers nobody reads)
      A.out.nw = g.norm_f, A.out.nb = nullptr, A.out.nV = nullptr, A.out.nr = 0;
    }
    A.out.trace = traced("out_proj");
    CUDA_CHECK(kc::sign_gemv(A.out, s, pdl));
    mark("out_proj");
  }
}

void CudaSession::forward(int64_t rows, int64_t seq0, bool head, bool pdl,
                          std::vector<std::pair<std::string, void*>>* events) {
  Dev& g = *dev_;
  const auto& c = model_->config();
  const int64_t d = c.d_model, di = c.d_inner(), D = c.conv_dim(), dip = c.d_in_proj();
  const int B = int(rows);
  cudaStream_t s = g.stream;
  // Debug switch DFSSM_CUDA_SYNC_EACH=1 (launch by launch only): synchronize and check after
  // every kernel, to tell an ordering problem from a kernel's own.
  static const bool sync_each = std::getenv("DFSSM_CUDA_SYNC_EACH") != nullptr;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(s, &cap));
  // Debug switch DFSSM_CUDA_DUMP=1 (launch by launch only): after every kernel, print a hash of
  // what it wrote, so two runs can be diffed to the first kernel whose output differs.
  static const bool dump = std::getenv("DFSSM_CUDA_DUMP") != nullptr;
  auto hash = [&](const char* what, int64_t l, const void* p, size_t bytes) {
    std::vector<uint8_t> h(bytes);
    CUDA_CHECK(cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost));
    uint64_t x = 1469598103934665603ull;
    for (uint8_t v : h) x = (x ^ v) * 1099511628211ull;
    std::printf("dump l%02lld %-10s %016llx\n", (long long)l, what, (unsigned long long)x);
  };
  auto mark = [&](const char* kind) {
    if (sync_each && cap == cudaStreamCaptureStatusNone) CUDA_CHECK(cudaStreamSynchronize(s));
    if (!events) return;
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreate(&ev));
    CUDA_CHECK(cudaEventRecord(ev, s));
    events->emplace_back(kind, ev);
  };
  mark("start");
  const bool fold = folded(rows);
  if (fold) forward_folded(B, seq0, pdl, mark);
  for (int64_t l = 0; !fold && l < c.n_layer; ++l) {
    const kc::DecodeLayerArgs A = layer_args(l, B, seq0);
    CUDA_CHECK(kc::norm_prologue(A.norm, B, s, pdl && l > 0));  // the first launch follows a memcpy
    mark("norm");
    const bool dmp = dump && cap == cudaStreamCaptureStatusNone;
    if (dmp) {
      hash("norm.xf", l, g.xf_in, kc::fragment_bytes(d));
      hash("norm.res", l, A.norm.res_out, size_t(B * d) * 4);
      if (A.in.r > 0) hash("norm.zp", l, g.zp_in, size_t(B * A.ns_in * A.in.r) * 4);
    }
    CUDA_CHECK(kc::sign_gemv(A.in, s, pdl));
    mark("in_proj");
    if (dmp) {
      hash("in.zx", l, g.zx, size_t(B * dip) * 4);
      hash("in.xbc", l, g.xbc, size_t(B * D) * 4);
      hash("in.conv", l, A.in.conv_state, conv_bytes_);
    }
    CUDA_CHECK(kc::ssm_step(A.ssm, B, s, pdl));
    mark("ssm");
    if (dmp) {
      hash("ssm.y", l, g.y, size_t(B * di) * 4);
      hash("ssm.state", l, A.ssm.state, ssm_bytes_);
    }
    CUDA_CHECK(kc::norm_prologue(A.gnorm, B, s, pdl));
    mark("gnorm");
    if (dmp) {
      hash("gn.xf", l, g.xf_out, kc::fragment_bytes(di));
      if (A.out.r > 0) hash("gn.zp", l, g.zp_out, size_t(B * A.ns_out * A.out.r) * 4);
    }
    CUDA_CHECK(kc::sign_gemv(A.out, s, pdl));
    mark("out_proj");
    if (dmp) hash("out.hidden", l, g.hidden, size_t(B * d) * 4);
  }
  if (!head) return;
  kc::NormArgs nf;
  nf.mode = 0;
  nf.n = int(d);
  nf.eps = float(c.norm_eps);
  nf.w = g.norm_f;
  nf.res_in = g.res[c.n_layer % 2];
  nf.hidden = fold ? nullptr : g.hidden;  // (folded: the last out_proj added the residual)
  nf.res_out = g.res[(c.n_layer + 1) % 2];
  nf.out16 = g.x16;
  nf.plain = 1;
  CUDA_CHECK(kc::norm_prologue(nf, B, s, pdl));
  mark("norm");
  kc::LmHeadArgs la;
  la.q = g.emb, la.scale = g.emb_scale, la.x16 = g.x16, la.B = B, la.V = V_, la.d = d, la.logits = g.logits;
  CUDA_CHECK(kc::lm_head_i8(la, s, pdl));
  mark("lm_head");
}

void* CudaSession::capture_forward(int64_t rows, int64_t seq0, bool head) {
  cudaGraph_t graph;
  CUDA_CHECK(cudaStreamBeginCapture(dev_->stream, cudaStreamCaptureModeThreadLocal));
  forward(rows, seq0, head, opt_.pdl, nullptr);
  CUDA_CHECK(cudaStreamEndCapture(dev_->stream, &graph));
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphDestroy(graph));
  return static_cast<void*>(exec);
}

void CudaSession::run_forward(int64_t rows, int64_t seq0, bool head) {
  if (!opt_.cuda_graph) {
    forward(rows, seq0, head, opt_.pdl, nullptr);
    return;
  }
  const auto key = std::make_tuple(rows, seq0, head);
  auto it = graphs_.find(key);
  if (it == graphs_.end()) it = graphs_.emplace(key, capture_forward(rows, seq0, head)).first;
  CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(it->second), dev_->stream));
}

const float* CudaSession::step(const int32_t* tokens) {
  check_tokens(tokens, batch_);
  Dev& g = *dev_;
  std::memcpy(g.h_tok, tokens, size_t(batch_) * 4);
  CUDA_CHECK(cudaMemcpyAsync(g.tok, g.h_tok, size_t(batch_) * 4, cudaMemcpyHostToDevice, g.stream));
  run_forward(batch_, 0, true);
  CUDA_CHECK(cudaMemcpyAsync(g.h_logits, g.logits, size_t(batch_ * V_) * 4, cudaMemcpyDeviceToHost, g.stream));
  CUDA_CHECK(cudaStreamSynchronize(g.stream));
  for (auto& p : pos_) ++p;
  return g.h_logits;
}

const float* CudaSession::prefill(int64_t seq, const int32_t* tokens, int64_t n, float* all_logits) {
  DFSSM_CHECK(seq >= 0 && seq < batch_, "sequence ", seq, " outside [0, ", batch_, ")");
  DFSSM_CHECK(n >= 1, "prefill needs at least one token");
  check_tokens(tokens, n);
  Dev& g = *dev_;
  if (n > g.prompt_cap) {
    if (g.prompt) CUDA_CHECK(cudaFree(g.prompt));
    g.prompt = nullptr;
    CUDA_CHECK(cudaMalloc(&g.prompt, size_t(n) * 4));
    g.prompt_cap = n;
  }
  CUDA_CHECK(cudaMemcpyAsync(g.prompt, tokens, size_t(n) * 4, cudaMemcpyHostToDevice, g.stream));
  if (opt_.int8_prefill && n >= opt_.int8_prefill_min) prefill_int8(seq, n, all_logits);
  else prefill_steps(seq, n, all_logits);
  CUDA_CHECK(cudaStreamSynchronize(g.stream));
  if (all_logits) std::memcpy(g.h_logits, all_logits + (n - 1) * V_, size_t(V_) * 4);
  pos_[size_t(seq)] += n;
  return g.h_logits;
}

// Token by token through the decode step (graph replays of a single-sequence step).
void CudaSession::prefill_steps(int64_t seq, int64_t n, float* all_logits) {
  Dev& g = *dev_;
  for (int64_t i = 0; i < n; ++i) {
    const bool head = all_logits || i + 1 == n;
    CUDA_CHECK(cudaMemcpyAsync(g.tok, g.prompt + i, 4, cudaMemcpyDeviceToDevice, g.stream));
    run_forward(1, seq, head);
    if (all_logits)
      CUDA_CHECK(cudaMemcpyAsync(all_logits + i * V_, g.logits, size_t(V_) * 4, cudaMemcpyDeviceToHost, g.stream));
  }
  CUDA_CHECK(cudaMemcpyAsync(g.h_logits, g.logits, size_t(V_) * 4, cudaMemcpyDeviceToHost, g.stream));
}

// final norm + LM head of `rows` consecutive rows (residual + hidden), 8 at a time, logits to
// host_logits [rows, V] (pinned or pageable host memory).
void CudaSession::head_rows(const float* res, const float* hidden, int64_t rows, float* host_logits) {
  Dev& g = *dev_;
  const auto& c = model_->config();
  const int64_t d = c.d_model;
  for (int64_t r0 = 0; r0 < rows; r0 += kc::kMaxBatch) {
    const int B = int(std::min<int64_t>(kc::kMaxBatch, rows - r0));
    kc::NormArgs nf;
    nf.mode = 0;
    nf.n = int(d);
    nf.eps = float(c.norm_eps);
    nf.w = g.norm_f;
    nf.res_in = res + r0 * d;
    nf.hidden = hidden + r0 * d;
    nf.out16 = g.x16;
    nf.plain = 1;
    CUDA_CHECK(kc::norm_prologue(nf, B, g.stream, false));
    kc::LmHeadArgs la;
    la.q = g.emb, la.scale = g.emb_scale, la.x16 = g.x16, la.B = B, la.V = V_, la.d = d, la.logits = g.logits;
    CUDA_CHECK(kc::lm_head_i8(la, g.stream, false));
    CUDA_CHECK(cudaMemcpyAsync(host_logits + r0 * V_, g.logits, size_t(B * V_) * 4, cudaMemcpyDeviceToHost, g.stream));
  }
}

// The INT8 tensor-core prefill (cuda_session.h): chunks of prefill_chunk tokens, layer by layer.
void CudaSession::prefill_int8(int64_t seq, int64_t n, float* all_logits) {
  Dev& g = *dev_;
  const auto& c = model_->config();
  const int64_t d = c.d_model, di = c.d_inner(), D = c.conv_dim(), dip = c.d_in_proj(), H = c.nheads();
  const int64_t r = model_->quant().effective_rank();
  const float eps = float(c.norm_eps);
  const int64_t Tc = std::max<int64_t>(1, std::min(opt_.prefill_chunk, n));
  if (Tc > g.pf_cap) {  // (re)allocate the chunk buffers; the old ones stay in allocs until ~Dev
    g.pf_cap = Tc;
    g.ldacc = kc::round_up(std::max(dip, d), 4);
    const int64_t ldq = std::max(kc::i8_cols(d), kc::i8_cols(di));
    g.pf_res = g.alloc<float>(size_t(Tc * d));
    g.pf_hidden = g.alloc<float>(size_t(Tc * d));
    g.pf_xn = g.alloc<float>(size_t(Tc * d));
    g.pf_sx = g.alloc<float>(size_t(Tc));
    g.pf_zl = g.alloc<float>(size_t(Tc * std::max<int64_t>(r, 1)));
    g.pf_zx = g.alloc<float>(size_t(Tc * dip));
    g.pf_xbc = g.alloc<float>(size_t(Tc * D));
    g.pf_y = g.alloc<float>(size_t(Tc * di));
    g.pf_g = g.alloc<float>(size_t(Tc * di));
    g.pf_q = g.alloc<int8_t>(size_t(Tc * ldq));
    g.pf_acc = g.alloc<int32_t>(size_t(Tc * g.ldacc));
    if (!g.gemm) g.gemm = std::make_unique<kc::I8Gemm>();
  }
  cudaStream_t s = g.stream;
  uint8_t* st0 = g.state + uint64_t(seq) * state_bytes_;
  const uint64_t layer_bytes = conv_bytes_ + ssm_bytes_;
  // x: the projection's input, already quantized into pf_q / pf_sx by the fused norm kernel.
  auto project = [&](const Dev::Proj& p, const float* x, int64_t T, float* y, int64_t ldy) {
    if (p.r > 0) CUDA_CHECK(kc::lowrank_down(x, p.C, p.V, p.vs, T, p.C, p.r, g.pf_zl, s));
    const cudaError_t e = g.gemm->run(g.pf_q, p.S, g.pf_acc, T, p.R, p.ldq, g.ldacc, s);
    DFSSM_CHECK(e == cudaSuccess, "cuBLASLt INT8 GEMM (", T, " x ", p.R, " x ", p.ldq, ") failed: ",
                cudaGetErrorString(e), " (cublas status ", g.gemm->last_status(), ")");
    CUDA_CHECK(kc::proj_epilogue(g.pf_acc, g.ldacc, T, p.R, p.a, g.pf_sx, p.r > 0 ? p.U : nullptr, p.us, g.pf_zl,
                                 p.r, y, ldy, s));
  };
  for (int64_t i = 0; i < n; i += Tc) {
    const int64_t T = std::min(Tc, n - i);
    CUDA_CHECK(kc::embed_rows(g.prompt + i, T, g.emb, g.emb_scale, d, g.pf_res, s));
    for (int64_t l = 0; l < c.n_layer; ++l) {
      const auto& L = g.layers[size_t(l)];
      float* conv_state = reinterpret_cast<float*>(st0 + uint64_t(l) * layer_bytes);
      void* ssm_state = st0 + uint64_t(l) * layer_bytes + conv_bytes_;
      CUDA_CHECK(kc::rmsnorm_quant_rows(l == 0 ? nullptr : g.pf_hidden, g.pf_res, L.norm, g.pf_xn, T, d, eps, L.in.b,
                                        g.pf_q, L.in.ldq, g.pf_sx, s));
      project(L.in, g.pf_xn, T, g.pf_zx, dip);
      CUDA_CHECK(kc::conv_prefill(g.pf_zx + di, dip, conv_state, L.conv_w, L.conv_b, g.pf_xbc, T, D, int(c.d_conv), s));
      CUDA_CHECK(kc::ssm_scan(ssm_state, f16_state_, g.pf_xbc, g.pf_zx + di + D, dip, L.dt_bias, L.A, L.D, g.pf_y, T,
                              int(H), int(c.headdim), int(c.d_state), int(c.ngroups), float(c.dt_limit_min),
                              float(c.dt_limit_max), s));
      CUDA_CHECK(kc::gated_rmsnorm_quant_rows(g.pf_y, g.pf_zx, dip, L.gnorm, g.pf_g, T, di, int(c.ngroups), eps,
                                              L.out.b, g.pf_q, L.out.ldq, g.pf_sx, s));
      project(L.out, g.pf_g, T, g.pf_hidden, d);
    }
    if (all_logits) head_rows(g.pf_res, g.pf_hidden, T, all_logits + i * V_);
    else if (i + T == n) head_rows(g.pf_res + (T - 1) * d, g.pf_hidden + (T - 1) * d, 1, g.h_logits);
  }
}

double CudaSession::time_steps_ms(int iters) {
  Dev& g = *dev_;
  run_forward(batch_, 0, true);  // warm: capture outside the timed region
  CUDA_CHECK(cudaStreamSynchronize(g.stream));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  CUDA_CHECK(cudaEventRecord(e0, g.stream));
  for (int i = 0; i < iters; ++i) run_forward(batch_, 0, true);
  CUDA_CHECK(cudaEventRecord(e1, g.stream));
  CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  for (auto& p : pos_) p += iters + 1;
  return double(ms) / iters;
}

std::vector<std::pair<std::string, std::vector<uint64_t>>> CudaSession::trace_step() {
  std::vector<std::pair<std::string, std::vector<uint64_t>>> out;
  if (!folded(batch_)) return out;
  Dev& g = *dev_;
  const size_t launches = size_t(3 * model_->config().n_layer), n = launches * kc::kTraceSlots;
  std::vector<unsigned long long> init(n, 0ull), got(n);
  for (size_t i = 0; i < launches; ++i) init[i * kc::kTraceSlots + kc::kFirstEntry] = ~0ull;
  unsigned long long* buf = nullptr;
  CUDA_CHECK(cudaMalloc(&buf, n * sizeof(unsigned long long)));
  trace_ = buf;
  trace_names_.clear();
  const auto exec = static_cast<cudaGraphExec_t>(capture_forward(batch_, 0, true));
  trace_ = nullptr;
  for (int rep = 0; rep < 2; ++rep) {  // the first replay warms up
    CUDA_CHECK(cudaMemcpyAsync(buf, init.data(), n * sizeof(unsigned long long), cudaMemcpyHostToDevice, g.stream));
    CUDA_CHECK(cudaGraphLaunch(exec, g.stream));
  }
  CUDA_CHECK(cudaMemcpyAsync(got.data(), buf, n * sizeof(unsigned long long), cudaMemcpyDeviceToHost, g.stream));
  CUDA_CHECK(cudaStreamSynchronize(g.stream));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaFree(buf));
  for (size_t i = 0; i < launches && i < trace_names_.size(); ++i)
    out.emplace_back(trace_names_[i], std::vector<uint64_t>(got.begin() + long(i * kc::kTraceSlots),
                                                            got.begin() + long((i + 1) * kc::kTraceSlots)));
  for (auto& p : pos_) p += 2;
  return out;
}

std::map<std::string, double> CudaSession::profile_step_ms() {
  std::vector<std::pair<std::string, void*>> ev;
  forward(batch_, 0, true, false, &ev);
  CUDA_CHECK(cudaStreamSynchronize(dev_->stream));
  std::map<std::string, double> out;
  for (size_t i = 1; i < ev.size(); ++i) {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(ev[i - 1].second),
                                    static_cast<cudaEvent_t>(ev[i].second)));
    out[ev[i].first] += ms;
  }
  for (auto& [k, e] : ev) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  for (auto& p : pos_) ++p;
  return out;
}

std::vector<uint8_t> CudaSession::save_state(int64_t seq) const {
  DFSSM_CHECK(seq >= 0 && seq < batch_, "sequence ", seq, " outside [0, ", batch_, ")");
  auto out = new_state_blob(model_->config(), f16_state_, pos_[size_t(seq)], state_bytes_);
  CUDA_CHECK(cudaStreamSynchronize(dev_->stream));
  CUDA_CHECK(cudaMemcpyAsync(out.data() + sizeof(StateHeader), dev_->state + uint64_t(seq) * state_bytes_,
                             state_bytes_, cudaMemcpyDeviceToHost, dev_->stream));
  CUDA_CHECK(cudaStreamSynchronize(dev_->stream));
  return out;
}

void CudaSession::restore_state(int64_t seq, const std::vector<uint8_t>& blob) {
  DFSSM_CHECK(seq >= 0 && seq < batch_, "sequence ", seq, " outside [0, ", batch_, ")");
  const StateHeader h = check_state_blob(blob, model_->config(), f16_state_, state_bytes_);
  CUDA_CHECK(cudaStreamSynchronize(dev_->stream));
  CUDA_CHECK(cudaMemcpyAsync(dev_->state + uint64_t(seq) * state_bytes_, blob.data() + sizeof h, state_bytes_,
                             cudaMemcpyHostToDevice, dev_->stream));
  CUDA_CHECK(cudaStreamSynchronize(dev_->stream));
  pos_[size_t(seq)] = h.position;
}

}  // namespace dfssm::runtime
