#!/usr/bin/env python3
"""A training loop written in PyTorch around moe_cpp.torch.MoE against `moe train`: same tiny model, same
batches, same optimizer, same loss sequence.

For each case a tiny decoder model (config.json + model.safetensors, random O(1) weights from
tests/oracle/torch_model.py's `random_weights`, with the BPE tokenizer.json of
tests/fixtures/tokenizers/olmoe) and a small generated text are written to a temporary directory;
`moe train --init MODEL --data TEXT` trains it for STEPS steps and its metrics.jsonl gives the per-step
loss, balancing loss, learning rate, gradient norm and expert load. Then PyTorch trains the same
weights in float32:

- the model (`TorchMoEModel`, a torch.nn.Module): embedding, RMSNorm, attention (RoPE, GQA, q/k
  norms, biases) and dense FFNs are tests/oracle/torch_model.py's functions (the Hugging Face
  formulas); every MoE block is a `moe_cpp.torch.MoE` built from `torch_model.Spec.layer_config()`
  and holding the checkpoint's router and expert weights (stacked per expert);
- the loss is the trainer's: sum of token cross-entropies / (B * S) + the sum over MoE layers of the
  layer's weighted balancing loss (`out.aux_loss`); the logged loss is the mean cross-entropy;
- the batches are the trainer's (`BatchSampler`, moe/train/data.h), reproduced here: the token shard
  `RUN/data/train.bin` that `moe train` wrote is read directly, cut into windows of S + 1 tokens that
  start S apart after an epoch offset, and each epoch's offset and window order (Fisher-Yates) come
  from the engine's counter-based Philox-4x32-10 stream (seed, epoch + 1) (moe/core/rng.h; its known
  answer vectors are checked below). The shard is small enough that the run crosses an epoch;
- the optimizer is torch.optim.AdamW, which computes what moe::train::AdamW computes: decoupled weight
  decay w *= 1 - lr * wd before the step, m and v moments, eps added to the bias-corrected sqrt(v)
  (denom = sqrt(v) / sqrt(1 - b2^t) + eps, step lr / (1 - b1^t)). Weight decay applies to the
  matrices only (the engine's `decay` flag: embeddings, projections, router, experts, head), not to
  norm weights and biases, so two parameter groups;
- the learning rate is the trainer's LrSchedule (linear warmup, cosine decay to lr * min_lr_ratio), set
  on the optimizer each step (and compared with the logged lr);
- gradient clipping is written by hand as the engine does it: the global norm in double over every
  gradient; when it exceeds --clip, every gradient is scaled by clip / norm
  (torch.nn.utils.clip_grad_norm_ divides by norm + 1e-6 instead). The logged grad_norm (before
  clipping) is compared too.

What is compared, per step: the mean cross-entropy (the logged loss; relative difference at most
LOSS_TOL(step) = 2e-6 * (1 + step), step counted from 0), the balancing loss (AUX_TOL = 1e-5), the
gradient norm (GRAD_NORM_TOL = 2e-5), the learning rate (to 1e-12) and the routed load of every expert
of every MoE layer (exactly); after the last step, every tensor of the engine's checkpoint against the
PyTorch parameters (WEIGHT_TOL = 1e-3 of the tensor's largest entry).

Why these tolerances: the two loops differ only by float32 rounding. The MoE layers and their backward
are the engine's in both; embedding, attention, norms, head, cross-entropy and AdamW are PyTorch's in
one and the engine's in the other, each within a few float32 ulps. At step 0 the losses agree to about
1e-8 (the logged loss averages B * S cross-entropies). Later steps run on weights that have drifted
apart by rounding, which AdamW's normalised update m / (sqrt(v) + eps) amplifies where a gradient is
close to its own rounding noise (in qwen3_moe, an element of an embedding row seen once, gradient
1.5e-8, moves 5% differently at step 2: 1.6e-4 in absolute terms), so the difference grows with the
step: the largest observed is 7e-7 (qwen3_moe, 12th step; torch 1.13 and 2.15 alike), against a
tolerance of 2.4e-5 there; the gradient norms agree to 2e-6, the balancing losses to 2e-7, the final
weights to 7e-5. A wrong batch, learning rate, weight-decay group, clipping rule, AdamW epsilon (1e-4) or a
missing balancing-loss gradient gives relative loss differences of 2.5e-5 to 3e-3 from its first
affected step and up to 0.2 later, 45 to 6500 times the tolerance, and final weights off by 3e-2 to 0.2
(checked by changing each in turn). A top-k decision flipped by rounding would change the routed load
first and is reported as such: a routing flip is not within tolerance, it is a failure to look at.

    PYTHONPATH=build/python python3 tests/python/test_train_loss_sequence.py [-v] [--keep DIR]

Exit code 77 (skipped) only when torch is not importable; a missing moe_cpp or `moe` binary fails.
"""
import argparse
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

