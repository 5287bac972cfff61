#include "model/mamba2.h"
#include "model/recompute.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

#include "core/error.h"
#include "model/conv_fused.h"
#include "model/norm_fused.h"
#include "model/ssd.h"
#include "model/ssd_scan.h"

namespace dfssm {

namespace {
// Depthwise conv with no padding (the caller prepends the causal left context).
at::Tensor conv1d_valid(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t groups) {
  const int64_t one = 1, zero = 0;
  return at::conv1d(x, w, b, at::IntArrayRef(one), at::IntArrayRef(zero), at::IntArrayRef(one), groups);
}
// Consecutive named profiler ranges (user scopes): next() closes one and opens the next. Costs a
// flag test when no profiler is active.
class ProfileScope {
 public:
  explicit ProfileScope(const char* name) { open(name); }
  void next(const char* name) {
    rf_.reset();
    open(name);
  }

 private:
  void open(const char* name) {
    if (!at::hasCallbacks()) return;
    rf_.emplace(at::RecordScope::USER_SCOPE);
    if (rf_->isActive()) rf_->before(name);
  }
  std::optional<at::RecordFunction> rf_;
};
}  // namespace

void Mamba2Model::set_chunk_size(int64_t c) {
  DFSSM_CHECK(c >= 1, "chunk size must be positive, got ", c);
  cfg_.chunk_size = c;
}

at::Tensor DenseLinear::forward(const at::Tensor& x) const { return at::linear(x, weight); }

Mamba2Model::Mamba2Model(const Mamba2Config& cfg, at::TensorOptions opts) : cfg_(cfg), opts_(opts) {
  cfg_.validate("model config");
  const auto f32 = opts.dtype(at::kFloat);
  const int64_t d = cfg.d_model, di = cfg.d_inner(), h = cfg.nheads();
  embedding = at::empty({cfg.padded_vocab(), d}, opts);
  if (!cfg.tie_embeddings) lm_head = at::empty({cfg.padded_vocab(), d}, opts);
  norm_f = at::empty({d}, opts);
  layers.resize(size_t(cfg.n_layer));
  for (auto& blk : layers) {
    blk.norm_w = at::empty({d}, opts);
    auto& m = blk.mixer;
    m.in_proj = std::make_shared<DenseLinear>(at::empty({cfg.d_in_proj(), d}, opts));
    m.conv_w = at::empty({cfg.conv_dim(), 1, cfg.d_conv}, opts);
    if (cfg.conv_bias) m.conv_b = at::empty({cfg.conv_dim()}, opts);
    m.dt_bias = at::empty({h}, f32);
    m.A_log = at::empty({h}, f32);
    m.D = at::empty({h}, f32);
    m.norm_w = at::empty({di}, opts);
    m.out_proj = std::make_shared<DenseLinear>(at::empty({d, di}, opts));
  }
}

NamedTensors Mamba2Model::named_parameters() const {
  NamedTensors out;
  out.emplace_back("backbone.embedding.weight", embedding);
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".";
    const auto& m = layers[i].mixer;
    out.emplace_back(p + "norm.weight", layers[i].norm_w);
    for (auto& [k, v] : m.in_proj->named_parameters()) out.emplace_back(p + "mixer.in_proj." + k, v);
    out.emplace_back(p + "mixer.conv1d.weight", m.conv_w);
    if (m.conv_b.defined()) out.emplace_back(p + "mixer.conv1d.bias", m.conv_b);
    out.emplace_back(p + "mixer.dt_bias", m.dt_bias);
    out.emplace_back(p + "mixer.A_log", m.A_log);
    out.emplace_back(p + "mixer.D", m.D);
    out.emplace_back(p + "mixer.norm.weight", m.norm_w);
    for (auto& [k, v] : m.out_proj->named_parameters()) out.emplace_back(p + "mixer.out_proj." + k, v);
  }
  out.emplace_back("backbone.norm_f.weight", norm_f);
  if (lm_head.defined()) out.emplace_back("lm_head.weight", lm_head);
  return out;
}

