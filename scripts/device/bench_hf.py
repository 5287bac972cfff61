#!/usr/bin/env python3
"""Baseline for the CUDA runtime's benchmark: HF transformers' Mamba2ForCausalLM at the Mamba-2
1.3B geometry (random weights, fp16, CUDA), on its torch path (the device has no mamba_ssm /
causal_conv1d, so HF falls back to its pure-torch scan and conv).

Measures, with CUDA events after warm-up:
  * prefill 1xL (one forward of L tokens, use_cache=True): ms and tokens/s;
  * decode at batch 1 (and --batches): one cached single-token forward per step, median ms/step.

usage: python3 scripts/device/bench_hf.py [--prefill 2048] [--steps 32] [--batches 1,8]
"""
import argparse
import statistics
import sys
import time

import torch
import transformers
from transformers import Mamba2Config, Mamba2ForCausalLM


def config_13b() -> Mamba2Config:
    # mamba2-1.3b: d_model 2048, 48 layers, expand 2, headdim 64 (64 heads), d_state 128,
    # ngroups 1, d_conv 4, vocab 50277 padded to 50288, tied embeddings.
    return Mamba2Config(hidden_size=2048, num_hidden_layers=48, vocab_size=50288, head_dim=64,
                        num_heads=64, expand=2, state_size=128, n_groups=1, conv_kernel=4,
                        chunk_size=256, tie_word_embeddings=True, residual_in_fp32=True,
                        layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True)


def ms(fn, reps):
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batches", default="1")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    args = ap.parse_args()
    dt = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    torch.manual_seed(0)
    t0 = time.time()
    model = Mamba2ForCausalLM(config_13b()).to(device="cuda", dtype=dt).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"engine hf-transformers {transformers.__version__} (torch {torch.__version__}, torch path)  "
          f"model mamba2-1.3b geometry, random  params {n:,}  dtype {args.dtype}  "
          f"{torch.cuda.get_device_name()}  (built in {time.time() - t0:.1f} s)", flush=True)

    ids = torch.randint(0, 50277, (1, args.prefill), device="cuda")
    fwd = lambda: model(ids, use_cache=True)
    ms(fwd, 1)  # warm-up
    p = statistics.median(ms(fwd, 3))
    print(f"prefill 1x{args.prefill}: {p:.1f} ms ({args.prefill / p * 1e3:.0f} tokens/s)", flush=True)

    for b in [int(x) for x in args.batches.split(",")]:
        prompt = torch.randint(0, 50277, (b, 16), device="cuda")
        out = model(prompt, use_cache=True)
        cache = out.cache_params
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        times = []
        for s in range(args.steps + 3):
            a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = model(tok, cache_params=cache, use_cache=True)
            e.record()
            e.synchronize()
            cache = out.cache_params
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            if s >= 3:
                times.append(a.elapsed_time(e))
        m = statistics.median(times)
        print(f"decode batch {b}: {m:.2f} ms/step ({m / b:.2f} ms/token) median over {len(times)} steps",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
