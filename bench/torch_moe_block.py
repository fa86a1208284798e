#!/usr/bin/env python3
"""The MoE block a PyTorch user writes, timed on the shapes of `moe bench layer`.

This is the baseline of the "MoE layer at the speed of a dense GEMM on CPU" comparison
(bench/compare_torch.py runs it beside `moe bench layer --json`). The block follows the Hugging Face
Mixtral / Qwen2-MoE sparse MoE block:

    logits = router(x)                       nn.Linear(d, E, bias=False)
    probs  = softmax(logits)                 fp32
    w, idx = topk(probs, k)                  renormalised only with --norm-topk
    for each expert e with tokens:
        tok  = torch.where(idx == e)         (rows of x routed to e)
        h    = w2(silu(w1(x[tok])) * w3(x[tok])) * w[tok, slot, None]
        y.index_add_(0, tok, h)
    y += shared_expert(x)                    with --shared-experts S: one SwiGLU MLP of width S*d_ff

fp32, torch.set_num_threads(--threads). It reports, like `moe bench layer`:
  * forward (autograd on, as in training) and forward+backward median times over --iters after
    --warmup; backward of loss = (y * dy).sum() w.r.t. x and every parameter;
  * expert GFLOP/s on the same FLOP count: 2*d*d_ff*3 per routed assignment and per token for the
    shared MLP (router excluded from the count, included in the time); forward+backward = 3x;
  * memory of one forward+backward, measured as the engine measures it: glibc's mmap threshold at
    128 KiB (MALLOC_MMAP_THRESHOLD_=131072; the script re-executes itself with it when it is not
    set), one untimed forward+backward (which allocates every .grad), the gradients zeroed in place
    (optimizer.zero_grad() of torch 1.13), VmHWM reset through /proc/self/clear_refs, then one
    forward+backward:
        fwd_peak_mb = VmHWM after the forward - VmRSS before it
        act_peak_mb = VmHWM after the backward - VmRSS before it
    i.e. what forward+backward needs beyond parameters, inputs and the (already allocated)
    gradients, the engine's act_peak_mb. (Subtracting the gradients from a pass that allocates them
    would not do here: autograd frees each expert's saved tensors as its gradients appear, so they
    are never all live at once.) The timed forward+backward passes also zero the gradients in place.
  * the dense torch.mm rate in the same layout (x @ Wg^T, x @ Wu^T, h @ Wd^T; rows = T*k + T*S,
    the same FLOPs, capped at --dense-max-rows), best of --dense-reps.

Prints one JSON object per shape (one line each). Written for torch 1.13 (Debian 12 python3-torch).

    /usr/bin/python3 bench/torch_moe_block.py --tokens 2048 --d-model 1024 --d-ff 3584 \\
        --experts 8 --top-k 2 --threads 2
    /usr/bin/python3 bench/torch_moe_block.py --shape mixtral-small --shape fine-grained --threads 2
"""
import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time

MMAP_THRESHOLD = "131072"  # 128 KiB, the value `moe bench layer` fixes with mallopt

SHAPES = {
    # name: (tokens, d_model, d_ff, experts, top_k, shared_experts)
    "mixtral-small": (2048, 1024, 3584, 8, 2, 0),
    "fine-grained": (2048, 1024, 512, 64, 8, 0),
    "fine-grained-shared": (2048, 1024, 512, 64, 8, 1),
    "quick-mixtral": (256, 128, 256, 8, 2, 0),
    "quick-fine": (256, 128, 64, 16, 4, 0),
    "quick-fine-shared": (256, 128, 64, 16, 4, 1),
}


