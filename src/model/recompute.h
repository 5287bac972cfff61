// Activation checkpointing for one Mamba-2 block: the forward pass keeps only the block's input;
// the backward pass runs the block again with autograd on and backpropagates through that copy.
// Saves most activation memory (the chunked SSD's (chunk x chunk) intermediates above all) for
// about one extra forward pass. Autocast state is saved and restored for the recomputation, so
// it repeats exactly what the forward pass did. With Mamba2Model::keep_ssd_output the first pass
// also keeps the SSD's output (SsdOutputKeep), and the recomputation skips its chunk_scan.
#pragma once

#include <ATen/ATen.h>

#include "model/mamba2.h"

namespace dfssm {

// at::matmul(x, Wᵀ) as autograd sees it, without computing it: the result is a zero tensor of the
// product's shape and dtype (zero strides, no memory) whose backward gives x's and W's gradients
// exactly as at::matmul's would (the same products). For a value that is only differentiated,
// never read: a recomputed block's output, whose last product (out_proj) would otherwise run for
// nothing (skipping it: +2.7% tokens/s at 1.3B on the H200, docs/benchmarks.md). CUDA autocast
// casts x and W as at::matmul would.
// values (optional, the product's shape and dtype, no gradient): the product's values, known
// from an earlier pass (a recomputed block's kept in_proj output); the result then has them.
at::Tensor linear_graph_only(const at::Tensor& x, const at::Tensor& W, const at::Tensor& values = {});

// block(i, residual) of `model`, recomputed in the backward pass.
at::Tensor recomputed_block(const Mamba2Model& model, size_t i, const at::Tensor& residual);
// {residual + hidden, block(i, residual + hidden)}, the add fused into the norm (Mamba2Model::
// add_norm_fused), both recomputed in the backward pass.
// save_operands: save residual and hidden (residual already saved by the previous block) instead
// of their sum, and add them again in the backward (Mamba2Model::stream_pairs).
std::pair<at::Tensor, at::Tensor> recomputed_add_block(const Mamba2Model& model, size_t i, const at::Tensor& residual,
                                                       const at::Tensor& hidden, bool save_operands = false);

}  // namespace dfssm
