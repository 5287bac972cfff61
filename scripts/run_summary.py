#!/usr/bin/env python3
"""Quality summary of a `dfssm run` directory, complete or cut short.

Reads <run_dir>/teacher/metrics.jsonl and <run_dir>/student/metrics.jsonl (the trainer's held-out
evals: a fresh distillation evaluates the init-only student at step 0), and <run_dir>/eval.json
when the pipeline's eval stage has run. With the job's YAML it also says what fraction of the
configured steps ran. Stdlib only.

  usage: scripts/run_summary.py RUN_DIR [JOB.yaml]
"""
import json
import os
import re
import sys


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a kill: the rest is still good
    return rows


def configured_steps(job_yaml):
    """{'pretrain': N, 'distill': M} from a job YAML's top-level sections (no YAML library)."""
    out, section = {}, None
    with open(job_yaml) as f:
        for line in f:
            m = re.match(r"^([A-Za-z_]+):", line)
            if m:
                section = m.group(1)
                continue
            m = re.match(r"^\s+steps:\s*(\d+)", line)
            if m and section in ("pretrain", "distill"):
                out[section] = int(m.group(1))
    return out


def stage_line(name, rows, steps):
    train = [r for r in rows if "loss" in r]
    if not train:
        return f"{name}: no training rows (not run here, or a teacher was given)"
    last = train[-1]
    done = last["step"]
    frac = f"/{steps[name]} steps ({100.0 * done / steps[name]:.0f}%)" if name in steps else " steps"
    return f"{name}: {done}{frac}, {last['tokens'] / 1e6:.1f}M tokens, {last['tokens_per_s']:,.0f} tokens/s at the end"


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    run = sys.argv[1]
    steps = configured_steps(sys.argv[2]) if len(sys.argv) > 2 else {}
    teacher = read_jsonl(os.path.join(run, "teacher", "metrics.jsonl"))
    student = read_jsonl(os.path.join(run, "student", "metrics.jsonl"))
    print(f"run {run}")
    print(stage_line("pretrain", teacher, steps))
    print(stage_line("distill", student, steps))
    evals = [r for r in student if r.get("event") == "eval" and "teacher_ce" in r]
    init = [r for r in evals if r["step"] == 0]
    last = [r for r in evals if r["step"] > 0]
    if evals:
        ref = (last or evals)[-1]
        print(f"held-out CE (trainer evals, {ref['tokens']:,} tokens each):")
        print(f"  teacher             {ref['teacher_ce']:.4f}")
        if init:
            print(f"  init-only student   {init[0]['student_ce']:.4f}   (step 0)")
        if last:
            r = last[-1]
            print(f"  distilled student   {r['student_ce']:.4f}   (step {r['step']}; KL {r['kl']:.4f}, "
                  f"top-1 agreement {r['top1']:.3f})")
            print(f"  student / teacher   {r['student_ce'] / r['teacher_ce']:.4f}   (goal <= 1.10)")
    else:
        print("no held-out evals of the student yet")
    ev_path = os.path.join(run, "eval.json")
    if os.path.exists(ev_path):
        with open(ev_path) as f:
            ev = json.load(f)
        lm = ev.get("tasks", {}).get("heldout", {}).get("models", {})
        if lm:
            print("eval stage (held-out split, lm-eval rules):")
            for label, m in lm.items():
                print(f"  {label:18s}  CE {m['ce']:.4f}  token perplexity {m['token_perplexity']:.2f}")
            if "student" in lm and "teacher" in lm:
                print(f"  student / teacher   {lm['student']['ce'] / lm['teacher']['ce']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
