#include "runtime/session.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "runtime/state_blob.h"
#include "runtime/thread_pool.h"

namespace dfssm::runtime {

using namespace kernels::cpu;

namespace {
// Row ranges handed to threads are multiples of this (the vector kernels tile rows by up to 16).
constexpr int64_t kRowAlign = 16;

}  // namespace

Session::Session(std::shared_ptr<const Model> model, int64_t batch, const SessionOptions& opt)
    : model_(std::move(model)), opt_(opt), batch_(batch) {
  DFSSM_CHECK(model_, "Session: no model");
  DFSSM_CHECK(batch >= 1, "batch must be >= 1 (got ", batch, ")");
  DFSSM_CHECK(opt.prefill_chunk >= 1, "prefill_chunk must be >= 1 (got ", opt.prefill_chunk, ")");
  DFSSM_CHECK(opt.state_dtype == "f32" || opt.state_dtype == "f16", "state dtype must be f32 or f16 (got '",
              opt.state_dtype, "')");
  isa_ = opt.isa.empty() ? active_isa() : isa_from_name(opt.isa);
  DFSSM_CHECK(isa_supported(isa_), "CPU ISA ", isa_name(isa_), " is not supported by this CPU");
  k_ = &kernel_table(isa_);
  DFSSM_CHECK(opt.act == "f32" || opt.act == "i16" || opt.act == "i8", "activation precision must be f32, i16 or i8 (got '",
              opt.act, "')");
  act_ = opt.act == "i16" ? Act::I16 : opt.act == "i8" ? Act::I8 : Act::F32;
  pool_ = std::make_unique<ThreadPool>(opt.threads);
  const auto& c = model_->config();
  V_ = c.padded_vocab();
  f16_state_ = opt.state_dtype == "f16";
  conv_bytes_ = uint64_t(c.d_conv * c.conv_dim() * 4);
  ssm_bytes_ = uint64_t(c.nheads() * c.headdim * c.d_state) * (f16_state_ ? 2 : 4);
  state_bytes_ = uint64_t(c.n_layer) * (conv_bytes_ + ssm_bytes_);
  state_.assign(size_t(batch), std::vector<uint8_t>(state_bytes_));
  pos_.assign(size_t(batch), 0);
  step_seqs_.resize(size_t(batch));
  for (int64_t b = 0; b < batch; ++b) step_seqs_[size_t(b)] = b;
  reset();

  rows_max_ = std::max(batch, opt.prefill_chunk);
  const size_t R = size_t(rows_max_);
  const int64_t wide = std::max(c.d_model, c.d_inner());
  residual_.resize(R * size_t(c.d_model));
  hidden_.resize(R * size_t(c.d_model));
  normed_.resize(R * size_t(c.d_model));
  xb_.resize(R * size_t(wide));
  zxbcdt_.resize(R * size_t(c.d_in_proj()));
  lrz_.resize(R * size_t(std::max<int64_t>(1, model_->quant().effective_rank())));
  xbc_.resize(R * size_t(c.conv_dim()));
  y_.resize(R * size_t(c.d_inner()));
  g_.resize(R * size_t(c.d_inner()));
  logits_.resize(size_t(batch) * size_t(V_));
  xq_.resize(R * size_t(wide));
  xq16_.resize(R * size_t((wide + 63) / 64 * 64));
  xs_.resize(R);
  xsum_.resize(R);
}

Session::~Session() = default;

int Session::threads() const { return pool_->size(); }

void Session::reset() {
  for (int64_t s = 0; s < batch_; ++s) reset(s);
}

void Session::reset(int64_t seq) {
  check_seq(seq);
  std::fill(state_[size_t(seq)].begin(), state_[size_t(seq)].end(), uint8_t(0));  // +0.0 in fp32 and fp16
  pos_[size_t(seq)] = 0;
}

float* Session::conv_state(int64_t seq, int64_t layer) {
  return reinterpret_cast<float*>(state_[size_t(seq)].data() + uint64_t(layer) * (conv_bytes_ + ssm_bytes_));
}
void* Session::ssm_state(int64_t seq, int64_t layer) {
  return state_[size_t(seq)].data() + uint64_t(layer) * (conv_bytes_ + ssm_bytes_) + conv_bytes_;
}

void Session::check_seq(int64_t seq) const {
  DFSSM_CHECK(seq >= 0 && seq < batch_, "sequence ", seq, " outside [0, ", batch_, ")");
}

void Session::check_tokens(const int32_t* tokens, int64_t n) const {
  const int64_t vs = model_->config().vocab_size;
  for (int64_t i = 0; i < n; ++i)
    DFSSM_CHECK(tokens[i] >= 0 && tokens[i] < vs, "token id ", tokens[i], " at position ", i,
                " is outside the vocabulary [0, ", vs, ")");
}

void Session::project(const Projection& p, const float* x, int64_t ldx, int64_t T, float* y, int64_t ldy) {
  if (p.kind == Projection::Kind::DenseF16) {
    pool_->parallel_ranges(p.rows, kRowAlign, [&](int64_t r0, int64_t r1) {
      k_->f16_rows_gemm({p.w16, x, ldx, y, ldy, T, p.cols, r0, r1});
    });
    return;
  }
  // Per token: xb = b ⊙ x (shared by every row of the sign GEMM), its quantization, and the
  // low-rank z = V x. Tokens are independent, so a prefill chunk splits them across threads.
  const int64_t C = p.cols;
  const int64_t ld16 = (C + 63) / 64 * 64;  // zero-padded rows (ops.h, SignGemmI16Args)
  auto prepare = [&](int64_t t0, int64_t t1) {
    const int64_t n = t1 - t0;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t c = 0; c < C; ++c) xb_[size_t(t * C + c)] = p.b[size_t(c)] * x[t * ldx + c];
    const float* xbt = &xb_[size_t(t0 * C)];
    if (act_ == Act::I8)
      k_->quantize_rows_i8({xbt, C, &xq_[size_t(t0 * C)], C, &xs_[size_t(t0)], &xsum_[size_t(t0)], n, C});
    if (act_ == Act::I16)
      k_->quantize_rows_i16({xbt, C, &xq16_[size_t(t0 * ld16)], ld16, &xs_[size_t(t0)], &xsum_[size_t(t0)], n, C});
    if (p.rank > 0) k_->lowrank_down({p.v, p.vs.data(), x + t0 * ldx, ldx, &lrz_[size_t(t0 * p.rank)], n, C, p.rank});
  };
  if (T > 1) pool_->parallel_ranges(T, 1, prepare);
  else prepare(0, T);
  pool_->parallel_ranges(p.rows, kRowAlign, [&](int64_t r0, int64_t r1) {
    if (act_ == Act::I16)
      k_->sign_gemm_i16({p.codes, p.row_bytes, p.a.data(), xq16_.data(), ld16, xs_.data(), xsum_.data(), y, ldy, T, C, r0, r1});
    else if (act_ == Act::I8)
      k_->sign_gemm_i8({p.codes, p.row_bytes, p.a.data(), xq_.data(), C, xs_.data(), xsum_.data(), y, ldy, T, C, r0, r1});
    else
      k_->sign_gemm({p.codes, p.row_bytes, p.a.data(), xb_.data(), C, y, ldy, T, C, r0, r1});
    if (p.rank > 0) k_->lowrank_up({p.u, p.us.data(), lrz_.data(), y, ldy, T, p.rank, r0, r1});
  });
}

