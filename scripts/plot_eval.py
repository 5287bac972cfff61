#!/usr/bin/env python3
"""Plot a `dfssm eval` summary.json (OUT/summary.json) into a PNG.

usage: scripts/plot_eval.py OUT/summary.json [-o eval.png]
Per language-modelling task: the per-position cross-entropy of every model (teacher, student,
init-only) against the position in the model input (the context length the scored token had),
and the per-position KL(teacher || model). Positions are averaged in logarithmic bins. Multiple-
choice tasks: acc and acc_norm with their standard errors. `dfssm eval -o OUT` runs it when the
project venv (or DFSSM_PYTHON) has matplotlib; nothing else depends on it.
"""
import argparse
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def log_bins(count, values, per_bin=24):
    """Count-weighted means of `values` over logarithmically spaced position bins."""
    n = len(count)
    if n == 0:
        return [], []
    edges = sorted({0} | {int(round(math.exp(k * math.log(n) / per_bin / 2))) for k in range(per_bin * 2 + 1)} | {n})
    xs, ys = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        w = sum(count[a:b])
        if w == 0:
            continue
        xs.append(sum((i + 1) * count[i] for i in range(a, b)) / w)
        ys.append(sum(values[i] * count[i] for i in range(a, b)) / w)
    return xs, ys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary")
    ap.add_argument("-o", "--output", default="eval.png")
    a = ap.parse_args()
    try:
        with open(a.summary) as f:
            s = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"plot_eval: cannot read {a.summary}: {e}")
    labels = {m["role"]: m["label"] for m in s["models"]}
    lm = [(n, t) for n, t in s["tasks"].items() if t["kind"] == "lm"]
    mc = [(n, t) for n, t in s["tasks"].items() if t["kind"] != "lm"]
    rows = len(lm) + (1 if mc else 0)
    if rows == 0:
        sys.exit("plot_eval: no task to plot")
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3.8 * rows), squeeze=False)
    for r, (name, t) in enumerate(lm):
        ce_ax, kl_ax = axes[r]
        for role, m in t["models"].items():
            pp = m.get("per_position")
            if not pp:
                continue
            x, y = log_bins(pp["count"], pp["nll"])
            ce_ax.plot(x, y, label=labels.get(role, role))
            if "kl" in pp:
                x, y = log_bins(pp["count"], pp["kl"])
                kl_ax.plot(x, y, label=labels.get(role, role))
        for ax, what in ((ce_ax, "cross-entropy (nats/token)"), (kl_ax, "KL(teacher || model) (nats/token)")):
            ax.set_xscale("log")
            ax.set_xlabel("position in the input (context length)")
            ax.set_ylabel(what)
            ax.set_title(f"{name}: {what.split(' (')[0]} by position")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
    if mc:
        ax = axes[-1][0]
        roles = [m["role"] for m in s["models"]]
        width = 0.8 / max(1, len(roles))
        for k, role in enumerate(roles):
            xs, ys, es = [], [], []
            for i, (name, t) in enumerate(mc):
                m = t["models"].get(role, {})
                key = "acc_norm" if "acc_norm" in m else "acc"
                if isinstance(m.get(key), (int, float)):
                    xs.append(i + k * width)
                    ys.append(m[key])
                    es.append(m.get(key + "_stderr", 0))
            ax.bar(xs, ys, width, yerr=es, label=labels.get(role, role), capsize=3)
        ax.set_xticks([i + width * (len(roles) - 1) / 2 for i in range(len(mc))])
        ax.set_xticklabels([n for n, _ in mc])
        ax.set_ylabel("acc_norm (acc for loglikelihood tasks), ± stderr")
        ax.set_title("multiple choice")
        ax.legend()
        axes[-1][1].axis("off")
    fig.tight_layout()
    fig.savefig(a.output, dpi=110)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
