#!/usr/bin/env python3
"""Plot a training run's metrics.jsonl (from `dfssm pretrain|distill|run`) into a PNG.

usage: scripts/plot_metrics.py RUN_OR_METRICS [more ...] [-o curves.png]
  RUN_OR_METRICS  a metrics.jsonl, or a directory holding one (e.g. runs/quickstart/student)
Panels: training loss (with KL and CE when distilling), held-out CE (student and teacher),
learning rate and gradient norm, throughput. Uses the project venv: .venv/bin/python scripts/plot_metrics.py ...
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"plot_metrics: {path} not found (pass a metrics.jsonl or the stage directory holding it)")
    steps, evals = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                print(f"plot_metrics: {path}:{n}: skipping a malformed line", file=sys.stderr)
                continue
            if j.get("event") == "eval":
                evals.append(j)
            elif "loss" in j:
                steps.append(j)
    return path, steps, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--output", default="curves.png")
    a = ap.parse_args()
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    lr_ax = ax[1][0].twinx()  # one learning-rate axis for all runs
    lr_ax.set_ylabel("learning rate")
    for run in a.runs:
        path, steps, evals = load(run)
        label = os.path.basename(os.path.dirname(os.path.abspath(path)))
        x = [s["step"] for s in steps]
        ax[0][0].plot(x, [s["loss"] for s in steps], label=f"{label} loss")
        if steps and "kl" in steps[0]:
            ax[0][0].plot(x, [s["kl"] for s in steps], "--", label=f"{label} KL")
        ax[0][1].plot([e["step"] for e in evals], [e["student_ce"] for e in evals], "o-", label=f"{label} model CE")
        if evals and "teacher_ce" in evals[0]:
            ax[0][1].plot([e["step"] for e in evals], [e["teacher_ce"] for e in evals], "k:", label=f"{label} teacher CE")
        ax[1][0].plot(x, [s["grad_norm"] for s in steps], label=f"{label} grad norm")
        lr_ax.plot(x, [s["lr"] for s in steps], "--", alpha=0.5)
        ax[1][1].plot(x, [s["tokens_per_s"] for s in steps], label=f"{label}")
    for a_, t in zip(ax.flat, ["training loss", "held-out cross-entropy (nats/token)", "gradient norm (lr dashed)",
                              "tokens/s"]):
        a_.set_title(t)
        a_.set_xlabel("step")
        a_.legend(fontsize=8)
        a_.grid(alpha=0.3)
    ax[0][0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(a.output, dpi=110)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