void Mamba2Model::init_random(uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto cpu = at::TensorOptions().dtype(at::kFloat);
  auto uniform = [&](at::IntArrayRef shape, double bound) { return at::empty(shape, cpu).uniform_(-bound, bound, gen); };
  auto set = [&](at::Tensor& dst, const at::Tensor& src) {
    at::NoGradGuard ng;
    dst.copy_(src);
  };
  const auto& c = cfg_;
  set(embedding, at::empty(embedding.sizes(), cpu).normal_(0.0, 0.02, gen));
  if (lm_head.defined()) set(lm_head, at::empty(lm_head.sizes(), cpu).normal_(0.0, 0.02, gen));
  set(norm_f, at::ones(norm_f.sizes(), cpu));
  const int64_t h = c.nheads();
  for (auto& blk : layers) {
    auto& m = blk.mixer;
    set(blk.norm_w, at::ones(blk.norm_w.sizes(), cpu));
    // nn.Linear's default kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    auto* in = dynamic_cast<DenseLinear*>(m.in_proj.get());
    auto* out = dynamic_cast<DenseLinear*>(m.out_proj.get());
    DFSSM_ASSERT(in && out, "init_random needs dense projections");
    set(in->weight, uniform(in->weight.sizes(), 1.0 / std::sqrt(double(c.d_model))));
    // Conv1d default init, fan_in = d_conv (depthwise).
    set(m.conv_w, uniform(m.conv_w.sizes(), 1.0 / std::sqrt(double(c.d_conv))));
    if (m.conv_b.defined()) set(m.conv_b, uniform(m.conv_b.sizes(), 1.0 / std::sqrt(double(c.d_conv))));
    // dt log-uniform in [dt_min, dt_max], floored; dt_bias = softplus^-1(dt).
    auto dt = at::exp(at::rand({h}, gen, cpu) *
                          (std::log(c.dt_max) - std::log(c.dt_min)) +
                      std::log(c.dt_min))
                  .clamp_min(c.dt_init_floor);
    set(m.dt_bias, dt + at::log(-at::expm1(-dt)));
    set(m.A_log, at::log(at::empty({h}, cpu).uniform_(c.A_init_min, c.A_init_max, gen)));
    set(m.D, at::ones({h}, cpu));
    set(m.norm_w, at::ones(m.norm_w.sizes(), cpu));
    // mamba_ssm rescales out_proj by 1/sqrt(n_layer) (rescale_prenorm_residual, one residual per layer).
    set(out->weight, uniform(out->weight.sizes(), 1.0 / std::sqrt(double(c.d_inner()))) /
                         std::sqrt(double(c.n_layer)));
  }
}

InferenceState Mamba2Model::new_state(int64_t batch) const {
  InferenceState s;
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    s.layers.push_back({at::zeros({batch, cfg_.conv_dim(), cfg_.d_conv}, opts_),
                        at::zeros({batch, cfg_.nheads(), cfg_.headdim, cfg_.d_state}, opts_.dtype(at::kFloat))});
  }
  return s;
}