void Session::lm_head(const float* x, int64_t T, float* logits) {
  const auto& e = model_->lm_head();
  const int64_t d = model_->config().d_model;
  if (e.codes && act_ == Act::I16) {  // the int8 head on int16 activations (exact int32 sums)
    const int64_t ld16 = (d + 63) / 64 * 64;
    k_->quantize_rows_i16({x, d, xq16_.data(), ld16, xs_.data(), xsum_.data(), T, d});
    pool_->parallel_ranges(V_, kRowAlign, [&](int64_t r0, int64_t r1) {
      k_->i8_rows_gemm_i16({e.codes, e.scale.data(), xq16_.data(), ld16, xs_.data(), logits, V_, T, d, r0, r1});
    });
    return;
  }
  pool_->parallel_ranges(V_, kRowAlign, [&](int64_t r0, int64_t r1) {
    if (e.codes) k_->i8_rows_gemm({e.codes, e.scale.data(), x, d, logits, V_, T, d, r0, r1});
    else k_->f16_rows_gemm({e.w16, x, d, logits, V_, T, d, r0, r1});
  });
}

void Session::forward_rows(const int32_t* tokens, const int64_t* seqs, int64_t T, int64_t logit_from, float* logits) {
  const auto& c = model_->config();
  const int64_t d = c.d_model, di = c.d_inner(), D = c.conv_dim(), dip = c.d_in_proj(), H = c.nheads();
  const int64_t GN = c.ngroups * c.d_state;
  const float eps = float(c.norm_eps);
  const auto& emb = model_->embedding();
  DFSSM_ASSERT(T >= 1 && T <= rows_max_, "forward_rows: T=", T, " rows_max=", rows_max_);
  // Embedding rows start the residual stream (fp32, as the trainer's residual_in_fp32).
  for (int64_t t = 0; t < T; ++t) {
    float* r = &residual_[size_t(t * d)];
    const int64_t tok = tokens[t];
    if (emb.codes) {
      const float s = emb.scale[size_t(tok)];
      for (int64_t i = 0; i < d; ++i) r[i] = float(emb.codes[tok * d + i]) * s;
    } else {
      for (int64_t i = 0; i < d; ++i) r[i] = half_to_float(emb.w16[tok * d + i]);
    }
  }
  const float dt_min = float(c.dt_limit_min), dt_max = float(c.dt_limit_max);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const Layer& L = model_->layers()[size_t(l)];
    for (int64_t t = 0; t < T; ++t)
      k_->add_rmsnorm({l == 0 ? nullptr : &hidden_[size_t(t * d)], &residual_[size_t(t * d)], L.norm.data(),
                       &normed_[size_t(t * d)], d, eps});
    project(L.in_proj, normed_.data(), d, T, zxbcdt_.data(), dip);
    // Conv, SSM and gate token by token: rows of one sequence are consecutive positions.
    for (int64_t t = 0; t < T; ++t) {
      float* zx = &zxbcdt_[size_t(t * dip)];
      float* xbc = &xbc_[size_t(t * D)];
      k_->conv_step_silu({conv_state(seqs[t], l), L.conv_w.data(), L.conv_b.empty() ? nullptr : L.conv_b.data(),
                          zx + di, xbc, D, c.d_conv, 0, D});
      void* st = ssm_state(seqs[t], l);
      SsmStepArgs a{f16_state_ ? nullptr : static_cast<float*>(st), f16_state_ ? static_cast<uint16_t*>(st) : nullptr,
                    xbc, xbc + di, xbc + di + GN, zx + di + D, L.dt_bias.data(), L.A.data(), L.D.data(),
                    &y_[size_t(t * di)], dt_min, dt_max, H, c.headdim, c.d_state, c.ngroups, 0, H};
      pool_->parallel_ranges(H, 1, [&](int64_t h0, int64_t h1) {
        SsmStepArgs b = a;
        b.h0 = h0, b.h1 = h1;
        k_->ssm_step(b);
      });
      k_->gated_rmsnorm({&y_[size_t(t * di)], zx, L.gnorm.data(), &g_[size_t(t * di)], di, c.ngroups, eps});
    }
    project(L.out_proj, g_.data(), di, T, hidden_.data(), d);
  }
  for (int64_t t = 0; t < T; ++t)
    k_->add_rmsnorm({&hidden_[size_t(t * d)], &residual_[size_t(t * d)], model_->norm_f().data(),
                     &normed_[size_t(t * d)], d, eps});
  if (logit_from < T) lm_head(&normed_[size_t(logit_from * d)], T - logit_from, logits);
}

