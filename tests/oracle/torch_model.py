"""A decoder-only MoE transformer in float64 PyTorch (autograd), written from the conventions of the
Hugging Face modeling code of the four layouts the engine supports: mixtral, qwen2_moe, qwen3_moe, olmoe.

    x = embed[tokens]
    per layer:  x = x + o_proj(attention(rope(qk_norm(q_proj n)), rope(qk_norm(k_proj n)), v_proj n)),
                n = rmsnorm(x, input_layernorm)
                x = x + ffn(rmsnorm(x, post_attention_layernorm))      MoE block or dense SwiGLU
    logits = rmsnorm(x, norm) @ lm_head.T                              (lm_head = embed when tied)

- RMSNorm (LlamaRMSNorm): w * x / sqrt(mean(x^2) + eps).
- RoPE (rotate_half): inv_freq = theta^(-2i/hd), cos/sin of pos * inv_freq repeated twice, positions 0..S-1
  in every sequence; x * cos + rotate_half(x) * sin.
- Attention: causal, scale 1/sqrt(hd), key/value heads repeated (repeat_kv: query head h reads kv head
  h // (hq / hkv)). qwen2_moe: q/k/v biases. qwen3_moe: q_norm/k_norm, RMSNorm over head_dim of each head,
  before RoPE. olmoe: q_norm/k_norm over the whole projection (hq*hd and hkv*hd) before the split into heads.
- Dense layers (qwen only): layer l is MoE when l is not in mlp_only_layers and (l + 1) % decoder_sparse_step
  == 0; a dense FFN is down(silu(gate(x)) * up(x)) of width intermediate_size.
- The MoE block is torch_moe.layer (docs/MOE_LAYER.md, independent of the engine) on the B*S tokens of the
  batch: softmax scores, top-k of the scores, renormalised when norm_topk_prob (always for mixtral),
  aux_coef = router_aux_loss_coef, z_coef = router_z_loss_coef; qwen2_moe adds the shared expert gated by
  sigmoid(shared_expert_gate(x)). Router options of the "moe_cpp" key of config.json are passed through
  (the engine's extension: same field names as the layer spec).

Loss = ce_scale * sum of cross-entropies over targets >= 0 + aux_scale * sum over MoE layers of the
layer's aux + seq_aux + z losses. Parameters are named as in model.safetensors (one tensor per expert).
`python3 torch_model.py` runs a self-test (gradcheck, causality, tied head). Runs with torch 1.13.
"""
import math

import torch
import torch.nn.functional as F

import torch_moe

ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
SELECTION_BIAS = ".gate.e_score_correction_bias"  # the "moe_cpp" router's selection bias: no gradient


