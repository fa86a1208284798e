#!/usr/bin/env python3
"""Training step of the same MoE transformer in moe.cpp and in PyTorch eager, side by side (f32, or bf16).

Runs `moe bench train --json` and bench/torch_train_step.py with the same model, batch and thread
count, alternating --rounds times (these machines are noisy; the ratio of each round is computed
from two runs made one after the other), and prints step times, tokens/s and the speed-up.

    /usr/bin/python3 bench/compare_train_torch.py --moe build/moe --threads 2 [--markdown]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_ARGS = ["layers", "hidden", "heads", "kv_heads", "experts", "top_k", "expert_width", "vocab", "seq_len",
              "batch_size"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moe", default="build/moe")
    p.add_argument("--python", "--torch-python", dest="python", default="/usr/bin/python3",
                   help="an interpreter with torch (a PyTorch 2.x venv: ../shared/peers/torch2.sh)")
    p.add_argument("--bf16", action="store_true",
                   help="both sides in bf16: `moe bench train --bf16`, PyTorch under autocast")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--markdown", action="store_true")
    for name, default in (("layers", 4), ("hidden", 256), ("heads", 8), ("kv_heads", 4), ("experts", 8),
                          ("top_k", 2), ("expert_width", 256), ("vocab", 4096), ("seq_len", 128),
                          ("batch_size", 16)):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    a = p.parse_args()
    model = []
    for name in MODEL_ARGS:
        model += ["--" + name.replace("_", "-"), str(getattr(a, name))]
    common = model + ["--threads", str(a.threads), "--iters", str(a.iters)] + (["--bf16"] if a.bf16 else [])
    ours, theirs = [], []
    for _ in range(a.rounds):
        out = subprocess.run([a.moe, "bench", "train", "--json", *common], check=True, capture_output=True, text=True)
        ours.append(json.loads(out.stdout))
        out = subprocess.run([a.python, os.path.join(HERE, "torch_train_step.py"), *common], check=True,
                             capture_output=True, text=True)
        theirs.append(json.loads(out.stdout))
    o = statistics.median(r["step_ms"] for r in ours)
    t = statistics.median(r["step_ms"] for r in theirs)
    ratios = [b["step_ms"] / x["step_ms"] for x, b in zip(ours, theirs)]
    tokens = a.batch_size * a.seq_len
    desc = (f"{a.layers} layers, d {a.hidden}, {a.experts} experts top-{a.top_k} width {a.expert_width}, "
            f"vocab {a.vocab}, batch {a.batch_size}x{a.seq_len}, {a.threads} threads; "
            f"{ours[0]['n_params'] / 1e6:.2f}M params ({ours[0]['n_active_params'] / 1e6:.2f}M active)")
    if a.markdown:
        print(f"| model | moe.cpp step | tokens/s | PyTorch {theirs[0]['torch']} step | tokens/s | speed-up (per round) |")
        print("|---|---|---|---|---|---|")
        print(f"| {desc} | {o:.0f} ms | {tokens / o * 1e3:.0f} | {t:.0f} ms | {tokens / t * 1e3:.0f} | "
              f"{t / o:.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}) |")
    else:
        print(desc)
        print(f"moe.cpp : {o:8.1f} ms/step  {tokens / o * 1e3:8.0f} tokens/s")
        print(f"PyTorch : {t:8.1f} ms/step  {tokens / t * 1e3:8.0f} tokens/s  (torch {theirs[0]['torch']})")
        print(f"speed-up: {t / o:.2f}x  (per round: {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