try:
    import torch
except ImportError as e:
    print("skipped: torch is not importable:", e)
    sys.exit(77)
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "oracle"))
import torch_model  # noqa: E402  (the Hugging Face blocks in PyTorch)
from test_oracle import read_safetensors, write_safetensors  # noqa: E402  (safetensors by hand, as the oracle)

import moe_cpp  # noqa: E402
from moe_cpp.torch import MoE  # noqa: E402

MOE = os.environ.get("MOE_BIN") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(moe_cpp.__file__)))), "moe")
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "olmoe", "tokenizer.json")

STEPS = 16
# Trainer options (moe train flags): 3 warmup steps, then a cosine decay to 0.1 lr; clipping at 1.0 acts in
# most steps (the norms are 0.97 to 1.25); AdamW's default betas (0.9, 0.95) and weight decay 0.1. The lr is
# high enough for the loss to fall by 2 nats in 16 steps.
TRAIN = dict(seq_len=16, batch_size=8, steps=STEPS, lr=1e-2, warmup=3, min_lr_ratio=0.1, weight_decay=0.1,
             clip=1.0, seed=5, eval_every=0, eval_batches=1, checkpoint_every=0, log_every=1)
BETAS, EPS = (0.9, 0.95), 1e-8  # TrainOptions' beta1, beta2 defaults; AdamWConfig eps (trainer.cpp)


def LOSS_TOL(step):
    return 2e-6 * (1 + step)


GRAD_NORM_TOL = 2e-5  # relative, the logged norm before clipping
AUX_TOL = 1e-5        # relative, the sum of the MoE layers' weighted balancing losses
WEIGHT_TOL = 1e-3     # max |engine - PyTorch| / max |engine| per tensor of the final checkpoint


def base_config(arch, vocab, **kw):
    """A Hugging Face config.json of a tiny model (d 32, 2 layers, 4 query / 2 kv heads of 8, 4 experts
    of width 24, top-2)."""
    c = {"model_type": arch, "architectures": [{"mixtral": "MixtralForCausalLM",
                                                "qwen2_moe": "Qwen2MoeForCausalLM",
                                                "qwen3_moe": "Qwen3MoeForCausalLM",
                                                "olmoe": "OlmoeForCausalLM"}[arch]],
         "vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 24, "num_experts_per_tok": 2,
         "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
         "tie_word_embeddings": False, "router_aux_loss_coef": 0.02, "router_z_loss_coef": 0.001,
         "hidden_act": "silu", "torch_dtype": "float32"}
    if arch == "mixtral":
        c["num_local_experts"] = 4
    else:
        c.update(num_experts=4, norm_topk_prob=True)
    if arch in ("qwen2_moe", "qwen3_moe"):
        c.update(moe_intermediate_size=24, intermediate_size=40, decoder_sparse_step=1, mlp_only_layers=[])
    c.update(kw)
    return c


# name -> (arch, config overrides). qwen3_moe is `moe train`'s own default layout (per-head q/k norms);
# qwen2_moe adds the sigmoid-gated shared expert, q/k/v biases and a dense first layer; mixtral has neither
# norms nor biases in attention; olmoe normalises the whole q/k projections and ties the head here (the
# tied N(0, 1) embedding as head makes its random start a loss of 23).
CASES = {
    "qwen3_moe": ("qwen3_moe", {}),
    "qwen2_moe.shared_dense0": ("qwen2_moe", {"shared_expert_intermediate_size": 20, "mlp_only_layers": [0],
                                              "num_hidden_layers": 3}),
    "mixtral": ("mixtral", {}),
    "olmoe.tied": ("olmoe", {"tie_word_embeddings": True}),
}


# ---------------------------------------------------------------------------------------------
# The trainer's batches: BatchSampler over the token shard, Philox-4x32-10 (moe/core/rng.h).