def ensure_mmap_threshold():
    """glibc reads MALLOC_MMAP_THRESHOLD_ at start-up only: re-execute with it when missing."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") == MMAP_THRESHOLD:
        return
    if os.environ.get("MOE_TORCH_BENCH_REEXEC") == "1":
        return  # already tried once; go on with what we have (reported as mmap_threshold_fixed)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD, MOE_TORCH_BENCH_REEXEC="1")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def status_mib(key):
    """VmRSS / VmHWM of this process from /proc/self/status, in MiB (-1 when unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return -1.0


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build_block(torch, d, F, E, k, shared, norm_topk):
    nn = torch.nn
    fn = torch.nn.functional

    class Expert(nn.Module):
        """SwiGLU MLP as in Hugging Face MixtralBlockSparseTop2MLP / Qwen2MoeMLP."""

        def __init__(self, d, width):
            super().__init__()
            self.w1 = nn.Linear(d, width, bias=False)  # gate
            self.w3 = nn.Linear(d, width, bias=False)  # up
            self.w2 = nn.Linear(width, d, bias=False)  # down

        def forward(self, x):
            return self.w2(fn.silu(self.w1(x)) * self.w3(x))

    class SparseMoeBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(d, E, bias=False)
            self.experts = nn.ModuleList([Expert(d, F) for _ in range(E)])
            self.shared_expert = Expert(d, shared * F) if shared > 0 else None

        def forward(self, x):  # x: (T, d)
            logits = self.gate(x)  # (T, E)
            probs = fn.softmax(logits, dim=-1, dtype=torch.float)
            w, idx = torch.topk(probs, k, dim=-1)  # (T, k)
            if norm_topk:
                w = w / w.sum(dim=-1, keepdim=True)
            w = w.to(x.dtype)
            y = torch.zeros_like(x)
            # (E, k, T): expert_mask[e, j, t] = token t's j-th choice is e
            expert_mask = fn.one_hot(idx, num_classes=E).permute(2, 1, 0)
            for e in range(E):
                slot, tok = torch.where(expert_mask[e])
                if tok.numel() == 0:
                    continue
                h = self.experts[e](x[tok]) * w[tok, slot, None]
                y.index_add_(0, tok, h)
            if self.shared_expert is not None:
                y = y + self.shared_expert(x)
            return y

    return SparseMoeBlock()


def median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def bench_shape(torch, a, shape_name, T, d, F, E, k, S):
    torch.manual_seed(a.seed)
    block = build_block(torch, d, F, E, k, S, a.norm_topk)
    params = list(block.parameters())
    x = torch.randn(T, d, requires_grad=True)
    dy = torch.randn(T, d)

    def zero_grads():
        # optimizer.zero_grad() as torch 1.13 does it (set_to_none=False): in place, kept allocated
        for t in [x] + params:
            if t.grad is not None:
                t.grad.zero_()

    def fwd():
        return block(x)

    def fwd_bwd():
        zero_grads()
        y = block(x)
        loss = (y * dy).sum()
        loss.backward()

    # Memory first (the peak is this block's even when it cannot be reset). The untimed pass
    # allocates every .grad (experts without tokens get none, as in any PyTorch training step).
    fwd_bwd()
    zero_grads()
    gc.collect()
    peak_reset = reset_peak_rss()
    rss_before = status_mib("VmRSS")
    y = block(x)
    hwm_fwd = status_mib("VmHWM")
    (y * dy).sum().backward()
    del y
    hwm = status_mib("VmHWM")
    grads_mb = sum(t.grad.numel() * t.grad.element_size() for t in [x] + params if t.grad is not None)
    grads_mb /= 1024.0 * 1024.0
    ok = hwm >= 0 and hwm_fwd >= 0 and rss_before >= 0
    fwd_peak = max(0.0, hwm_fwd - rss_before) if ok else 0.0
    act_peak = max(0.0, hwm - rss_before) if ok else 0.0

    # Routing counts (same statistics as the engine reports; dropless).
    with torch.no_grad():
        idx = torch.topk(torch.softmax(block.gate(x), dim=-1), k, dim=-1).indices
        per_expert = torch.bincount(idx.flatten(), minlength=E).tolist()
    flops_fwd = 2.0 * d * F * 3 * (sum(per_expert) + T * S)

    fwd_ms, fwd_min = median_ms(fwd, a.warmup, a.iters)
    fwd_bwd_ms, fwd_bwd_min = median_ms(fwd_bwd, a.warmup, a.iters)
    zero_grads()

    # Dense torch.mm in the same layout (weights (out, in), as nn.Linear), best of reps. The rows are
    # those of the layer (T*k + T*S: the same FLOPs) unless --dense-max-rows caps them: with the
    # reference BLAS a full-size rep takes tens of seconds, and the rate does not depend on M.
    rows = T * k + T * S
    if a.dense_max_rows > 0:
        rows = min(rows, a.dense_max_rows)
    dense = {}
    if a.dense_reps > 0:
        with torch.no_grad():
            xd = torch.randn(rows, d)
            wg = torch.randn(F, d) / d ** 0.5
            wu = torch.randn(F, d) / d ** 0.5
            wd = torch.randn(d, F) / F ** 0.5

            def rep():
                torch.mm(xd, wg.t())
                u = torch.mm(xd, wu.t())
                torch.mm(u, wd.t())

            rep()
            times = []
            for _ in range(a.dense_reps):
                t0 = time.perf_counter()
                rep()
                times.append((time.perf_counter() - t0) * 1e3)
            dense_flops = 2.0 * rows * F * d * 3
            dense = {
                "dense_m": rows, "dense_n": F, "dense_k": d, "dense_reps": a.dense_reps,
                "dense_flops": dense_flops, "dense_ms_best": round(min(times), 6),
                "dense_gflops": round(dense_flops / (min(times) * 1e6), 3),
            }
            del xd, wg, wu, wd

    def gf(flops, ms):
        return round(flops / (ms * 1e6), 3) if ms > 0 else 0.0

    def blas_library():
        """The BLAS shared library mapped into this process (torch.mm's), or None."""
        try:
            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "/" in line}
        except OSError:
            return None
        hits = sorted(p for p in paths if "blas" in os.path.basename(p).lower())
        return ", ".join(hits) if hits else None

    r = {
        "command": "torch_moe_block", "torch": torch.__version__, "blas": blas_library(), "shape": shape_name,
        "dtype": "f32", "threads": torch.get_num_threads(),
        "tokens": T, "d_model": d, "d_ff": F, "experts": E, "top_k": k, "shared_experts": S,
        "norm_topk": a.norm_topk, "warmup": a.warmup, "iters": a.iters, "seed": a.seed,
        "fwd_ms": round(fwd_ms, 6), "fwd_ms_min": round(fwd_min, 6),
        "fwd_bwd_ms": round(fwd_bwd_ms, 6), "fwd_bwd_ms_min": round(fwd_bwd_min, 6),
        "flops_fwd": flops_fwd, "flops_fwd_bwd": 3.0 * flops_fwd,
        "gflops_fwd": gf(flops_fwd, fwd_ms), "gflops_fwd_bwd": gf(3.0 * flops_fwd, fwd_bwd_ms),
        "tokens_per_expert": per_expert,
        "act_peak_mb": round(act_peak, 1), "fwd_peak_mb": round(fwd_peak, 1),
        "grads_mb": round(grads_mb, 1), "grads_preallocated": True, "rss_before_mb": round(rss_before, 1),
        "peak_reset": peak_reset,
        "mmap_threshold_fixed": os.environ.get("MALLOC_MMAP_THRESHOLD_") == MMAP_THRESHOLD,
        # getrusage peak; Linux resets it with VmHWM, so it is the peak since the memory pass.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }
    r.update(dense)
    if dense:
        r["fwd_vs_dense"] = round(r["gflops_fwd"] / dense["dense_gflops"], 4)
        r["fwd_bwd_vs_dense"] = round(r["gflops_fwd_bwd"] / dense["dense_gflops"], 4)
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", choices=sorted(SHAPES),
                   help="a named shape (repeatable); overrides the shape options")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--shared-experts", type=int, default=0)
    p.add_argument("--norm-topk", action="store_true", help="renormalise the top-k weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--dense-reps", type=int, default=3, help="0 skips the dense torch.mm rate")
    p.add_argument("--dense-max-rows", type=int, default=512,
                   help="cap on the rows M of the dense torch.mm problem (0 = the layer's T*k + T*S)")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    if a.iters < 1 or a.warmup < 0 or a.threads < 1 or a.dense_reps < 0:
        p.error("need --iters >= 1, --warmup >= 0, --threads >= 1, --dense-reps >= 0")

    shapes = [(n, *SHAPES[n]) for n in a.shape] if a.shape else [
        ("custom", a.tokens, a.d_model, a.d_ff, a.experts, a.top_k, a.shared_experts)]
    for name, T, d, F, E, k, S in shapes:
        if min(T, d, F, E, k) < 1 or k > E or S < 0:
            p.error(f"bad shape {name}: need tokens, d_model, d_ff, experts >= 1, 1 <= top_k <= experts")

    ensure_mmap_threshold()
    import torch  # after the re-exec: the import is the slow part

    torch.set_num_threads(a.threads)
    for name, T, d, F, E, k, S in shapes:
        print(json.dumps(bench_shape(torch, a, name, T, d, F, E, k, S)), flush=True)


if __name__ == "__main__":
    main()