class Spec:
    """The fields of a Hugging Face config.json (a dict) that the model uses, with their defaults."""

    def __init__(self, c):
        self.arch = c["model_type"]
        if self.arch not in ARCHS:
            raise ValueError(f"unsupported model_type {self.arch!r}")
        self.V, self.d, self.L = c["vocab_size"], c["hidden_size"], c["num_hidden_layers"]
        self.hq = c["num_attention_heads"]
        self.hkv = c.get("num_key_value_heads") or self.hq
        self.hd = c.get("head_dim") or self.d // self.hq
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.theta = c.get("rope_theta", 10000.0)
        self.tie = c.get("tie_word_embeddings", False)
        mixtral_like = self.arch in ("mixtral", "olmoe")
        self.E = c["num_local_experts"] if self.arch == "mixtral" else c["num_experts"]
        self.k = c["num_experts_per_tok"]
        self.normalize = True if self.arch == "mixtral" else c.get("norm_topk_prob", False)
        self.F_dense = c.get("intermediate_size", 0)
        self.F_expert = self.F_dense if mixtral_like else c["moe_intermediate_size"]
        self.F_shared = c.get("shared_expert_intermediate_size", 0) if self.arch == "qwen2_moe" else 0
        self.sparse_step = c.get("decoder_sparse_step", 1)
        self.mlp_only = c.get("mlp_only_layers", []) if not mixtral_like else []
        self.aux_coef = c.get("router_aux_loss_coef", 0.001)
        self.z_coef = c.get("router_z_loss_coef", 0.0)
        self.extra = c.get("moe_cpp", {})
        self.qk_norm = {"qwen3_moe": "per_head", "olmoe": "full"}.get(self.arch)
        self.bias = self.arch == "qwen2_moe"

    def is_moe(self, l):
        if self.arch in ("mixtral", "olmoe"):
            return True
        return l not in self.mlp_only and self.E > 0 and (l + 1) % self.sparse_step == 0

    def moe_prefix(self, l):
        return f"model.layers.{l}." + ("block_sparse_moe" if self.arch == "mixtral" else "mlp")

    def expert_names(self, l, e):
        """Names of expert e's gate, up and down projections in layer l."""
        p = f"{self.moe_prefix(l)}.experts.{e}."
        if self.arch == "mixtral":
            return p + "w1.weight", p + "w3.weight", p + "w2.weight"
        return p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"

    def layer_config(self):
        """The MoE block as a layer config of docs/MOE_LAYER.md (torch_moe's input)."""
        router = dict(self.extra.get("router", {}), top_k=self.k, normalize=self.normalize)
        balance = dict(self.extra.get("balance", {}), aux_coef=self.aux_coef, z_coef=self.z_coef)
        cfg = {"d_model": self.d, "d_ff": self.F_expert, "n_experts": self.E, "activation": "swiglu",
               "router": router, "balance": balance}
        if self.F_shared > 0:
            cfg.update(n_shared_experts=1, d_ff_shared=self.F_shared, shared_gate=True)
        return cfg

    def shapes(self):
        """{name: shape} of every tensor of model.safetensors."""
        d, hd = self.d, self.hd
        dq, dk = self.hq * hd, self.hkv * hd
        s = {"model.embed_tokens.weight": (self.V, d), "model.norm.weight": (d,)}
        if not self.tie:
            s["lm_head.weight"] = (self.V, d)
        for l in range(self.L):
            p = f"model.layers.{l}."
            s.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                      p + "self_attn.q_proj.weight": (dq, d), p + "self_attn.k_proj.weight": (dk, d),
                      p + "self_attn.v_proj.weight": (dk, d), p + "self_attn.o_proj.weight": (d, dq)})
            if self.bias:
                s.update({p + "self_attn.q_proj.bias": (dq,), p + "self_attn.k_proj.bias": (dk,),
                          p + "self_attn.v_proj.bias": (dk,)})
            if self.qk_norm == "per_head":
                s.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
            elif self.qk_norm == "full":
                s.update({p + "self_attn.q_norm.weight": (dq,), p + "self_attn.k_norm.weight": (dk,)})
            if self.is_moe(l):
                m = self.moe_prefix(l)
                s[m + ".gate.weight"] = (self.E, d)
                for e in range(self.E):
                    g, u, dn = self.expert_names(l, e)
                    s.update({g: (self.F_expert, d), u: (self.F_expert, d), dn: (d, self.F_expert)})
                if self.F_shared > 0:
                    fs = self.F_shared
                    s.update({m + ".shared_expert.gate_proj.weight": (fs, d),
                              m + ".shared_expert.up_proj.weight": (fs, d),
                              m + ".shared_expert.down_proj.weight": (d, fs),
                              m + ".shared_expert_gate.weight": (1, d)})
                if self.extra.get("router", {}).get("use_bias"):
                    s[m + ".gate.e_score_correction_bias"] = (self.E,)
            else:
                f = self.F_dense
                s.update({p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                          p + "mlp.down_proj.weight": (d, f)})
        return s


# ---------------------------------------------------------------------------------------------
# Blocks (Hugging Face formulas).