M32 = 0xFFFFFFFF


def philox4x32(c, key):
    c0, c1, c2, c3 = c
    k0, k1 = key & M32, (key >> 32) & M32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def rng_below(seed, stream, i, n):
    """moe::Rng(seed, stream).below(i, n): (r0 << 32 | r1) mod n of block (i, stream) keyed by seed."""
    r = philox4x32((i & M32, i >> 32, stream & M32, stream >> 32), seed)
    return ((r[0] << 32) | r[1]) % n


def read_shard(path):
    """A token shard (moe/train/data.h): 32-byte header "MOETOK1\\0", version, bytes per token, count."""
    with open(path, "rb") as f:
        b = f.read()
    assert b[:8] == b"MOETOK1\0", f"{path}: not a token shard"
    version, dtype, count = struct.unpack("<IIQ", b[8:24])
    assert version == 1 and dtype in (2, 4), (version, dtype)
    assert len(b) == 32 + dtype * count, f"{path}: size"
    return list(struct.unpack(f"<{count}{'H' if dtype == 2 else 'I'}", b[32:]))


class BatchSampler:
    """moe::train::BatchSampler with shuffle: epoch e's offset is below(0, max_offset + 1) and its window
    order a Fisher-Yates shuffle (swap i with below(i, i + 1), i = W-1 .. 1), both from the stream
    Rng(seed).fork(e) = Rng(seed, e + 1); window k starts at offset + perm[k] * S; a batch is B windows,
    inputs [s, s + S) and targets [s + 1, s + S + 1), continuing into the next epoch at its end."""

    def __init__(self, tokens, B, S, seed):
        self.t, self.B, self.S, self.seed = tokens, B, S, seed
        N = len(tokens)
        self.max_offset = min(S - 1, N - 1 - S)
        self.windows = (N - 1 - S - self.max_offset) // S + 1
        self.epoch, self.index, self.perm_epoch = 0, 0, None

    def _prepare(self, epoch):
        if self.perm_epoch == epoch:
            return
        stream = epoch + 1
        perm = list(range(self.windows))
        self.offset = rng_below(self.seed, stream, 0, self.max_offset + 1)
        for i in range(self.windows - 1, 0, -1):
            j = rng_below(self.seed, stream, i, i + 1)
            perm[i], perm[j] = perm[j], perm[i]
        self.perm, self.perm_epoch = perm, epoch

    def next(self):
        inputs, targets = [], []
        for _ in range(self.B):
            self._prepare(self.epoch)
            s = self.offset + self.perm[self.index] * self.S
            inputs.append(self.t[s:s + self.S])
            targets.append(self.t[s + 1:s + self.S + 1])
            self.index += 1
            if self.index == self.windows:
                self.epoch, self.index = self.epoch + 1, 0
        return torch.tensor(inputs, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)


def lr_at(step, lr, min_ratio, warmup, steps):
    """moe::train::LrSchedule{lr, lr * min_ratio, min(warmup, steps), steps}.at(step)."""
    warmup = min(warmup, steps)
    lo = lr * min_ratio
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= steps:
        return lo
    return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (steps - warmup)))


# ---------------------------------------------------------------------------------------------
# The model in PyTorch with the engine's MoE layer.

