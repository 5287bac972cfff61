#!/usr/bin/env python3
"""Where a profiled step's GPU time comes from, by the op that launched each kernel.

usage: trace_ops.py profile-stepK.json [top]

Reads the Kineto trace that DFSSM_PROFILE_STEP=k writes (src/distill/profile.cpp) and sums the
kernels' GPU time by (context, launching op): the context is the autograd node whose backward
launched it ("bwd: MulBackward0") or the innermost dfssm:: model scope of a forward, the op the
innermost aten:: call (or, for our own kernels, which no aten op wraps, the kernel's name, with
the context of the runtime call that launched it). The kernel table the trainer prints says
which kernels are hot; this says which model code launched them.
"""
import bisect
import collections
import json
import sys


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    events = json.load(open(path))["traceEvents"]
    ops = {}  # External id -> (name, tid, ts)
    launches = {}  # correlation id -> (tid, ts) of the CUDA runtime call that launched a kernel
    spans = collections.defaultdict(list)  # tid -> [(ts, end, label)]
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, name = e.get("cat", ""), e.get("name", "")
        if cat == "cpu_op":
            ext = e.get("args", {}).get("External id")
            if ext is not None:
                ops[ext] = (name, e["tid"], e["ts"])
            if name.startswith("autograd::engine::evaluate_function: "):
                spans[e["tid"]].append((e["ts"], e["ts"] + e["dur"], "bwd: " + name.split(": ", 1)[1]))
        elif cat == "cuda_runtime":
            corr = e.get("args", {}).get("correlation")
            if corr is not None:
                launches[corr] = (e["tid"], e["ts"])
        elif cat == "user_annotation" and name.startswith("dfssm::"):
            spans[e["tid"]].append((e["ts"], e["ts"] + e["dur"], "fwd: " + name))
    starts = {}
    for tid, v in spans.items():
        v.sort()
        starts[tid] = [s for s, _, _ in v]

    def context(tid, ts):
        v = spans.get(tid)
        if not v:
            return "-"
        i = bisect.bisect_right(starts[tid], ts) - 1
        while i >= 0:  # the innermost span that contains ts
            s, end, label = v[i]
            if end >= ts:
                return label
            i -= 1
        return "-"

    by_pair, by_ctx = collections.Counter(), collections.Counter()
    total = 0.0
    gpu = []  # (start, end, label) of every kernel/copy: the idle gaps between them
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        us = float(e.get("dur", 0))
        total += us
        args = e.get("args", {})
        op = ops.get(args.get("External id"))
        if op:
            ctx, name = context(op[1], op[2]), op[0]
        else:  # launched outside any aten op (our own kernels): the launch call's context
            launch = launches.get(args.get("correlation"))
            ctx = context(*launch) if launch else "-"
            name = "kernel " + e.get("name", "?").split("(")[0][-50:]
        by_pair[(ctx, name)] += us
        by_ctx[ctx] += us
        gpu.append((float(e["ts"]), float(e["ts"]) + us, f"{ctx[:40]} | {name[:50]}"))
    print(f"GPU time {total / 1e3:.1f} ms")
    print("-- by context (autograd node of the backward, or model scope of the forward)")
    for ctx, us in by_ctx.most_common(top):
        print(f"{us / 1e3:10.2f} ms {100 * us / total:5.1f}%  {ctx}")
    print("-- by (context, op)")
    for (ctx, name), us in by_pair.most_common(top):
        print(f"{us / 1e3:10.2f} ms {100 * us / total:5.1f}%  {ctx[:60]:60s} {name[:60]}")
    idle_gaps(gpu, top)


def idle_gaps(gpu, top):
    """The GPU's idle time inside the step: gaps between one kernel's end and the next kernel's
    start (any stream), summed by the op that launched the kernel after the gap (the work the
    host was issuing while the GPU waited). Host-bound stretches (syncs, launch storms) show here."""
    gpu.sort()
    if not gpu:
        return
    span = gpu[-1][1] - gpu[0][0]
    idle, by_next, n = 0.0, collections.Counter(), collections.Counter()
    end = gpu[0][1]
    for s, e, label in gpu[1:]:
        if s > end + 2.0:  # gaps under 2 us are the launch pipeline's own spacing
            idle += s - end
            by_next[label] += s - end
            n[label] += 1
        end = max(end, e)
    print(f"-- GPU idle inside the step: {idle / 1e3:.2f} ms of {span / 1e3:.1f} ms "
          f"(gaps over 2 us, by the op launching the kernel after the gap)")
    for label, us in by_next.most_common(top):
        print(f"{us / 1e3:10.2f} ms {n[label]:6d} x  {label}")


if __name__ == "__main__":
    main()