def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(S, hd, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.arange(S, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def linear(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def attention(sp, P, l, h):
    """h (B, S, d) -> o_proj(attention) (B, S, d)."""
    B, S, _ = h.shape
    p = f"model.layers.{l}.self_attn."
    q = linear(h, P[p + "q_proj.weight"], P.get(p + "q_proj.bias"))  # (B, S, hq*hd)
    k = linear(h, P[p + "k_proj.weight"], P.get(p + "k_proj.bias"))  # (B, S, hkv*hd)
    v = linear(h, P[p + "v_proj.weight"], P.get(p + "v_proj.bias"))
    if sp.qk_norm == "full":  # olmoe: over the whole projection
        q, k = rmsnorm(q, P[p + "q_norm.weight"], sp.eps), rmsnorm(k, P[p + "k_norm.weight"], sp.eps)
    q = q.view(B, S, sp.hq, sp.hd)
    k = k.view(B, S, sp.hkv, sp.hd)
    v = v.view(B, S, sp.hkv, sp.hd)
    if sp.qk_norm == "per_head":  # qwen3_moe: each head over head_dim
        q, k = rmsnorm(q, P[p + "q_norm.weight"], sp.eps), rmsnorm(k, P[p + "k_norm.weight"], sp.eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, S, hd)
    cos, sin = rope_cos_sin(S, sp.hd, sp.theta, h.dtype)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    n_rep = sp.hq // sp.hkv  # repeat_kv
    k = k[:, :, None].expand(B, sp.hkv, n_rep, S, sp.hd).reshape(B, sp.hq, S, sp.hd)
    v = v[:, :, None].expand(B, sp.hkv, n_rep, S, sp.hd).reshape(B, sp.hq, S, sp.hd)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(sp.hd)  # (B, hq, S, S)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    s = s.masked_fill(~causal, float("-inf"))
    o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, S, sp.hq * sp.hd)
    return linear(o, P[p + "o_proj.weight"])


SHARED_SUFFIXES = {"shared_w_gate": ".shared_expert.gate_proj.weight", "shared_w_up": ".shared_expert.up_proj.weight",
                   "shared_w_down": ".shared_expert.down_proj.weight", "shared_gate_w": ".shared_expert_gate.weight"}


def moe_leaves(sp, P, l):
    """MoE layer l's tensors of the checkpoint dict P under torch_moe's names (experts stacked), and
    the checkpoint names they were taken from."""
    m = sp.moe_prefix(l)
    names = [sp.expert_names(l, e) for e in range(sp.E)]
    leaves = {"router_w": P[m + ".gate.weight"],
              "w_gate": torch.stack([P[g] for g, _, _ in names]),    # (E, F, d)
              "w_up": torch.stack([P[u] for _, u, _ in names]),      # (E, F, d)
              "w_down": torch.stack([P[dn] for _, _, dn in names])}  # (E, d, F)
    taken = [m + ".gate.weight"] + [n for ns in names for n in ns]
    if sp.F_shared > 0:
        for k, suffix in SHARED_SUFFIXES.items():
            leaves[k] = P[m + suffix]
            taken.append(m + suffix)
    return leaves, taken


def moe_block(sp, P, l, h):
    """h (N, d) -> (y (N, d), (aux, seq_aux, z, entropy), torch_moe's detached outputs)."""
    m = sp.moe_prefix(l)
    leaves, _ = moe_leaves(sp, P, l)
    bias = P.get(m + ".gate.e_score_correction_bias")
    return torch_moe.layer(sp.layer_config(), leaves, h, None if bias is None else bias.detach())


def dense_ffn(P, l, h):
    p = f"model.layers.{l}.mlp."
    return linear(F.silu(linear(h, P[p + "gate_proj.weight"])) * linear(h, P[p + "up_proj.weight"]),
                  P[p + "down_proj.weight"])


def model_loss(config, P, tokens, targets, ce_scale=1.0, aux_scale=1.0):
    """The loss (0-dim, differentiable in the tensors of P) and the detached outputs: loss_sum, count,
    aux_loss, logits (B*S, V), per MoE layer l 'moe.l.routed_per_expert', 'moe.l.loss', and the routing
    ('routing': {l: expert ids}), 'margin' (smallest relative gap at any selection decision)."""
    sp = Spec(config)
    B, S = tokens.shape
    N = B * S
    x = P["model.embed_tokens.weight"][tokens.long()]  # (B, S, d)
    out, aux_total, routing, margin = {}, x.sum() * 0.0, {}, math.inf
    for l in range(sp.L):
        p = f"model.layers.{l}."
        x = x + attention(sp, P, l, rmsnorm(x, P[p + "input_layernorm.weight"], sp.eps))
        h = rmsnorm(x, P[p + "post_attention_layernorm.weight"], sp.eps).reshape(N, sp.d)
        if sp.is_moe(l):
            y, losses, mo = moe_block(sp, P, l, h)
            layer_loss = sum(losses)
            aux_total = aux_total + layer_loss
            out[f"moe.{l}.routed_per_expert"] = mo["routed_per_expert"]
            out[f"moe.{l}.loss"] = layer_loss.detach()
            routing[l] = mo["expert"]
            margin = min(margin, mo["margin"])
        else:
            y = dense_ffn(P, l, h)
        x = x + y.reshape(B, S, sp.d)
    head = P["model.embed_tokens.weight"] if sp.tie else P["lm_head.weight"]
    logits = linear(rmsnorm(x, P["model.norm.weight"], sp.eps), head).reshape(N, sp.V)
    t = targets.reshape(N).long()
    counted = t >= 0
    ce = F.cross_entropy(logits[counted], t[counted], reduction="sum")
    loss = ce_scale * ce + aux_scale * aux_total
    out.update(loss_sum=ce.detach(), count=counted.sum().to(torch.int64), aux_loss=aux_total.detach(),
               logits=logits.detach(), routing=routing, margin=margin)
    return loss, out


def forward_backward(config, weights, tokens, targets, ce_scale=1.0, aux_scale=1.0, dtype=torch.float64):
    """Outputs of model_loss plus 'grads': {name: gradient} for every tensor of `weights` (as named in
    model.safetensors) but the selection bias, which has none; evaluated in `dtype` from the given values."""
    P = {n: w.detach().to(dtype).clone().requires_grad_(not n.endswith(SELECTION_BIAS))
         for n, w in weights.items()}
    loss, out = model_loss(config, P, tokens, targets, ce_scale, aux_scale)
    loss.backward()
    out["grads"] = {n: (w.grad if w.grad is not None else torch.zeros_like(w)) for n, w in P.items()
                    if w.requires_grad}
    return out


# ---------------------------------------------------------------------------------------------
# Random weights and a self-test.

def random_weights(config, seed):
    """float64 weights of O(1) activations: matrices N(0, 1/fan_in), embeddings N(0, 1), norm weights
    1 + N(0, 0.2^2), biases N(0, 0.1^2), the router N(0, 1/d), a selection bias N(0, 0.05^2)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in Spec(config).shapes().items():
        z = torch.randn(*shape, generator=g, dtype=torch.float64)
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            out[name] = 1.0 + 0.2 * z
        elif name.endswith(".bias"):
            out[name] = 0.1 * z
        elif name.endswith("e_score_correction_bias"):
            out[name] = 0.05 * z
        elif name == "model.embed_tokens.weight":
            out[name] = z
        else:
            out[name] = z / math.sqrt(shape[1])
    return out


def tiny_config(arch, **kw):
    c = {"model_type": arch, "vocab_size": 13, "hidden_size": 8, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 6, "num_experts_per_tok": 2,
         "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "router_aux_loss_coef": 0.3, "router_z_loss_coef": 0.1}
    if arch == "mixtral":
        c["num_local_experts"] = 4
    else:
        c.update(num_experts=4, norm_topk_prob=True)
    if arch in ("qwen2_moe", "qwen3_moe"):
        c.update(moe_intermediate_size=5, mlp_only_layers=[0], head_dim=4)
    if arch == "qwen2_moe":
        c["shared_expert_intermediate_size"] = 7
    c.update(kw)
    return c


def selftest():
    def check(name, ok):
        print(("ok    " if ok else "FAIL  ") + name)
        if not ok:
            raise AssertionError(name)

    tokens = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], dtype=torch.int32)
    targets = torch.tensor([[1, 4, 1, 5, 9], [2, 6, -1, 3, 5]], dtype=torch.int32)
    for i, arch in enumerate(ARCHS):
        cfg = tiny_config(arch, tie_word_embeddings=(i % 2 == 1))
        w = random_weights(cfg, 10 + i)
        names = list(w)
        leaves = [w[n].clone().requires_grad_(True) for n in names]

        def loss_of(*ws):
            return model_loss(cfg, dict(zip(names, ws)), tokens, targets, 0.2, 0.7)[0]

        check(f"gradcheck {arch}", torch.autograd.gradcheck(loss_of, tuple(leaves), eps=1e-6, atol=1e-7,
                                                            fast_mode=True))
        out = forward_backward(cfg, w, tokens, targets)
        check(f"count {arch}", int(out["count"]) == 9)
        changed = tokens.clone()
        changed[:, 3:] = 0  # later tokens cannot change earlier logits (causal attention; the router of
        # a token sees only that token, so routing of earlier tokens is unchanged too)
        out2 = forward_backward(cfg, w, changed, targets)
        keep = torch.tensor([s < 3 for _ in range(2) for s in range(5)])
        check(f"causal {arch}", torch.allclose(out["logits"][keep], out2["logits"][keep], atol=1e-12))
        check(f"no gradient for unused embedding rows {arch}",
              i % 2 == 1 or float(out["grads"]["model.embed_tokens.weight"][[0, 7, 8]].abs().max()) == 0.0)
    cfg = tiny_config("olmoe", tie_word_embeddings=True)
    w = random_weights(cfg, 3)
    w2 = dict(w, **{"lm_head.weight": w["model.embed_tokens.weight"].clone()})
    cfg2 = dict(cfg, tie_word_embeddings=False)
    a, b = forward_backward(cfg, w, tokens, targets), forward_backward(cfg2, w2, tokens, targets)
    check("tied head = untied head with a copy; its gradient is the sum",
          torch.allclose(a["logits"], b["logits"], atol=1e-13) and torch.allclose(
              a["grads"]["model.embed_tokens.weight"],
              b["grads"]["model.embed_tokens.weight"] + b["grads"]["lm_head.weight"], atol=1e-12))
    print("torch_model self-test passed")


if __name__ == "__main__":
    selftest()