// What the fused norms write: bf16 where a bf16 autocast matmul consumes the output (it would
// cast it to bf16 anyway: the same rounding, one pass less) or the model is bf16; else fp32,
// which the caller casts to the model's dtype (fp16 goes through fp32).
at::ScalarType Mamba2Model::norm_out_dtype(const at::Tensor& x, bool to_matmul) const {
  if (to_matmul && x.is_cuda() && at::autocast::is_autocast_enabled(at::kCUDA) &&
      at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16)
    return at::kBFloat16;
  return dtype() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

at::Tensor Mamba2Model::rmsnorm(const at::Tensor& x, const at::Tensor& w, bool to_matmul) const {
  if (rms_norm_fused_available(x)) {  // CUDA: one kernel each way
    const auto odt = norm_out_dtype(x, to_matmul);
    return rms_norm_fused(x, w, cfg_.norm_eps, odt).to(odt == at::kBFloat16 ? odt : dtype());
  }
  const auto xf = x.to(at::kFloat);
  const auto rstd = at::rsqrt(xf.pow(2).mean(-1, true) + cfg_.norm_eps);
  return (xf * rstd * w.to(at::kFloat)).to(dtype());
}

// mamba_ssm's RMSNormGated(norm_before_gate=False): RMSNorm(y * silu(z)) with one RMS per
// group of d_inner/ngroups channels, fp32 math.
// y_values: see gated_norm_fused (y then only carries the graph).
at::Tensor Mamba2Model::gated_rmsnorm(const at::Tensor& y, const at::Tensor& z, const at::Tensor& w,
                                      const at::Tensor& y_values, const GradInto& dz_into) const {
  const int64_t gs = cfg_.d_inner() / cfg_.ngroups;
  if (y.dim() == 3 && gated_norm_fused_available(y, gs)) {  // full sequences on CUDA: one kernel each way
    const auto odt = norm_out_dtype(y, true);                 // out_proj consumes it
    return gated_norm_fused(y, z, w, gs, cfg_.norm_eps, odt, y_values, dz_into)
        .to(odt == at::kBFloat16 ? odt : dtype());
  }
  // y is zero where y_values is given: the sum has y_values' values and routes the gradient to y.
  const auto yv = y_values.defined() ? y + y_values.to(y.scalar_type()) : y;
  const auto x = yv.to(at::kFloat) * at::silu(z.to(at::kFloat));
  auto sizes = x.sizes().vec();
  auto gsizes = sizes;
  gsizes.back() = cfg_.ngroups;
  gsizes.push_back(cfg_.d_inner() / cfg_.ngroups);
  const auto xg = x.view(gsizes);
  const auto out = (xg * at::rsqrt(xg.pow(2).mean(-1, true) + cfg_.norm_eps)).view(sizes);
  return (out * w.to(at::kFloat)).to(dtype());
}

at::Tensor Mamba2Model::discretize_dt(const at::Tensor& dt_raw, const at::Tensor& dt_bias) const {
  // softplus with PyTorch's threshold (identity above 20), in fp32.
  auto dt = at::softplus(dt_raw.to(at::kFloat) + dt_bias, 1.0, 20.0);
  if (cfg_.has_dt_limit()) dt = dt.clamp(cfg_.dt_limit_min, cfg_.dt_limit_max);
  return dt;
}

// Causal depthwise conv + SiLU in ATen, (b,l,conv_dim) -> (b,l,conv_dim) channels-last. The left
// context is d_conv-1 zeros for a fresh sequence, or the cached raw columns when continuing;
// either way one padded tensor and a valid convolution. Leaves the new conv cache in `st`.
at::Tensor Mamba2Model::conv_silu_aten(const at::Tensor& xBC_in, const Mamba2Mixer& m, LayerState* st) const {
  const auto& c = cfg_;
  const auto xBC_raw = xBC_in.transpose(1, 2);  // (b,conv_dim,l)
  const auto left = st ? st->conv.narrow(-1, 1, c.d_conv - 1).to(xBC_raw.scalar_type())
                       : at::zeros({xBC_in.size(0), c.conv_dim(), c.d_conv - 1}, xBC_raw.options());
  const auto xpad = at::cat({left, xBC_raw}, -1);
  if (st) {
    at::NoGradGuard ng;
    st->conv = xpad.narrow(-1, xpad.size(-1) - c.d_conv, c.d_conv).detach().contiguous();
  }
  return at::silu(conv1d_valid(xpad, m.conv_w, m.conv_b, c.conv_dim())).transpose(1, 2);
}

at::Tensor Mamba2Model::mixer_forward(const Mamba2Mixer& m, const at::Tensor& u, LayerState* st,
                                      SsdOutputKeep* keep) const {
  const auto& c = cfg_;
  const int64_t b = u.size(0), l = u.size(1), di = c.d_inner(), gn = c.ngroups * c.d_state, h = c.nheads();
  // The profiler scopes name the parts for DFSSM_PROFILE_STEP (src/distill/profile.h).
  ProfileScope scope("dfssm::in_proj");
  at::Tensor zxbcdt;  // (b,l,d_in_proj)
  at::Tensor W_in;    // in_proj's weight where a recomputation reuses the kept output
  if (keep && !keep->capture_in_proj && keep->zxbcdt.defined() && !st) W_in = m.in_proj->matmul_weight(u);
  zxbcdt = W_in.defined() ? linear_graph_only(u, W_in, keep->zxbcdt) : m.in_proj->forward(u);
  if (keep && keep->capture_in_proj && !st) keep->zxbcdt = zxbcdt;  // the first pass of a recomputed block
  scope.next("dfssm::conv");
  // One split, not three narrows (each narrow's backward would zero-fill a whole (b, l,
  // d_in_proj) tensor and add them up); on CUDA its parts' fused consumers write their gradients
  // straight into one shared buffer (split_grad.h), which is the split's whole gradient.
  const auto split = split_columns(zxbcdt, {di, c.conv_dim(), h});
  const auto &z = split.parts[0], &xBC_raw = split.parts[1], &dt_raw = split.parts[2];
  const bool fused_conv = st == nullptr && conv_fused_available(u, c.d_conv);
  // SSD forward version 4 (the default): a pass without gradients whose in_proj output is bf16
  // (autocast, a bf16 model) has the conv write x, B and C in bf16 for the SSD forward's bf16-input
  // kernel (half the bytes). An fp32 pass keeps fp32 inputs (version 2's accuracy).
  const bool conv_bf16 = fused_conv && !at::GradMode::is_enabled() && zxbcdt.scalar_type() == at::kBFloat16 &&
                         ssd_scan_bf16_inputs_wanted();
  const auto xBC = conv_bf16    ? conv_silu_fused_bf16(xBC_raw, m.conv_w, m.conv_b)
                   : fused_conv ? conv_silu_fused(xBC_raw, m.conv_w, m.conv_b, split.into[1])  // fp32, read in place
                                : conv_silu_aten(xBC_raw, m, st);
  const auto dt = discretize_dt(dt_raw, m.dt_bias);  // (b,l,h)
  const auto A = -at::exp(m.A_log.to(at::kFloat));
  // Where the config says 256, the fused kernels run chunks of 128 without a gradient and of 64
  // with one: the result depends on the chunk length only through rounding; at the 1.3B training
  // shape (H200) the no-grad forward is fastest at 128 (3.2 ms vs 3.4 at 64 and 5.1 at 256), the
  // backward takes 64 or 128, and a distillation step was faster at 64 (13.5k vs 12.4k tokens/s).
  const int64_t fchunk = c.chunk_size == 256 ? 128 : c.chunk_size;
  const int64_t tchunk = c.chunk_size == 256 ? 64 : c.chunk_size;
  // x, B, C: views of the conv output in fp32, or in bf16 where the no-grad SSD kernel takes them.
  auto xbc_views = [&](const at::Tensor& t) {
    const auto v = t.split_with_sizes({di, gn, gn}, -1);
    return std::make_tuple(t, v[0].view({b, l, h, c.headdim}), v[1].view({b, l, c.ngroups, c.d_state}),
                           v[2].view({b, l, c.ngroups, c.d_state}));
  };
  at::Tensor xBCf, x, B, C;  // (not structured bindings: the lambdas below capture them)
  std::tie(xBCf, x, B, C) = xbc_views(conv_bf16 ? xBC : xBC.to(at::kFloat));
  if (conv_bf16 && !ssd_scan_fused_available(x, dt, A, B, C, m.D, fchunk))
    std::tie(xBCf, x, B, C) = xbc_views(xBC.to(at::kFloat));  // shapes the kernel does not take
  scope.next("dfssm::ssd");
  at::Tensor y, final_state;
  at::Tensor y_values;  // where y only carries the graph (a recomputation's kept output): its values
  const auto Df = m.D.to(at::kFloat);
  // The train path over the whole conv output where it can (one gradient for it, written in
  // place by the backward kernels), else over its split.
  const auto train = [&](const at::Tensor& init, const at::Tensor& y_kept) {
    return ssd_scan_xbc_grad_enabled()
               ? ssd_scan_train_xbc(xBCf, c.headdim, c.ngroups, dt, A, Df, tchunk, init, y_kept)
               : ssd_scan_train(x, dt, A, B, C, Df, tchunk, init, y_kept);
  };
  const bool reuse = keep && !keep->capture && keep->y.defined() && !st;
  if (reuse && ssd_scan_train_available(x, dt, A, B, C, Df, tchunk)) {  // a recomputation that kept y
    std::tie(y, final_state) = train(at::Tensor(), keep->y);
    y_values = keep->y.reshape({b, l, di});
  } else if (ssd_scan_fused_available(x, dt, A, B, C, m.D, fchunk)) {  // no gradient needed: the no-grad CUDA forward
    // Kept only where the recomputation can use it (the train path runs there).
    const bool capture = keep && keep->capture && !st &&
                         ssd_scan_train_available(x, dt, A, B, C, Df, tchunk, /*as_fp32=*/true);
    // y in bf16 where its consumers take bf16 (ssd_scan.h, ssd_scan_y_bf16_enabled): the kept
    // copy itself, or a bf16 model's; the gated norm below reads it as is.
    const bool y_bf16 = ssd_scan_y_bf16_enabled() && z.scalar_type() == at::kBFloat16 &&
                        (capture ? keep->dtype == at::kBFloat16 : !keep && dtype() == at::kBFloat16);
    std::tie(y, final_state) = ssd_scan_fused(x, dt, A, B, C, m.D, fchunk, st ? st->ssm : at::Tensor(),
                                              y_bf16 ? at::kBFloat16 : at::kFloat);
    if (capture) keep->y = y_bf16 ? y : y.to(keep->dtype);
  } else if (ssd_scan_train_available(x, dt, A, B, C, Df, tchunk)) {  // CUDA kernels both ways
    std::tie(y, final_state) = train(st ? st->ssm : at::Tensor(), at::Tensor());
  } else {
    std::tie(y, final_state) = ssd_chunked(x, dt, A, B, C, c.chunk_size, st ? st->ssm : at::Tensor());
    y = y + x * Df.view({1, 1, h, 1});  // D skip, before the gate
  }
  if (st) st->ssm = final_state.detach();
  scope.next("dfssm::gate_norm");
  const auto yn = gated_rmsnorm(y.reshape({b, l, di}), z, m.norm_w, y_values, split.into[0]);
  scope.next("dfssm::out_proj");
  if (keep && keep->output_graph_only)
    if (const auto W = m.out_proj->matmul_weight(yn); W.defined()) return linear_graph_only(yn, W);
  return m.out_proj->forward(yn);
}

at::Tensor Mamba2Model::mixer_step(const Mamba2Mixer& m, const at::Tensor& u, LayerState& st) const {
  const auto& c = cfg_;
  const int64_t b = u.size(0), di = c.d_inner(), gn = c.ngroups * c.d_state, h = c.nheads();
  const auto zxbcdt = m.in_proj->forward(u);  // (b,d_in_proj)
  const auto z = zxbcdt.narrow(-1, 0, di);
  const auto xBC_raw = zxbcdt.narrow(-1, di, c.conv_dim());
  const auto dt_raw = zxbcdt.narrow(-1, di + c.conv_dim(), h);

  // Shift the raw column into the conv cache, then one dot product per channel.
  st.conv = at::cat({st.conv.narrow(-1, 1, c.d_conv - 1), xBC_raw.unsqueeze(-1).to(st.conv.scalar_type())}, -1);
  auto conv = (st.conv.to(at::kFloat) * m.conv_w.squeeze(1).to(at::kFloat)).sum(-1);
  if (m.conv_b.defined()) conv = conv + m.conv_b.to(at::kFloat);
  const auto xBC = at::silu(conv);
  const auto x = xBC.narrow(-1, 0, di).view({b, h, c.headdim});
  auto B = xBC.narrow(-1, di, gn).view({b, c.ngroups, c.d_state});
  auto C = xBC.narrow(-1, di + gn, gn).view({b, c.ngroups, c.d_state});
  if (c.ngroups != h) {
    B = B.repeat_interleave(h / c.ngroups, 1);
    C = C.repeat_interleave(h / c.ngroups, 1);
  }

  const auto dt = discretize_dt(dt_raw, m.dt_bias);                  // (b,h)
  const auto dA = at::exp(dt * -at::exp(m.A_log.to(at::kFloat)));     // (b,h)
  st.ssm = st.ssm * dA.view({b, h, 1, 1}) + (x * dt.unsqueeze(-1)).unsqueeze(-1) * B.unsqueeze(2);
  auto y = (st.ssm * C.unsqueeze(2)).sum(-1) + x * m.D.to(at::kFloat).view({1, h, 1});  // (b,h,p)
  const auto yn = gated_rmsnorm(y.reshape({b, di}), z, m.norm_w);
  return m.out_proj->forward(yn);
}

namespace {
thread_local int ids_checked_depth = 0;
}
TokenIdsChecked::TokenIdsChecked() { ++ids_checked_depth; }
TokenIdsChecked::~TokenIdsChecked() { --ids_checked_depth; }
bool TokenIdsChecked::active() { return ids_checked_depth > 0; }

at::Tensor Mamba2Model::embed(const at::Tensor& ids) const {
  DFSSM_CHECK(ids.scalar_type() == at::kLong, "token ids must be int64");
  if (ids.numel() > 0 && (ids.is_cpu() || !TokenIdsChecked::active())) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    DFSSM_CHECK(lo >= 0 && hi < cfg_.padded_vocab(), "token id ", (lo < 0 ? lo : hi), " is outside the vocabulary [0, ",
                cfg_.padded_vocab(), ")");
  }
  return at::embedding(embedding_weight(), ids.to(device()));
}

