#include "distill/evaluate.h"

#include <ATen/core/grad_mode.h>

#include "distill/loss.h"

namespace dfssm::distill {

LmEval evaluate_lm(const Mamba2Model* teacher, const Mamba2Model& model, const data::LoaderOptions& val,
                   int64_t max_batches, int64_t chunk, bool bf16_autocast) {
  at::NoGradGuard ng;
  data::LoaderOptions vo = val;
  vo.prefetch = 0;
  data::TokenLoader loader(vo);
  LmEval r;
  data::Batch b;
  for (int64_t nb = 0; (max_batches == 0 || nb < max_batches) && loader.next(&b); ++nb) {
    const auto all = at::from_blob(b.tokens.data(), {b.rows, b.cols}, at::kInt).to(at::kLong).to(model.device());
    const auto x = all.narrow(1, 0, b.cols - 1).contiguous(), y = all.narrow(1, 1, b.cols - 1).reshape({-1});
    at::Tensor ht, wt;
    if (teacher) {
      ht = teacher->forward_hidden(x);
      ht = ht.reshape({-1, ht.size(-1)});
      wt = teacher->lm_weight();
    }
    AutocastGuard ac(bf16_autocast);
    const auto hs = model.forward_hidden(x);
    LmLossStats s;
    lm_loss(hs.reshape({-1, hs.size(-1)}), model.lm_weight(), ht, wt, y, {teacher ? 1.0 : 0.0, 1.0, chunk, at::kFloat},
            &s);
    const double n = double(s.tokens);
    r.teacher_ce += s.teacher_ce * n, r.student_ce += s.ce * n, r.kl += s.kl * n, r.top1 += s.top1 * n;
    r.tokens += s.tokens;
  }
  if (r.tokens > 0) {
    const double n = double(r.tokens);
    r.teacher_ce /= n, r.student_ce /= n, r.kl /= n, r.top1 /= n;
  }
  return r;
}

}  // namespace dfssm::distill