class TorchMoEModel(torch.nn.Module):
    """torch_model.py's decoder (Hugging Face formulas) in float32 with every MoE block a
    moe_cpp.torch.MoE. forward(tokens, targets) -> (loss, ce_sum, aux, routed per MoE layer)."""

    def __init__(self, config, weights):
        super().__init__()
        self.sp = sp = torch_model.Spec(config)
        self.moe = torch.nn.ModuleDict()
        self.moe_names = {}  # layer -> (prefix, [(gate, up, down) names per expert])
        taken = set()
        for l in range(sp.L):
            if not sp.is_moe(l):
                continue
            m = sp.moe_prefix(l)
            names = [sp.expert_names(l, e) for e in range(sp.E)]
            w, from_names = torch_model.moe_leaves(sp, weights, l)
            taken.update(from_names)
            layer = MoE(sp.layer_config(), dtype=torch.float32)
            with torch.no_grad():
                for n, p in layer.named_parameters():
                    assert n in w, f"layer {l}: the MoE module has a parameter {n} the checkpoint lacks"
                    assert p.shape == w[n].shape, (n, p.shape, w[n].shape)
                    p.copy_(w[n])
            assert set(w) == {n for n, _ in layer.named_parameters()}, (set(w), list(layer.named_parameters()))
            self.moe[str(l)] = layer
            self.moe_names[str(l)] = (m, names)
        # Everything else as parameters named as in model.safetensors ('.' -> '/' for the registry).
        self.P = {}
        for n, t in weights.items():
            if n in taken:
                continue
            p = torch.nn.Parameter(t.to(torch.float32).clone())
            self.register_parameter(n.replace(".", "/"), p)
            self.P[n] = p

    def checkpoint(self):
        """The parameters under the names of model.safetensors (MoE stacks split per expert)."""
        out = {n: p.detach() for n, p in self.P.items()}
        for l, layer in self.moe.items():
            m, names = self.moe_names[l]
            out[m + ".gate.weight"] = layer.router_w.detach()
            for e, (g, u, dn) in enumerate(names):
                out[g], out[u], out[dn] = layer.w_gate[e].detach(), layer.w_up[e].detach(), layer.w_down[e].detach()
            if self.sp.F_shared > 0:
                for k, suffix in torch_model.SHARED_SUFFIXES.items():
                    out[m + suffix] = getattr(layer, k).detach()
        return out

    def forward(self, tokens, targets):
        sp, P = self.sp, self.P
        B, S = tokens.shape
        N = B * S
        x = P["model.embed_tokens.weight"][tokens]  # (B, S, d)
        aux = x.new_zeros(())
        routed = []
        for l in range(sp.L):
            p = f"model.layers.{l}."
            x = x + torch_model.attention(sp, P, l, torch_model.rmsnorm(x, P[p + "input_layernorm.weight"], sp.eps))
            h = torch_model.rmsnorm(x, P[p + "post_attention_layernorm.weight"], sp.eps).reshape(N, sp.d)
            if sp.is_moe(l):
                out = self.moe[str(l)](h)
                y = out.y
                aux = aux + out.aux_loss
                routed.append(list(out.stats["routed_per_expert"]))
            else:
                y = torch_model.dense_ffn(P, l, h)
            x = x + y.reshape(B, S, sp.d)
        head = P["model.embed_tokens.weight"] if sp.tie else P["lm_head.weight"]
        logits = torch_model.linear(torch_model.rmsnorm(x, P["model.norm.weight"], sp.eps), head)  # (B, S, V)
        ce_sum = F.cross_entropy(logits.reshape(N, sp.V), targets.reshape(N), reduction="sum")
        # The trainer's scales (trainer.cpp): ce_scale = 1 / (B * S * grad_accum), aux_scale = 1.
        loss = ce_sum / N + aux
        # The logged value, like the engine's loss_sum, summed in double (from the same float32 logits).
        ce_logged = F.cross_entropy(logits.detach().reshape(N, sp.V).double(), targets.reshape(N), reduction="sum")
        return loss, ce_logged, aux.detach(), routed