at::Tensor Mamba2Model::logits(const at::Tensor& hidden) const {
  return at::linear(hidden, lm_weight());
}

at::Tensor Mamba2Model::forward(const at::Tensor& ids, InferenceState* state) const {
  return logits(forward_hidden(ids, state));
}

at::Tensor Mamba2Model::block(size_t i, const at::Tensor& residual, SsdOutputKeep* keep) const {
  return mixer_forward(layers[i].mixer, rmsnorm(residual, layers[i].norm_w, true), nullptr, keep);
}

at::Tensor Mamba2Model::block_on_normed(size_t i, const at::Tensor& normed, SsdOutputKeep* keep) const {
  return mixer_forward(layers[i].mixer, normed, nullptr, keep);
}

at::Tensor Mamba2Model::block_norm_add_grad(size_t i, const at::Tensor& x, const at::Tensor& dres,
                                            const at::Tensor& dh) const {
  const auto odt = norm_out_dtype(x, true);
  const auto n = rms_norm_fused_add_grad(x, layers[i].norm_w, cfg_.norm_eps, odt, dres, dh);
  return n.to(odt == at::kBFloat16 ? odt : dtype());
}

std::vector<at::Tensor> Mamba2Model::layer_parameters(size_t i) const {
  const auto& b = layers[i];
  const auto& m = b.mixer;
  std::vector<at::Tensor> p = {b.norm_w, m.conv_w, m.dt_bias, m.A_log, m.D, m.norm_w};
  if (m.conv_b.defined()) p.push_back(m.conv_b);
  for (auto& [k, t] : m.in_proj->named_parameters()) p.push_back(t);
  for (auto& [k, t] : m.out_proj->named_parameters()) p.push_back(t);
  return p;
}