const float* Session::prefill(int64_t seq, const int32_t* tokens, int64_t n, float* all_logits) {
  check_seq(seq);
  DFSSM_CHECK(n >= 1, "prefill needs at least one token");
  check_tokens(tokens, n);
  std::vector<int64_t> seqs(static_cast<size_t>(opt_.prefill_chunk), seq);
  for (int64_t i = 0; i < n; i += opt_.prefill_chunk) {
    const int64_t T = std::min(opt_.prefill_chunk, n - i);
    const bool last = i + T == n;
    if (all_logits) forward_rows(tokens + i, seqs.data(), T, 0, all_logits + i * V_);
    else forward_rows(tokens + i, seqs.data(), T, last ? T - 1 : T, logits_.data());
    pos_[size_t(seq)] += T;
  }
  if (all_logits) std::memcpy(logits_.data(), all_logits + (n - 1) * V_, size_t(V_) * 4);
  return logits_.data();
}

const float* Session::step(const int32_t* tokens) {
  check_tokens(tokens, batch_);
  forward_rows(tokens, step_seqs_.data(), batch_, 0, logits_.data());
  for (auto& p : pos_) ++p;
  return logits_.data();
}

std::vector<uint8_t> Session::save_state(int64_t seq) const {
  check_seq(seq);
  auto out = new_state_blob(model_->config(), f16_state_, pos_[size_t(seq)], state_bytes_);
  std::memcpy(out.data() + sizeof(StateHeader), state_[size_t(seq)].data(), state_bytes_);
  return out;
}

void Session::restore_state(int64_t seq, const std::vector<uint8_t>& blob) {
  check_seq(seq);
  const StateHeader h = check_state_blob(blob, model_->config(), f16_state_, state_bytes_);
  std::memcpy(state_[size_t(seq)].data(), blob.data() + sizeof h, state_bytes_);
  pos_[size_t(seq)] = h.position;
}

}  // namespace dfssm::runtime