def torch_train(config, weights, shard_tokens, opt):
    """The PyTorch loop. Returns per-step records like metrics.jsonl's: loss, aux_loss, lr, grad_norm,
    routed (per MoE layer, per expert)."""
    model = TorchMoEModel(config, weights)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]       # matrices (the engine's decay flag)
    no_decay = [p for p in model.parameters() if p.dim() < 2]     # norm weights, biases
    adam = torch.optim.AdamW([{"params": decay, "weight_decay": opt["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}], lr=opt["lr"], betas=BETAS, eps=EPS)
    sampler = BatchSampler(shard_tokens, opt["batch_size"], opt["seq_len"], opt["seed"])
    params = list(model.parameters())
    out = []
    for step in range(opt["steps"]):
        tokens, targets = sampler.next()
        adam.zero_grad()
        loss, ce_sum, aux, routed = model(tokens, targets)
        loss.backward()
        norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        if opt["clip"] > 0 and norm > opt["clip"]:
            with torch.no_grad():
                for p in params:
                    p.grad.mul_(opt["clip"] / norm)
        lr = lr_at(step, opt["lr"], opt["min_lr_ratio"], opt["warmup"], opt["steps"])
        for g in adam.param_groups:
            g["lr"] = lr
        adam.step()
        out.append({"step": step + 1, "loss": float(ce_sum) / tokens.numel(), "aux_loss": float(aux), "lr": lr,
                    "grad_norm": norm, "routed": routed})
    return out, sampler, model.checkpoint()


# ---------------------------------------------------------------------------------------------
# The run.

def corpus_text(seed, n_docs=60):
    """Small English-like documents separated by blank lines (about 1900 tokens with the olmoe tokenizer:
    115 windows of 16, so the 128 windows of 16 steps cross into a second epoch; the 60 documents also
    give `moe train` its validation document)."""
    words = ("the a of to and in is was for on that with as it by at from this be are or an which one all "
             "moe expert router token layer model train loss step batch weight gradient learning rate sparse "
             "mixture small large fast slow data text engine python torch module sequence window epoch "
             "attention head norm value query key cache").split()
    r = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(r.randint(1, 2)):
            s = " ".join(r.choice(words) for _ in range(r.randint(4, 12)))
            sentences.append(s[0].upper() + s[1:] + r.choice([".", ".", "!", "?"]))
        docs.append(" ".join(sentences))
    return "\n\n".join(docs) + "\n"


def tokenizer_vocab(path):
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    ids = list(j["model"]["vocab"].values()) + [t["id"] for t in j.get("added_tokens", [])]
    return max(ids) + 1


def cli_train(tmp, config, weights, text):
    model_dir = os.path.join(tmp, "model")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_safetensors(os.path.join(model_dir, "model.safetensors"),
                      {n: w.to(torch.float32).numpy() for n, w in weights.items()}, {"format": "pt"})
    shutil.copy(TOKENIZER, os.path.join(model_dir, "tokenizer.json"))
    data = os.path.join(tmp, "corpus.txt")
    with open(data, "w", encoding="utf-8") as f:
        f.write(text)
    run = os.path.join(tmp, "run")
    args = [MOE, "train", "--init", model_dir, "--data", data, "--out", run, "--threads", "1", "--quiet"]
    for k, v in TRAIN.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-3000:]}")
    steps = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if j["type"] == "step":
                steps[j["step"]] = j
            elif j["type"] == "skip":
                raise AssertionError(f"moe train skipped step {j['step']}: {j['reason']}")
    assert sorted(steps) == list(range(1, STEPS + 1)), sorted(steps)
    return [steps[s] for s in range(1, STEPS + 1)], read_shard(os.path.join(run, "data", "train.bin"))


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def run_case(name, arch, overrides, tmp, verbose):
    t0 = time.time()
    config = base_config(arch, tokenizer_vocab(TOKENIZER), **overrides)
    weights = torch_model.random_weights(config, seed=11)  # float64, O(1) activations
    weights = {n: w.to(torch.float32) for n, w in weights.items()}
    os.makedirs(tmp)
    cli, shard = cli_train(tmp, config, weights, corpus_text(3))
    t1 = time.time()
    got, sampler, final = torch_train(config, weights, shard, TRAIN)
    t2 = time.time()
    failures, worst = [], 0.0
    if verbose:
        print(f"{name}: {len(shard)} training tokens, {sampler.windows} windows of {TRAIN['seq_len']} per epoch, "
              f"{TRAIN['batch_size']} per batch (epochs reached: {sampler.epoch + 1}); moe train {t1 - t0:.2f} s, "
              f"PyTorch {t2 - t1:.2f} s")
        print(f"  {'step':>4} {'moe train loss':>17} {'PyTorch loss':>17} {'rel diff':>9} {'aux rel':>9} "
              f"{'gnorm rel':>9} {'grad norm':>9} {'lr':>9}")
    for c, g in zip(cli, got):
        s = c["step"]
        d_loss, d_aux, d_norm = rel(g["loss"], c["loss"]), rel(g["aux_loss"], c["aux_loss"]), \
            rel(g["grad_norm"], c["grad_norm"])
        worst = max(worst, d_loss / LOSS_TOL(s - 1))
        if verbose:
            print(f"  {s:>4} {c['loss']:>17.10f} {g['loss']:>17.10f} {d_loss:>9.2e} {d_aux:>9.2e} {d_norm:>9.2e} "
                  f"{c['grad_norm']:>9.4f} {c['lr']:>9.3e}")
        # Routed load per expert per MoE layer: expert_load is the fraction of the T * k assignments.
        T_k = TRAIN["batch_size"] * TRAIN["seq_len"] * config["num_experts_per_tok"]
        cli_routed = [[round(f * T_k) for f in row] for row in c["expert_load"]]
        if cli_routed != g["routed"]:
            failures.append(f"step {s}: routed load per expert differs (moe train {cli_routed}, PyTorch "
                            f"{g['routed']}): the routing differs (a router's input came within rounding of a "
                            f"top-k tie, or the model or batch differs)")
        if rel(g["lr"], c["lr"]) > 1e-12:
            failures.append(f"step {s}: lr {g['lr']} != moe train's {c['lr']} (schedule)")
        if not d_loss <= LOSS_TOL(s - 1):
            failures.append(f"step {s}: loss {g['loss']:.10f} vs moe train {c['loss']:.10f}: relative "
                            f"{d_loss:.2e} > {LOSS_TOL(s - 1):.1e}")
        if not d_aux <= AUX_TOL:
            failures.append(f"step {s}: aux loss {g['aux_loss']:.10g} vs {c['aux_loss']:.10g}: relative {d_aux:.2e}")
        if not d_norm <= GRAD_NORM_TOL:
            failures.append(f"step {s}: grad norm {g['grad_norm']:.10g} vs {c['grad_norm']:.10g}: "
                            f"relative {d_norm:.2e}")
    # The trained weights: the engine's final checkpoint against the PyTorch parameters.
    ck = read_safetensors(os.path.join(tmp, "run", "checkpoint", "model.safetensors"))[0]
    if set(ck) != set(final):
        failures.append(f"checkpoint tensors {sorted(set(ck) ^ set(final))} are not in both")
    w_worst, w_name = 0.0, None
    for n in sorted(set(ck) & set(final)):
        c = torch.from_numpy(ck[n].astype("float32"))
        d = float((final[n] - c).abs().max()) / max(float(c.abs().max()), 1e-30)
        if not d <= WEIGHT_TOL:  # NaN fails too
            failures.append(f"final weights: {n} differs by {d:.2e} of its largest entry (> {WEIGHT_TOL})")
        if d > w_worst:
            w_worst, w_name = d, n
    if verbose:
        print(f"  final weights: largest difference {w_worst:.2e} of the tensor's largest entry ({w_name})")
    if sampler.epoch < 1:
        failures.append(f"the run did not cross an epoch ({sampler.windows} windows): make the corpus smaller")
    if cli[-1]["loss"] > cli[0]["loss"] - 0.5:
        failures.append(f"the loss did not fall ({cli[0]['loss']:.3f} -> {cli[-1]['loss']:.3f}): not a training run")
    max_rel = max(rel(g["loss"], c["loss"]) for c, g in zip(cli, got))
    print(f"{'ok  ' if not failures else 'FAIL'} {name}: {STEPS} steps, loss {cli[0]['loss']:.4f} -> "
          f"{cli[-1]['loss']:.4f}, max relative loss difference {max_rel:.2e} ({worst:.2f} of the tolerance), "
          f"final weights {w_worst:.1e}, {time.time() - t0:.1f} s")
    for f in failures[:10]:
        print("    " + f)
    return not failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="print both loss sequences")
    ap.add_argument("--keep", help="keep the model and run directories here")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    a = ap.parse_args()
    # One thread each (the engine's results do not depend on it): on a model this small, thread pools only
    # add synchronisation, which costs seconds on a busy machine.
    moe_cpp.set_num_threads(1)
    torch.set_num_threads(1)
    if not os.path.isfile(MOE):
        sys.exit(f"FAILED: the moe binary {MOE} is missing (build it, or set MOE_BIN)")
    # moe::Rng is Philox-4x32-10: Random123's known-answer vectors.
    assert philox4x32((0, 0, 0, 0), 0) == (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)
    assert philox4x32((M32,) * 4, (M32 << 32) | M32) == (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)
    assert philox4x32((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0x299f31d0 << 32) | 0xa4093822) == \
        (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)
    print(f"torch {torch.__version__}, {sys.executable}")
    tmp = a.keep or tempfile.mkdtemp(prefix="moe_py_trainseq_")
    ok = True
    try:
        for name, (arch, overrides) in CASES.items():
            if a.filter in name:
                ok = run_case(name, arch, overrides, os.path.join(tmp, name), a.verbose) and ok
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if not ok:
        print("FAILED")
        sys.exit(1)
    print("passed")


if __name__ == "__main__":
    main()
