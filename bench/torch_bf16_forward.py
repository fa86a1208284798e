#!/usr/bin/env python3
"""The bf16 MoE forward a PyTorch 2.x user runs for inference, timed on the shapes of `moe bench layer`.

The baseline of the engine's bf16-weight forward (`moe bench layer --weights bf16`); run it under a
PyTorch 2.x interpreter (../shared/peers/torch2.sh makes a venv with PyTorch from PyPI, whose CPU
matmuls go through oneDNN: AMX tiles or AVX512-BF16 where the CPU has them). Three formulations of
the same layer (router in fp32, top-k softmax, SwiGLU experts, optional shared expert), no autograd:

  hf_autocast   the Hugging Face sparse MoE block (torch_moe_block.py's) on fp32 weights under
                torch.autocast("cpu", dtype=torch.bfloat16): every nn.Linear runs in bf16
  sorted        the fastest hand-written form: weights converted to bf16 once ([gate; up] per expert
                as one matrix), tokens sorted by expert once per call, one bf16 matmul for gate|up
                and one for down per expert, SwiGLU in bf16, rows scaled by their routing weight and
                summed with index_add_ in fp32
  grouped_mm    as sorted, with the per-expert loops replaced by torch.nn.functional.grouped_mm (or
                torch._grouped_mm) on the sorted rows, where this torch has it for CPU bf16

Each is timed as the median of --iters after --warmup; GFLOP/s on the engine's FLOP count
(2 * d * d_ff * 3 per routed assignment and per token per shared expert). Also the dense bf16
torch.mm rate on the gate|up layout (M = T * k, N = 2 * d_ff, K = d), best of --dense-reps. One JSON
object per shape.

    PY=$(../shared/peers/torch2.sh); $PY bench/torch_bf16_forward.py --shape mixtral-small --threads 2
"""
import argparse
import json
import statistics
import time

from torch_moe_block import SHAPES, build_block  # the same shapes and HF block (this folder)


def median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def grouped_mm_fn(torch):
    fn = getattr(torch.nn.functional, "grouped_mm", None)
    return fn if fn is not None else getattr(torch, "_grouped_mm", None)


def bench_shape(torch, a, name, T, d, F, E, k, S):
    fn = torch.nn.functional
    torch.manual_seed(a.seed)
    block = build_block(torch, d, F, E, k, S, False).eval()
    x = torch.randn(T, d)
    bf = torch.bfloat16
    # bf16 copies, made once (as an inference server loads them).
    wgu = torch.stack([torch.cat([ex.w1.weight, ex.w3.weight], 0) for ex in block.experts]).to(bf)  # (E, 2F, d)
    wd = torch.stack([ex.w2.weight for ex in block.experts]).to(bf)  # (E, d, F)
    wgu_t = wgu.transpose(1, 2).contiguous()  # (E, d, 2F) for grouped_mm
    wd_t = wd.transpose(1, 2).contiguous()    # (E, F, d)
    if S:
        sh = block.shared_expert
        sgu = torch.cat([sh.w1.weight, sh.w3.weight], 0).to(bf)  # (2FS, d)
        sd = sh.w2.weight.to(bf)
    router = block.gate.weight  # fp32 (E, d)

    def route(xf):
        probs = fn.softmax(xf @ router.t(), dim=-1)
        w, idx = torch.topk(probs, k, dim=-1)  # (T, k)
        flat = idx.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E)
        return w.flatten()[order], order // k, counts  # weights, token of each sorted row, rows/expert

    def swiglu(h, width):
        return fn.silu(h[:, :width]) * h[:, width:]

    def shared(xb, y):
        if S:
            y += (swiglu(xb @ sgu.t(), S * F) @ sd.t()).float()

    def sorted_fwd():
        w, tok, counts = route(x)
        xb = x.to(bf)
        xs = xb[tok]  # (T k, d) sorted by expert
        y = torch.zeros(T, d)
        start = 0
        for e, c in enumerate(counts.tolist()):
            if c == 0:
                continue
            h = swiglu(xs[start:start + c] @ wgu[e].t(), F) @ wd[e].t()
            y.index_add_(0, tok[start:start + c], h.float() * w[start:start + c, None])
            start += c
        shared(xb, y)
        return y

    gmm = grouped_mm_fn(torch)

    def grouped_fwd():
        w, tok, counts = route(x)
        xb = x.to(bf)
        xs = xb[tok]
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = swiglu(gmm(xs, wgu_t, offs=offs), F)
        out = gmm(h, wd_t, offs=offs)
        y = torch.zeros(T, d)
        y.index_add_(0, tok, out.float() * w[:, None])
        shared(xb, y)
        return y

    def hf_fwd():
        with torch.autocast("cpu", dtype=bf):
            return block(x)

    flops = 2.0 * d * F * 3 * (T * k + T * S)
    r = {"command": "torch_bf16_forward", "torch": torch.__version__, "shape": name, "threads": torch.get_num_threads(),
         "tokens": T, "d_model": d, "d_ff": F, "experts": E, "top_k": k, "shared_experts": S,
         "warmup": a.warmup, "iters": a.iters, "seed": a.seed, "flops_fwd": flops}
    with torch.inference_mode():
        ref = sorted_fwd()
        forms = {"sorted": sorted_fwd, "hf_autocast": hf_fwd}
        if gmm is not None:
            try:
                got = grouped_fwd()
                r["grouped_mm_max_diff"] = float((got - ref).abs().max())
                forms["grouped_mm"] = grouped_fwd
            except (RuntimeError, NotImplementedError, TypeError) as e:
                r["grouped_mm_error"] = str(e).splitlines()[0][:200]
        for form, f in forms.items():
            ms = median_ms(f, a.warmup, a.iters)
            r[f"{form}_ms"] = round(ms, 3)
            r[f"{form}_gflops"] = round(flops / (ms * 1e6), 2)
        best = min(forms, key=lambda f: r[f"{f}_ms"])
        r["fastest"], r["fastest_ms"], r["fastest_gflops"] = best, r[f"{best}_ms"], r[f"{best}_gflops"]
        if a.dense_reps > 0:
            xm = torch.randn(T * k, d).to(bf)
            wm = torch.randn(2 * F, d).to(bf)
            torch.mm(xm, wm.t())
            times = []
            for _ in range(a.dense_reps):
                t0 = time.perf_counter()
                torch.mm(xm, wm.t())
                times.append(time.perf_counter() - t0)
            r["dense_bf16_gflops"] = round(2.0 * T * k * 2 * F * d / min(times) / 1e9, 2)
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", choices=sorted(SHAPES), help="a named shape (repeatable)")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--shared-experts", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--dense-reps", type=int, default=3, help="0 skips the dense bf16 torch.mm rate")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    if a.iters < 1 or a.warmup < 0 or a.threads < 1 or a.dense_reps < 0:
        p.error("need --iters >= 1, --warmup >= 0, --threads >= 1, --dense-reps >= 0")
    shapes = [(n, *SHAPES[n]) for n in a.shape] if a.shape else [
        ("custom", a.tokens, a.d_model, a.d_ff, a.experts, a.top_k, a.shared_experts)]
    for name, T, d, F, E, k, S in shapes:
        if min(T, d, F, E, k) < 1 or k > E or S < 0:
            p.error(f"bad shape {name}: need tokens, d_model, d_ff, experts >= 1, 1 <= top_k <= experts")
    import torch
    torch.set_num_threads(a.threads)
    for name, T, d, F, E, k, S in shapes:
        print(json.dumps(bench_shape(torch, a, name, T, d, F, E, k, S)), flush=True)


if __name__ == "__main__":
    main()
