#pragma once
// in_proj's output is split by columns into z, xBC and dt. Autograd's split backward concatenates
// the three gradients into a new (b, l, d_in_proj) tensor: one more write and read of 0.55 GB per
// layer at the 1.3B training shape (13.8 ms of a step, docs/benchmarks.md). split_columns returns
// the same views plus a GradInto per part, through which a fused consumer (the gated norm for z,
// the conv for xBC) writes its input's gradient straight into its columns of one shared buffer;
// the split's backward copies in whatever did not arrive there (dt's gradient: 64 of 8512
// columns at 1.3B) and returns the buffer as the whole gradient.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace torch::autograd {
struct AutogradContext;
}

namespace dfssm {

// Columns [col, col + width) of a (b, l, total) gradient buffer shared by a split's parts.
// `slab` is a handle, (b, l, 0) until the first consumer's backward asks for its columns.
struct GradInto {
  at::Tensor slab;
  int64_t col = 0, total = 0;
  bool defined() const { return slab.defined(); }
};

struct SplitColumns {
  std::vector<at::Tensor> parts;
  std::vector<GradInto> into;  // undefined ones where the split is autograd's own
};

// x (b, l, sum(sizes)) split along its last dimension into views. A CUDA x (any_device: any x,
// for tests) that requires a gradient gets the shared buffer (unless DFSSM_SPLIT_GRAD_SLAB=0: the
// A/B switch); otherwise this is at::split_with_sizes.
SplitColumns split_columns(const at::Tensor& x, const std::vector<int64_t>& sizes, bool any_device = false);
void set_split_grad_slab_enabled(bool on);  // tests compare the two
// Parts whose gradient arrived in place, summed over every split's backward so far (a test's
// check that the consumers did write into the buffer).
int64_t split_grad_parts_in_place();

// A consumer (a custom autograd function): its forward keeps `into` in ctx (nothing when it is
// undefined); its backward takes the columns as a (b, l, width) view (row stride `total`),
// allocating the buffer if no one has, and drops ctx's reference (saved_data outlives the
// backward). Undefined where nothing was kept, where the buffer's dtype is not `dtype`, or where a
// row would not start 16-byte aligned: the consumer then allocates its own gradient and the
// split's backward copies it in.
void save_grad_into(torch::autograd::AutogradContext* ctx, const GradInto& into);
at::Tensor take_grad_columns(torch::autograd::AutogradContext* ctx, int64_t width, at::ScalarType dtype);

}  // namespace dfssm
