#!/usr/bin/env python3
"""Writes a synthetic run directory of `moe train` (RUN_DIR/metrics.jsonl) for the report tests.

    make_report_run.py RUN_DIR [--steps N] [--layers L] [--experts E] [--seed S]
                       [--no-resume] [--truncate]

The run looks like a small Mixtral-style model learning: loss falling from ln(vocab) towards the
unigram entropy and below, a warmup + cosine learning rate, evaluations every 100 steps, one step
skipped for a non-finite gradient (its loss written as Python's bare NaN token), a resume that logs
some steps again, and expert loads that drift (one expert of layer 1 takes over for a while and is
balanced back). --truncate ends the log with half a line and no end line, as a kill during a
write leaves it. Standard library only; the same arguments give the same file.
"""
import argparse
import json
import math
import os
import random


def expert_loads(rng, step, steps, layers, experts):
    """Per-layer fractions of routed assignments (each row sums to 1) and max/mean imbalance."""
    loads, imbalance = [], []
    t = step / max(1, steps)
    for layer in range(layers):
        w = [1.0 + 0.25 * rng.random() + 0.15 * math.sin(0.02 * step + e + layer) for e in range(experts)]
        if layer == 1:  # one expert takes over, then the balancing loss pulls it back
            w[experts // 2] += 4.0 * math.exp(-((t - 0.35) / 0.12) ** 2)
        if layer == layers - 1:  # one expert slowly starves
            w[0] *= max(0.15, 1.0 - 1.2 * t)
        total = sum(w)
        frac = [x / total for x in w]
        loads.append([round(f, 5) for f in frac])
        imbalance.append(round(max(frac) * experts, 4))
    return loads, imbalance


def run_line(args, started):
    return {
        "type": "run",
        "model": {
            "model_type": "mixtral",
            "architectures": ["MixtralForCausalLM"],
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": args.layers,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "num_local_experts": args.experts,
            "num_experts_per_tok": 2,
            "vocab_size": 4096,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-05,
            "router_aux_loss_coef": 0.01,
        },
        "train": {
            "data": "data/<tiny>&shards",  # escaped on the page
            "lr": 3e-4,
            "warmup_steps": 50,
            "schedule": "cosine",
            "batch_tokens": 8192,
            "steps": args.steps,
            "seed": args.seed,
        },
        "started": started,
        "n_params": 52_430_336,
        "n_active_params": 17_301_504,
        "unigram_entropy": 5.62,
    }


def write_run(path, args):
    rng = random.Random(args.seed)
    steps, layers, experts = args.steps, args.layers, args.experts
    vocab_loss = math.log(4096)
    skip_step = int(steps * 0.4) + 1
    kill_at = int(steps * 0.6) if args.resume else steps  # the first process logs up to here
    resume_from = int(steps * 0.5)  # the checkpoint it resumes from
    lines = [run_line(args, "2025-01-10T09:00:00Z")]
    tokens_per_step = 8192

    def segment(first, last, clock0):
        clock = clock0
        for step in range(first, last):
            t = step / steps
            lr = 3e-4 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
            smooth = 2.3 + (vocab_loss - 2.3) * math.exp(-step / (steps * 0.12))
            loss = smooth + 0.06 * rng.gauss(0, 1)
            tps = 52000 + 1500 * rng.gauss(0, 1) - (20000 if step == first else 0)
            clock += tokens_per_step / tps
            loads, imbalance = expert_loads(rng, step, steps, layers, experts)
            rec = {
                "type": "step", "step": step, "loss": round(loss, 5),
                "aux_loss": round(0.01 * (1.0 + 0.3 * max(imbalance) - 0.3 + 0.02 * rng.random()), 6),
                "lr": lr, "grad_norm": round(0.35 + 1.6 * math.exp(-step / (steps * 0.2)) + 0.05 * abs(rng.gauss(0, 1)), 5),
                "tokens": (step + 1) * tokens_per_step, "tokens_per_s": round(tps, 1), "elapsed_s": round(clock, 3),
                "skipped": False, "imbalance": imbalance, "expert_load": loads,
                "moe_layers": list(range(layers)),
            }
            if step == skip_step:
                rec.update(loss=float("nan"), grad_norm=float("inf"), skipped=True)
                lines.append(rec)
                lines.append({"type": "skip", "step": step, "reason": "non-finite gradient"})
            else:
                lines.append(rec)
            if step > 0 and step % 100 == 0:
                ev = smooth + 0.08
                lines.append({"type": "eval", "step": step, "loss": round(ev, 5), "ppl": round(math.exp(ev), 4),
                              "tokens": 262144})
        return clock

    clock = segment(0, kill_at, 0.0)
    if args.resume:
        resumed = run_line(args, "2025-01-10T09:41:07Z")
        lines.append(resumed)
        clock = segment(resume_from, steps, 0.0)  # the new process restarts its clock
    if not args.truncate:  # a killed run writes no end line
        lines.append({"type": "end", "step": steps - 1, "elapsed_s": round(clock, 3),
                      "checkpoint": os.path.join(os.path.basename(os.path.normpath(path)), "checkpoint-final")})

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
        for rec in lines:
            f.write(json.dumps(rec) + "\n")  # NaN and Infinity as Python writes them
        if args.truncate:
            f.write('{"type": "step", "step": %d, "loss": 2.4' % steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-resume", dest="resume", action="store_false")
    ap.add_argument("--truncate", action="store_true")
    args = ap.parse_args()
    write_run(args.run_dir, args)


if __name__ == "__main__":
    main()