at::Tensor Mamba2Model::lm_weight() const {
  if (!lm_head.defined()) return embedding_weight();
  return embedding_transform ? embedding_transform(lm_head) : lm_head;
}

namespace {
// residual + hidden in res_dtype. Where hidden (bf16 under autocast) promotes to the residual's
// dtype, one mixed-dtype add: the same values as casting first (bf16 -> fp32 is exact), without
// the cast's kernel and its fp32 copy (a 1.3B step at 16 x 2048 profiled 146 bf16 copy kernels,
// 13.7 ms, before this: 48 layers x 3 passes of these casts, and two others).
at::Tensor add_residual(const at::Tensor& residual, const at::Tensor& hidden, at::ScalarType res_dtype) {
  if (residual.scalar_type() == res_dtype && at::promote_types(res_dtype, hidden.scalar_type()) == res_dtype)
    return residual + hidden;
  return residual + hidden.to(res_dtype);
}
}  // namespace

namespace {
int g_stream_pairs = -1;  // -1: DFSSM_CKPT_STREAM_PAIRS not read yet
}  // namespace
bool Mamba2Model::stream_pairs() {
  if (g_stream_pairs < 0) {
    const char* e = std::getenv("DFSSM_CKPT_STREAM_PAIRS");
    g_stream_pairs = e && std::string(e) == "1" ? 1 : 0;
  }
  return g_stream_pairs == 1;
}
void Mamba2Model::set_stream_pairs(int on) { g_stream_pairs = on < 0 ? -1 : on ? 1 : 0; }

