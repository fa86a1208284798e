#!/usr/bin/env python3
"""transformers MoE model, training step and inference forward: unpatched vs moe_cpp.torch.patch.

A randomly initialised transformers Mixtral (or Qwen3-MoE) causal LM, float32, on CPU. One training
step = forward with labels (cross-entropy) + backward + AdamW step; the inference forward runs under
torch.no_grad() in eval mode. The unpatched model and a patched deep copy (same weights) alternate
round by round; each round times `--steps` consecutive steps of each; medians over rounds.

    OMP_NUM_THREADS=2 PYTHONPATH=build/python ~/.cache/moe-peers/torch2/bin/python \
        bench/python_patch_bench.py --arch mixtral --threads 2

--profile: one extra torch.profiler pass per model of one training step; prints where the time goes
(the engine's MoE function vs attention, linears, lm head, optimizer ...).
"""
import argparse
import os
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--arch", choices=["mixtral", "qwen3_moe"], default="mixtral")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--hidden", type=int, default=512)
ap.add_argument("--intermediate", type=int, default=1024, help="expert FFN width")
ap.add_argument("--experts", type=int, default=8)
ap.add_argument("--top-k", type=int, default=2)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--heads", type=int, default=8)
ap.add_argument("--kv-heads", type=int, default=2)
ap.add_argument("--vocab", type=int, default=2048)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--experts-impl", default=None,
                help="transformers' experts_implementation of the unpatched model (default: its own, grouped_mm)")
ap.add_argument("--aux", action="store_true", help="output_router_logits=True (the load-balancing aux loss)")
ap.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) (torch's CPU default is the for-loop)")
ap.add_argument("--profile", action="store_true")
args = ap.parse_args()

os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
os.environ.setdefault("MOE_NUM_THREADS", str(args.threads))
import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402

import moe_cpp.torch  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    keep = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16") if f in flags]
    return f"{name}; {os.cpu_count()} logical CPUs; {' '.join(keep)}"


def build():
    common = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, num_experts_per_tok=args.top_k,
                  max_position_embeddings=max(512, args.seq), tie_word_embeddings=False)
    if args.arch == "mixtral":
        cfg = transformers.MixtralConfig(intermediate_size=args.intermediate, num_local_experts=args.experts, **common)
        cls = transformers.MixtralForCausalLM
    else:
        cfg = transformers.Qwen3MoeConfig(intermediate_size=4 * args.hidden, moe_intermediate_size=args.intermediate,
                                          num_experts=args.experts, norm_topk_prob=True, decoder_sparse_step=1,
                                          mlp_only_layers=[], head_dim=args.hidden // args.heads, **common)
        cls = transformers.Qwen3MoeForCausalLM
    if args.experts_impl:
        cfg._experts_implementation = args.experts_impl
    m = cls(cfg).float()
    return m


OPT_TIME = {}


def train_step(model, opt, ids):
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids, output_router_logits=args.aux)
    out.loss.backward()
    t = time.perf_counter()
    opt.step()
    OPT_TIME.setdefault(id(model), []).append(time.perf_counter() - t)
    return float(out.loss.detach())


