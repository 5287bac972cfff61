#include "quant/scaffold_linear.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "quant/init.h"
#include "quant/scaffold_fused.h"

namespace dfssm::quant {

// ---- Fake-quant helpers ------------------------------------------------------------------------

at::Tensor ste(const at::Tensor& value, const at::Tensor& through) {
  // value + 0 with the gradient of `through`: bit-exact value, identity gradient.
  return value.detach() + (through - through.detach());
}

at::Tensor fake_fp16(const at::Tensor& t) { return ste(t.detach().to(at::kHalf).to(at::kFloat), t); }

namespace {
// fp16-exact scale from a magnitude: fp16(m / qmax), with 1 where that is 0 (an all-zero group
// then codes to 0 and stays exact). Same rule as quantize_int8_rows in format.cpp.
at::Tensor scale_from_amax(const at::Tensor& amax, double qmax) {
  auto s = (amax / qmax).to(at::kHalf).to(at::kFloat);
  return at::where(s == 0, at::ones_like(s), s);
}

// int4 group scales (rows, ngroups) of w (rows, cols).
at::Tensor int4_scales(const at::Tensor& w, int64_t group) {
  const int64_t rows = w.size(0), cols = w.size(1), ng = (cols + group - 1) / group;
  auto a = w.abs();
  if (ng * group != cols) a = at::constant_pad_nd(a, {0, ng * group - cols}, 0.0);
  return scale_from_amax(a.view({rows, ng, group}).amax(2), 7.0);
}

at::Tensor expand_groups(const at::Tensor& s, int64_t group, int64_t cols) {
  return s.repeat_interleave(group, 1).narrow(1, 0, cols);
}

at::Tensor ternary_scales(const at::Tensor& w, bool per_row) {
  // BitNet b1.58 absmean: γ = mean|W| (per row or per tensor), fp16-exact.
  auto m = per_row ? w.abs().mean(1) : w.abs().mean().reshape({1});
  auto s = m.to(at::kHalf).to(at::kFloat);
  return at::where(s == 0, at::ones_like(s), s);
}

at::Tensor int8_codes(const at::Tensor& x_over_s) { return at::clamp(at::round(x_over_s), -127, 127); }
}  // namespace

std::pair<at::Tensor, at::Tensor> int8_rows(const at::Tensor& x) {
  const auto xd = x.detach().to(at::kFloat);
  const auto s = scale_from_amax(xd.abs().amax(1), 127.0);
  return {int8_codes(xd / s.unsqueeze(1)), s};
}

at::Tensor fake_int8_rows(const at::Tensor& x) {
  auto [q, s] = int8_rows(x);
  return ste((q * s.unsqueeze(1)).to(x.scalar_type()), x);
}

// ---- ScaffoldLinear -------------------------------------------------------------------------------

ScaffoldLinear::ScaffoldLinear(int64_t rows, int64_t cols, QuantConfig q, at::Device device)
    : rows_(rows), cols_(cols), q_(std::move(q)) {
  q_.validate("ScaffoldLinear");
  const auto o = at::TensorOptions().dtype(at::kFloat).device(device);
  w_lat = at::zeros({rows, cols}, o);
  if (q_.fmt().field) {
    field_a = at::ones({rows}, o);
    field_b = at::ones({cols}, o);
  }
  if (const int64_t r = q_.effective_rank(); r > 0) {
    lr_u = at::zeros({rows, r}, o);
    lr_v = at::zeros({cols, r}, o);
    lr_u_scale = at::ones({r}, o);
    lr_v_scale = at::ones({r}, o);
  }
}

NamedTensors ScaffoldLinear::named_parameters() const {
  NamedTensors p = {{"w_lat", w_lat}};
  if (field_a.defined()) p.insert(p.end(), {{"field_a", field_a}, {"field_b", field_b}});
  if (lr_u.defined())
    p.insert(p.end(), {{"lr_u", lr_u}, {"lr_u_scale", lr_u_scale}, {"lr_v", lr_v}, {"lr_v_scale", lr_v_scale}});
  return p;
}

at::Tensor ScaffoldLinear::scaffold_codes() const {
  switch (q_.fmt().id) {
    case FormatId::Binary:
    case FormatId::BinaryLowRank: {
      const auto s = at::where(w_lat.detach() >= 0, 1.0f, -1.0f);  // sign(0) = +1
      return ste(s, at::clamp(w_lat, -q_.ste_clip, q_.ste_clip));
    }
    case FormatId::Ternary:
    case FormatId::Int4: {
      const auto sc = scaffold_scales();
      const double qmax = q_.fmt().id == FormatId::Ternary ? 1.0 : 7.0;
      return ste(at::clamp(at::round(w_lat.detach() / sc), -qmax, qmax), w_lat / sc.detach());
    }
  }
  DFSSM_ASSERT(false, "unreachable");
  throw;
}

at::Tensor ScaffoldLinear::scaffold_scales() const {
  const auto w = w_lat.detach();
  if (q_.fmt().id == FormatId::Ternary) {
    const auto g = ternary_scales(w, q_.ternary_scale == "per_row");
    return g.numel() == 1 ? g.expand({rows_, cols_}) : g.unsqueeze(1).expand({rows_, cols_});
  }
  return expand_groups(int4_scales(w, q_.int4_group), q_.int4_group, cols_);
}

at::Tensor ScaffoldLinear::lowrank_u() const {
  const auto c = at::clamp(lr_u, -127, 127);
  return ste(at::round(c.detach()), c) * fake_fp16(lr_u_scale);
}

at::Tensor ScaffoldLinear::lowrank_v() const {
  const auto c = at::clamp(lr_v, -127, 127);
  return ste(at::round(c.detach()), c) * fake_fp16(lr_v_scale);
}

at::Tensor ScaffoldLinear::fused_weight() const {
  if (!q_.fmt().field || !w_lat.is_cuda()) return {};
  ScaffoldWeightInputs in;
  in.w_lat = w_lat;
  in.A = fake_fp16(field_a);
  in.B = fake_fp16(field_b);
  in.clip = q_.ste_clip;
  if (lr_u.defined()) {
    // The same values as lowrank_u() / lowrank_v(), and their factors for the exact backward GEMMs.
    in.U = lowrank_u();
    in.V = lowrank_v();
    in.u_codes = at::round(at::clamp(lr_u.detach(), -127, 127));
    in.v_codes = at::round(at::clamp(lr_v.detach(), -127, 127));
    in.u_scale = lr_u_scale.detach().to(at::kHalf).to(at::kFloat);
    in.v_scale = lr_v_scale.detach().to(at::kHalf).to(at::kFloat);
  }
  const bool bf16 = at::autocast::is_autocast_enabled(at::kCUDA) &&
                    at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
  return scaffold_weight_fused(in, bf16 ? at::kBFloat16 : at::kFloat);
}

at::Tensor ScaffoldLinear::effective_weight() const {
  at::Tensor w;
  if (q_.fmt().field) {
    w = fake_fp16(field_a).unsqueeze(1) * scaffold_codes() * fake_fp16(field_b).unsqueeze(0);
  } else {
    w = scaffold_codes() * scaffold_scales();
  }
  if (lr_u.defined()) w = w + at::matmul(lowrank_u(), lowrank_v().t());
  return w;
}

at::Tensor ScaffoldLinear::forward(const at::Tensor& x) const {
  // On CUDA (GPU training and evaluation) W_eff is built on the weight side, rows x cols (17M
  // elements for a 1.3B in_proj), and enters one GEMM; the bf16 GEMM rounds it like any weight.
  // Scaling the activations instead, and adding the low-rank term to the output, costs several
  // passes over (tokens x rows) tensors, 16x larger at 32k tokens per step: measured, 21% of a
  // 1.3B distillation step. The CPU keeps the activation-side form below, the packed runtime's.
  // Binary formats: one kernel each way (scaffold_fused.h), in the dtype the matmul takes.
  if (x.is_cuda()) return at::matmul(x, matmul_weight(x).t());
  const auto dt = x.scalar_type();
  at::Tensor y;
  if (q_.fmt().field) {
    // diag(a) S diag(b) x without materialising W_eff: S is exactly ±1 in any dtype.
    const auto xb = x * fake_fp16(field_b).to(dt);
    y = at::matmul(xb, scaffold_codes().to(dt).t()) * fake_fp16(field_a).to(dt);
  } else {
    y = at::matmul(x, (scaffold_codes() * scaffold_scales()).to(dt).t());
  }
  if (lr_u.defined()) y = y + at::matmul(at::matmul(x, lowrank_v().to(dt)), lowrank_u().to(dt).t());
  return y;
}

at::Tensor ScaffoldLinear::matmul_weight(const at::Tensor& x) const {
  if (!x.is_cuda()) return {};
  if (auto W = fused_weight(); W.defined()) return W;
  return effective_weight();
}

void ScaffoldLinear::init_from(const at::Tensor& teacher_weight, uint64_t seed) {
  DFSSM_CHECK(teacher_weight.dim() == 2 && teacher_weight.size(0) == rows_ && teacher_weight.size(1) == cols_,
              "teacher weight has shape ", teacher_weight.sizes(), ", expected [", rows_, ", ", cols_, "]");
  at::NoGradGuard ng;
  const auto W = teacher_weight.to(w_lat.device(), at::kFloat);
  if (q_.fmt().field) {
    auto [a, b] = rank1_nonneg(W.abs(), q_.svid_iters);  // SVID: |W| ≈ a bᵀ
    field_a.copy_(a);
    field_b.copy_(b);
    // Row-normalised latents: every weight starts inside the STE window |W_lat| <= 1.
    w_lat.copy_(W / W.abs().amax(1, true).clamp_min(1e-12));
  } else {
    w_lat.copy_(W);
  }
  if (lr_u.defined()) {
    // The low-rank term fits what the (quantized) scaffold misses.
    const auto resid = W - effective_weight();
    auto [L, R] = lowrank_factors(resid, lr_u.size(1), q_.svd_oversample, q_.svd_power_iters, seed);
    const auto su = scale_from_amax(L.abs().amax(0), 127.0), sv = scale_from_amax(R.abs().amax(0), 127.0);
    lr_u_scale.copy_(su);
    lr_v_scale.copy_(sv);
    lr_u.copy_(L / su);
    lr_v.copy_(R / sv);
  }
}

PackedParts ScaffoldLinear::pack() const {
  at::NoGradGuard ng;
  const auto& f = q_.fmt();
  PackedParts out;
  const auto codes = scaffold_codes().detach().to(at::kChar).cpu().contiguous();
  auto packed = at::empty({rows_, f.row_bytes(cols_)}, at::kByte);
  pack_codes(f, codes.data_ptr<int8_t>(), rows_, cols_, packed.data_ptr<uint8_t>());
  out.emplace_back("codes", packed);
  auto half = [](const at::Tensor& t) { return t.detach().to(at::kHalf).cpu().contiguous(); };
  if (f.field) {
    out.emplace_back("field_a", half(field_a));
    out.emplace_back("field_b", half(field_b));
  } else if (f.id == FormatId::Ternary) {
    out.emplace_back("scale", half(ternary_scales(w_lat.detach(), q_.ternary_scale == "per_row")));
  } else {
    out.emplace_back("scale", half(int4_scales(w_lat.detach(), q_.int4_group)));
  }
  if (lr_u.defined()) {
    auto i8 = [](const at::Tensor& t) { return at::round(at::clamp(t.detach(), -127, 127)).to(at::kChar).cpu().contiguous(); };
    out.emplace_back("lr_u", i8(lr_u));
    out.emplace_back("lr_u_scale", half(lr_u_scale));
    out.emplace_back("lr_v", i8(lr_v));
    out.emplace_back("lr_v_scale", half(lr_v_scale));
  }
  return out;
}

at::Tensor ScaffoldLinear::unpack(const PackedParts& parts, int64_t rows, int64_t cols, const QuantConfig& q) {
  auto get = [&](const std::string& n) -> const at::Tensor& {
    for (auto& [k, v] : parts)
      if (k == n) return v;
    throw Error(str("packed projection is missing '", n, "'"));
  };
  const auto& f = q.fmt();
  auto codes8 = at::empty({rows, cols}, at::kChar);
  const auto packed = get("codes").contiguous();
  DFSSM_CHECK(packed.numel() == f.code_bytes(rows, cols), "packed codes hold ", packed.numel(), " bytes, expected ",
              f.code_bytes(rows, cols));
  unpack_codes(f, packed.data_ptr<uint8_t>(), rows, cols, codes8.data_ptr<int8_t>());
  const auto codes = codes8.to(at::kFloat);
  auto fl = [](const at::Tensor& t) { return t.to(at::kFloat); };
  at::Tensor w;
  if (f.field) {
    w = fl(get("field_a")).unsqueeze(1) * codes * fl(get("field_b")).unsqueeze(0);
  } else if (f.id == FormatId::Ternary) {
    const auto g = fl(get("scale"));
    w = codes * (g.numel() == 1 ? g.expand({rows, cols}) : g.unsqueeze(1).expand({rows, cols}));
  } else {
    w = codes * expand_groups(fl(get("scale")), q.int4_group, cols);
  }
  if (q.effective_rank() > 0) {
    const auto u = fl(get("lr_u")) * fl(get("lr_u_scale")), v = fl(get("lr_v")) * fl(get("lr_v_scale"));
    w = w + at::matmul(u, v.t());
  }
  return w;
}

}  // namespace dfssm::quant
