#!/usr/bin/env python3
"""One training step of the default `moe train` model in PyTorch eager, timed like `moe bench train`.

The model is the Hugging Face qwen3_moe layout written the way its modeling code does it, in fp32:
embedding; per layer RMSNorm -> q/k/v projections -> per-head q/k RMSNorm -> RoPE (rotate_half) ->
causal grouped-query attention (explicit softmax: torch 1.13 has no scaled_dot_product_attention)
-> o_proj, residual; RMSNorm -> sparse MoE block (softmax router, top-k, renormalised, a loop over
the experts that have tokens with index_add_, as transformers' Qwen3MoeSparseMoeBlock), residual;
final RMSNorm, lm_head, cross-entropy + Switch aux loss + z-loss. The step is forward, backward,
clip_grad_norm_(1.0) and torch.optim.AdamW.

    /usr/bin/python3 bench/torch_train_step.py --threads 2 --iters 5

Prints one JSON object: step_ms (median), tokens_per_s, n_params. Written for torch 1.13.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, d, hq, hkv, hd):
        super().__init__()
        self.hq, self.hkv, self.hd = hq, hkv, hd
        self.q_proj = nn.Linear(d, hq * hd, bias=False)
        self.k_proj = nn.Linear(d, hkv * hd, bias=False)
        self.v_proj = nn.Linear(d, hkv * hd, bias=False)
        self.o_proj = nn.Linear(hq * hd, d, bias=False)
        self.q_norm = RMSNorm(hd)
        self.k_norm = RMSNorm(hd)

    def forward(self, x, cos, sin, mask):
        B, S, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, S, self.hq, self.hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, S, self.hkv, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.hkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.hq // self.hkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
        out = torch.softmax(att, dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.hq * self.hd))


class Expert(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoe(nn.Module):
    def __init__(self, d, f, e, k):
        super().__init__()
        self.e, self.k = e, k
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList([Expert(d, f) for _ in range(e)])

    def forward(self, x):
        B, S, d = x.shape
        x = x.view(-1, d)
        logits = self.gate(x)
        probs = torch.softmax(logits, dim=-1)
        w, idx = torch.topk(probs, self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        mask = F.one_hot(idx, self.e).permute(2, 1, 0)  # (E, k, T)
        for e in range(self.e):
            slot, tok = torch.where(mask[e])
            if tok.numel() == 0:
                continue
            y.index_add_(0, tok, (self.experts[e](x[tok]) * w[tok, slot, None]).to(y.dtype))  # bf16 under autocast
        # Switch aux loss and z-loss, as the engine defines them (docs/MOE_LAYER.md).
        T = x.shape[0]
        counts = mask.sum(dim=(1, 2)).to(x.dtype)
        aux = self.e / (self.k * T) * (counts * probs.mean(0)).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return y.view(B, S, d), aux, z


class Model(nn.Module):
    def __init__(self, a):
        super().__init__()
        hd = a.hidden // a.heads
        self.embed = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList()
        for _ in range(a.layers):
            blk = nn.Module()
            blk.ln1, blk.ln2 = RMSNorm(a.hidden), RMSNorm(a.hidden)
            blk.attn = Attention(a.hidden, a.heads, a.kv_heads, hd)
            blk.moe = SparseMoe(a.hidden, a.expert_width, a.experts, a.top_k)
            self.layers.append(blk)
        self.norm = RMSNorm(a.hidden)
        self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(a.seq_len, dtype=torch.float32), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.mask = torch.full((a.seq_len, a.seq_len), float("-inf")).triu(1)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, tok, tgt, aux_coef=0.01, z_coef=0.001):
        x = self.embed(tok)
        aux_total = 0.0
        for blk in self.layers:
            x = x + blk.attn(blk.ln1(x), self.cos, self.sin, self.mask)
            y, aux, z = blk.moe(blk.ln2(x))
            x = x + y
            aux_total = aux_total + aux_coef * aux + z_coef * z
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1)) + aux_total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--expert-width", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bf16", action="store_true",
                   help="forward under torch.autocast('cpu', dtype=torch.bfloat16) (the linears in bf16)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    m = Model(a)
    decay = [q for n, q in m.named_parameters() if q.dim() > 1]
    no_decay = [q for n, q in m.named_parameters() if q.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    tok = torch.randint(0, a.vocab, (a.batch_size, a.seq_len))
    tgt = torch.randint(0, a.vocab, (a.batch_size, a.seq_len))
    times = []
    loss = None
    for it in range(a.warmup + a.iters):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        if a.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m(tok, tgt)
        else:
            loss = m(tok, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if it >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    step_ms = statistics.median(times)
    n = a.batch_size * a.seq_len
    print(json.dumps({"impl": "torch", "torch": torch.__version__, "n_params": sum(q.numel() for q in m.parameters()),
                      "batch": a.batch_size, "seq_len": a.seq_len, "threads": a.threads, "bf16": a.bf16, "step_ms": step_ms,
                      "tokens_per_s": n / (step_ms / 1e3), "loss": float(loss)}))


if __name__ == "__main__":
    main()