def infer(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def timed(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def profile(name, fn):
    from torch.profiler import ProfilerActivity, profile as tprof
    with tprof(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"\n--- profile: {name}, one training step (self CPU time, top ops) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main():
    ref = build()
    pat = moe_cpp.torch.patch(copy.deepcopy(ref))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    n_params = sum(p.numel() for p in ref.parameters())
    print(f"CPU: {cpu_model()}")
    print(f"torch {torch.__version__} (threads {torch.get_num_threads()}), transformers {transformers.__version__}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, MOE_NUM_THREADS={os.environ.get('MOE_NUM_THREADS')}")
    print(f"model: {type(ref).__name__} hidden {args.hidden}, expert ffn {args.intermediate}, {args.experts} experts "
          f"top-{args.top_k}, {args.layers} layers, heads {args.heads}/{args.kv_heads}, vocab {args.vocab}, "
          f"{n_params / 1e6:.1f}M params; batch {args.batch} x seq {args.seq}; unpatched experts: "
          f"{ref.config._experts_implementation}, attention: {ref.config._attn_implementation}; aux loss: {args.aux}")
    kw = {"fused": True} if args.fused_adamw else {}
    opt_r = torch.optim.AdamW(ref.parameters(), lr=1e-4, **kw)
    opt_p = torch.optim.AdamW(pat.parameters(), lr=1e-4, **kw)
    ref.train(), pat.train()
    lr_, lp_ = None, None
    for _ in range(args.warmup):
        lr_ = train_step(ref, opt_r, ids)
        lp_ = train_step(pat, opt_p, ids)
    print(f"loss after warmup: unpatched {lr_:.6f}, patched {lp_:.6f}")
    tr, tp = [], []
    for r in range(args.rounds):
        tr.append(timed(lambda: train_step(ref, opt_r, ids), args.steps))
        tp.append(timed(lambda: train_step(pat, opt_p, ids), args.steps))
        print(f"  train round {r}: unpatched {tr[-1]:.3f} s, patched {tp[-1]:.3f} s, ratio {tr[-1] / tp[-1]:.2f}",
              flush=True)
    ref.eval(), pat.eval()
    ir, ip = [], []
    for _ in range(1):
        infer(ref, ids), infer(pat, ids)
    for r in range(args.rounds):
        ir.append(timed(lambda: infer(ref, ids), args.steps))
        ip.append(timed(lambda: infer(pat, ids), args.steps))
    y_r, y_p = infer(ref, ids), infer(pat, ids)
    # the first MoE block alone: forward + backward of (batch, seq, hidden) activations
    blk_r = next(m for m in ref.modules() if type(m).__name__.endswith("SparseMoeBlock"))
    blk_p = next(m for m in pat.modules() if type(m).__name__ == "EngineSparseMoeBlock")
    blk_r.train(), blk_p.train()
    x = torch.randn(args.batch, args.seq, args.hidden, generator=g)
    dy = torch.randn(args.batch, args.seq, args.hidden, generator=g)

    def block_step(b):
        xx = x.clone().requires_grad_(True)
        (b(xx) * dy).sum().backward()

    br, bp = [], []
    block_step(blk_r), block_step(blk_p)
    for r in range(args.rounds):
        br.append(timed(lambda: block_step(blk_r), args.steps))
        bp.append(timed(lambda: block_step(blk_p), args.steps))
    ref.zero_grad(set_to_none=True), pat.zero_grad(set_to_none=True)
    kr, kp = statistics.median(br), statistics.median(bp)
    mr, mp = statistics.median(tr), statistics.median(tp)
    fr, fp = statistics.median(ir), statistics.median(ip)
    print(f"\n| {args.arch} | unpatched (s) | patched (s) | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| training step (fwd+bwd+AdamW) | {mr:.3f} | {mp:.3f} | {mr / mp:.2f}x |")
    print(f"| inference forward | {fr:.3f} | {fp:.3f} | {fr / fp:.2f}x |")
    print(f"| one MoE block alone, fwd+bwd | {kr:.3f} | {kp:.3f} | {kr / kp:.2f}x |")
    orr, orp = statistics.median(OPT_TIME[id(ref)]), statistics.median(OPT_TIME[id(pat)])
    print(f"| of a training step: AdamW step | {orr:.3f} | {orp:.3f} | |")
    print(f"MoE blocks' share of the unpatched training step (block fwd+bwd x {args.layers} / step): "
          f"~{args.layers * kr / mr:.0%}; patched: ~{args.layers * kp / mp:.0%}")
    dd = (y_r - y_p).abs().amax(-1)
    print(f"tokens/s training: {args.batch * args.seq / mr:.0f} -> {args.batch * args.seq / mp:.0f}; after "
          f"{args.warmup + args.rounds * args.steps} steps each, logits max |diff| {float(dd.max()):.2e}, "
          f"positions differing by > 1e-3: {int((dd > 1e-3).sum())} of {dd.numel()} (f32 rounding: one near-tie "
          "routing decision that flips spreads through training)")
    if args.profile:
        ref.train(), pat.train()
        profile("unpatched", lambda: train_step(ref, opt_r, ids))
        profile("patched", lambda: train_step(pat, opt_p, ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
