"""Overhead of moe_cpp.torch.MoE (Python, torch autograd, DLPack) over the engine's C++ layer.

Alternates rounds of `moe bench layer` (the C++ layer alone, its own process) and the same layer
as a torch module in this process, on the same shape and thread count, and prints the medians of
forward and forward+backward and the module's overhead. The module's backward hands torch fresh
gradient tensors (zero_grad(set_to_none=True), torch 2.x's default), as a training loop does.

    PYTHONPATH=build/python python3 bench/python_module_overhead.py --moe build/moe \
        --shape mixtral-small --threads 2 --rounds 3
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SHAPES = {  # T, d, F, E, k
    "mixtral-small": (2048, 1024, 3584, 8, 2),
    "fine-grained": (2048, 1024, 512, 64, 8),
    "small": (512, 256, 512, 8, 2),
}


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpp_round(args, shape):
    t, d, f, e, k = shape
    out = subprocess.run([args.moe, "bench", "layer", "--tokens", str(t), "--d-model", str(d), "--d-ff", str(f),
                          "--experts", str(e), "--top-k", str(k), "--threads", str(args.threads), "--warmup", "1",
                          "--iters", str(args.iters), "--dense-reps", "0", "--json"],
                         check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    return j["fwd_ms"], j["fwd_bwd_ms"]


def module_round(args, shape, m, x, dy):
    import torch
    fw, fb = [], []
    with torch.no_grad():
        m(x)  # warm-up
    for _ in range(args.iters):
        t0 = time.perf_counter()
        with torch.no_grad():
            m(x)
        fw.append((time.perf_counter() - t0) * 1e3)
    for i in range(args.iters + 1):
        m.zero_grad(set_to_none=True)
        xx = x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        out = m(xx)
        torch.autograd.backward([out.y], [dy])
        if i > 0:  # the first is the warm-up
            fb.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(fw), statistics.median(fb)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", default="build/moe")
    ap.add_argument("--shape", default="mixtral-small", choices=sorted(SHAPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    import moe_cpp
    from moe_cpp.torch import MoE
    torch.set_num_threads(args.threads)
    moe_cpp.set_num_threads(args.threads)
    t, d, f, e, k = SHAPES[args.shape]
    m = MoE(d_model=d, d_ff=f, n_experts=e, top_k=k, seed=42)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(t, d, generator=g)
    dy = torch.randn(t, d, generator=g)
    rows = {"cpp": [], "module": []}
    for r in range(args.rounds):
        rows["cpp"].append(cpp_round(args, SHAPES[args.shape]))
        rows["module"].append(module_round(args, SHAPES[args.shape], m, x, dy))
        print(f"round {r}: C++ fwd {rows['cpp'][-1][0]:.1f} fwd+bwd {rows['cpp'][-1][1]:.1f} ms; "
              f"module fwd {rows['module'][-1][0]:.1f} fwd+bwd {rows['module'][-1][1]:.1f} ms", flush=True)
    med = {w: [statistics.median(v[i] for v in rows[w]) for i in (0, 1)] for w in rows}
    print(f"\n{cpu_model()}, {args.threads} threads, torch {torch.__version__}, shape {args.shape} "
          f"(T={t}, d={d}, F={f}, E={e}, k={k}), medians of {args.rounds} alternated rounds x {args.iters} iters")
    print("| pass | C++ layer (ms) | moe_cpp.torch.MoE (ms) | overhead |")
    print("|---|---|---|---|")
    for i, name in enumerate(("forward", "forward+backward")):
        c, p = med["cpp"][i], med["module"][i]
        print(f"| {name} | {c:.1f} | {p:.1f} | {100 * (p / c - 1):+.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