bool Mamba2Model::add_norm_fused(const at::Tensor& residual, const at::Tensor& hidden) const {
  return cfg_.residual_in_fp32 && add_rms_norm_fused_available(residual, hidden);
}

std::pair<at::Tensor, at::Tensor> Mamba2Model::add_norm(size_t i, const at::Tensor& residual,
                                                        const at::Tensor& hidden) const {
  const bool last = i == layers.size();
  const auto& w = last ? norm_f : layers[i].norm_w;
  if (add_norm_fused(residual, hidden)) {
    const auto odt = norm_out_dtype(residual, !last);  // block i's norm feeds in_proj
    auto [r, n] = add_rms_norm_fused(residual, hidden, w, cfg_.norm_eps, odt);
    return {r, n.to(odt == at::kBFloat16 ? odt : dtype())};
  }
  const auto r = add_residual(residual, hidden, cfg_.residual_in_fp32 ? at::kFloat : dtype());
  return {r, rmsnorm(r, w, !last)};
}

at::Tensor Mamba2Model::forward_hidden(const at::Tensor& ids, InferenceState* state,
                                       std::vector<at::Tensor>* residuals) const {
  DFSSM_CHECK(ids.dim() == 2, "forward expects token ids of shape (batch, length), got rank ", ids.dim());
  DFSSM_CHECK(!state || int64_t(state->layers.size()) == cfg_.n_layer, "inference state has ",
              state ? state->layers.size() : 0, " layers, model has ", cfg_.n_layer);
  const auto res_dtype = cfg_.residual_in_fp32 ? at::kFloat : dtype();
  auto hidden = embed(ids);
  at::Tensor residual;
  if (residuals) residuals->clear();
  // stream_pairs(): whether the previous block's checkpoint saved the stream it passed on (not
  // with `residuals`, which keep every stream anyway).
  bool stream_saved = false;
  const bool pairs = stream_pairs() && !residuals;
  for (size_t i = 0; i < layers.size(); ++i) {
    const bool recompute = !state && i < recompute_layers.size() && recompute_layers[i] && at::GradMode::is_enabled();
    if (residual.defined() && add_norm_fused(residual, hidden)) {  // the add fused into block i's norm
      if (recompute) {  // the add inside the checkpoint: its backward sums the stream's two gradients
        const bool operands = pairs && stream_saved && hidden.element_size() < residual.element_size();
        std::tie(residual, hidden) = recomputed_add_block(*this, i, residual, hidden, operands);
        stream_saved = !operands;
      } else {
        stream_saved = false;
        at::Tensor normed;
        std::tie(residual, normed) = add_norm(i, residual, hidden);
        hidden = mixer_forward(layers[i].mixer, normed, state ? &state->layers[i] : nullptr);
      }
      if (residuals) residuals->push_back(residual);  // the stream after block i-1
      continue;
    }
    residual = residual.defined() ? add_residual(residual, hidden, res_dtype) : hidden.to(res_dtype);
    if (residuals && i > 0) residuals->push_back(residual);  // the stream after block i-1
    stream_saved = recompute;  // recomputed_block saves its input, the stream
    hidden = recompute ? recomputed_block(*this, i, residual)
                       : mixer_forward(layers[i].mixer, rmsnorm(residual, layers[i].norm_w, true),
                                       state ? &state->layers[i] : nullptr);
  }
  if (state) state->seqlen += ids.size(1);
  auto [res, out] = add_norm(layers.size(), residual, hidden);
  if (residuals) residuals->push_back(res);
  return out;
}

at::Tensor Mamba2Model::step(const at::Tensor& ids, InferenceState& state) const {
  DFSSM_CHECK(ids.dim() == 1, "step expects token ids of shape (batch), got rank ", ids.dim());
  DFSSM_CHECK(int64_t(state.layers.size()) == cfg_.n_layer && state.layers[0].conv.size(0) == ids.size(0),
              "inference state does not match this model/batch");
  const auto res_dtype = cfg_.residual_in_fp32 ? at::kFloat : dtype();
  auto hidden = embed(ids);
  at::Tensor residual;
  for (size_t i = 0; i < layers.size(); ++i) {
    residual = residual.defined() ? add_residual(residual, hidden, res_dtype) : hidden.to(res_dtype);
    hidden = mixer_step(layers[i].mixer, rmsnorm(residual, layers[i].norm_w), state.layers[i]);
  }
  residual = add_residual(residual, hidden, res_dtype);
  state.seqlen += 1;
  return logits(rmsnorm(residual, norm_f));
}

}  // namespace dfssm
