"""Run the sparse MoE blocks of a Hugging Face transformers model with the engine's MoE layer.

    import moe_cpp.torch
    model = AutoModelForCausalLM.from_pretrained(...)       # Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE
    moe_cpp.torch.patch(model)                              # in place; returns model
    opt = torch.optim.AdamW(model.parameters())             # make the optimizer after patching
    ...                                                     # train / generate as before
    moe_cpp.torch.unpatch(model)                            # the original blocks, trained weights

Supported: the transformers 5 blocks MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock,
Qwen3MoeSparseMoeBlock and OlmoeSparseMoeBlock (fused experts: gate_up_proj (E, 2F, d) = [gate; up],
down_proj (E, d, F)), SiLU experts (SwiGLU). Each is replaced by an EngineSparseMoeBlock that computes
the same function (softmax router, top-k, renormalised for Mixtral and per norm_topk_prob otherwise;
Qwen2-MoE's shared expert with its sigmoid gate; Mixtral's router_jitter_noise in training, drawn from
torch's generator exactly as transformers draws it) and returns what the original block returns.

Weights: the router weight, down_proj and Qwen2-MoE's shared expert weights are the model's own
Parameter objects (the engine reads their memory, no copy). gate_up_proj is split once, at patch
time, into two contiguous Parameters experts.w_gate and experts.w_up (E, F, d) and the original
tensor's memory is released; state_dict() still has `...experts.gate_up_proj` in transformers'
layout (a state-dict hook concatenates on save, load_state_dict splits on load), so
save_pretrained / load_state_dict / from a transformers state dict keep working. Create optimizers
after patch(): the model's parameter list changes (w_gate, w_up instead of gate_up_proj).

Router logits (output_router_logits=True, the load-balancing aux loss): when transformers asks for
them the block also calls the model's own router module (kept as block.gate, so its recording hooks
fire) and those differentiable logits feed transformers' loss, as in the unpatched model.

The engine runs on CPU in float32 or float64: patch() raises ValueError for a block whose weights are
another dtype or on another device, and a patched block raises at forward if its weights were moved
to one later (unpatch() first). Not supported: transformers 4.x per-expert nn.Linear layouts,
torch.compile of the patched block.
"""
import json
import warnings
from typing import Any, Dict, Optional

import torch
from torch import nn

# block class name -> architecture
_BLOCKS = {
    "MixtralSparseMoeBlock": "mixtral",
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "Qwen3MoeSparseMoeBlock": "qwen3_moe",
    "OlmoeSparseMoeBlock": "olmoe",
}
_MODEL_TYPES = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}
_SILU = {"SiLUActivation", "SiLU"}


def _mt():
    """moe_cpp.torch, imported when first needed (it imports this module at its end)."""
    from . import torch as mt
    return mt


def _router_logits_requested() -> Optional[bool]:
    """Whether transformers' output capture is collecting router logits now (None: unknown API)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except Exception:  # pragma: no cover - other transformers versions
        return None
    c = _active_collector.get()
    return c is not None and "router_logits" in c


def _check_weight(t: torch.Tensor, what: str, block_name: str):
    if t.device.type != "cpu":
        raise ValueError(f"moe_cpp.torch.patch: {block_name}: {what} is on {t.device}; the engine's layer runs on "
                         "CPU tensors (move the model to CPU first)")
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"moe_cpp.torch.patch: {block_name}: {what} is {t.dtype}; the engine's layer takes "
                         "torch.float32 or torch.float64 (e.g. model.float() first)")


def _save_hook(module, state_dict, prefix, local_metadata):
    """state_dict(): w_gate, w_up -> gate_up_proj (E, 2F, d) = [gate; up], transformers' layout and key order."""
    g = state_dict.pop(prefix + "w_gate", None)
    u = state_dict.pop(prefix + "w_up", None)
    if g is None or u is None:
        return
    state_dict[prefix + "gate_up_proj"] = torch.cat([g.detach(), u.detach()], dim=1)
    if hasattr(state_dict, "move_to_end") and prefix + "down_proj" in state_dict:
        state_dict.move_to_end(prefix + "down_proj")


def _load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """load_state_dict(): gate_up_proj (E, 2F, d) -> w_gate, w_up (copied into the existing Parameters)."""
    key = prefix + "gate_up_proj"
    if key not in state_dict:
        return
    t = state_dict.pop(key)
    E, F, d = module.num_experts, module.intermediate_dim, module.hidden_dim
    if tuple(t.shape) != (E, 2 * F, d):
        error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(t.shape)} from checkpoint, "
                          f"the shape in current model is {(E, 2 * F, d)}.")
        return
    state_dict[prefix + "w_gate"] = t[:, :F].contiguous()
    state_dict[prefix + "w_up"] = t[:, F:].contiguous()


class EngineExperts(nn.Module):
    """The experts of a patched block: w_gate, w_up (E, F, d) contiguous (split from gate_up_proj once)
    and down_proj (E, d, F), the original Parameter. state_dict() shows gate_up_proj, not w_gate/w_up."""

    def __init__(self, experts: nn.Module):
        super().__init__()
        gu, dp = experts.gate_up_proj, experts.down_proj
        E, F2, d = gu.shape
        self.num_experts, self.intermediate_dim, self.hidden_dim = E, F2 // 2, d
        with torch.no_grad():  # clone: always a copy of its own, even where the slice is contiguous
            self.w_gate = nn.Parameter(gu[:, :F2 // 2].clone(memory_format=torch.contiguous_format),
                                       requires_grad=gu.requires_grad)
            self.w_up = nn.Parameter(gu[:, F2 // 2:].clone(memory_format=torch.contiguous_format),
                                     requires_grad=gu.requires_grad)
        self.down_proj = dp
        if hasattr(nn.Module, "register_state_dict_post_hook"):
            self.register_state_dict_post_hook(_save_hook)
        else:  # torch 1.x
            self._register_state_dict_hook(_save_hook)
        if hasattr(nn.Module, "register_load_state_dict_pre_hook"):
            self.register_load_state_dict_pre_hook(_load_pre_hook)
        else:  # torch 1.x
            self._register_load_state_dict_pre_hook(_load_pre_hook, with_module=True)

    @property
    def gate_up_proj(self) -> torch.Tensor:
        """transformers' fused (E, 2F, d) [gate; up], a new tensor (differentiable); writing to it changes nothing."""
        return torch.cat([self.w_gate, self.w_up], dim=1)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, intermediate_dim={self.intermediate_dim}"


class _Engine:
    """What moe_cpp.torch._MoEFunction needs of a module: the engine layer and the last forward."""

    def __init__(self, config: Dict[str, Any], dtype: torch.dtype):
        mt = _mt()
        self._core = mt._core.Layer(json.dumps(config), mt._DTYPES[dtype])
        self._last_forward = None
        self.router_bias = torch.zeros(config["n_experts"], dtype=dtype)  # use_bias is off: selection bias 0
        self.versions = None


class EngineSparseMoeBlock(nn.Module):
    """A transformers sparse MoE block computed by the engine's layer (made by moe_cpp.torch.patch).

    Submodules keep the original names, so parameter and state-dict keys are unchanged: gate (the
    model's router module itself), experts (EngineExperts), and for Qwen2-MoE shared_expert and
    shared_expert_gate (the original modules). forward(hidden_states (B, S, d)) -> (B, S, d)."""

    def __init__(self, block: nn.Module, arch: str, bf16_compute: bool = False):
        super().__init__()
        name = type(block).__name__
        gate, experts = block.gate, block.experts
        E, F2, d = experts.gate_up_proj.shape
        F = F2 // 2
        if tuple(gate.weight.shape) != (E, d) or tuple(experts.down_proj.shape) != (E, d, F):
            raise ValueError(f"moe_cpp.torch.patch: {name}: unexpected weight shapes router {tuple(gate.weight.shape)}, "
                             f"gate_up_proj {(E, F2, d)}, down_proj {tuple(experts.down_proj.shape)}")
        if getattr(experts, "has_bias", False) or type(experts.act_fn).__name__ not in _SILU:
            raise ValueError(f"moe_cpp.torch.patch: {name}: only bias-free SiLU-gated (SwiGLU) experts are supported, "
                             f"got activation {type(experts.act_fn).__name__}")
        self.arch = arch
        self.top_k = int(gate.top_k)
        normalize = True if arch == "mixtral" else bool(gate.norm_topk_prob)
        self.jitter_noise = float(getattr(block, "jitter_noise", 0.0) or 0.0)
        cfg = {"d_model": int(d), "d_ff": int(F), "n_experts": int(E), "activation": "swiglu",
               "router": {"score": "softmax", "order": "score_then_topk", "top_k": self.top_k,
                          "normalize": normalize}}
        subs = {"gate": gate, "experts": EngineExperts(experts)}
        if arch == "qwen2_moe":
            se, sg = block.shared_expert, block.shared_expert_gate
            if type(se.act_fn).__name__ not in _SILU or getattr(sg, "bias", None) is not None or any(
                    getattr(se, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")):
                raise ValueError(f"moe_cpp.torch.patch: {name}: the shared expert must be a bias-free SwiGLU MLP")
            cfg.update(n_shared_experts=1, d_ff_shared=int(se.gate_proj.weight.shape[0]), shared_gate=True)
            subs.update(shared_expert=se, shared_expert_gate=sg)
        for n in block._modules:  # the original block's order: state_dict keys in the same order
            if n in subs:
                setattr(self, n, subs.pop(n))
        for n, m in subs.items():
            setattr(self, n, m)
        self.engine_config = cfg
        self.bf16_compute = bool(bf16_compute)
        self._engines: Dict[torch.dtype, _Engine] = {}
        self.__dict__["_original"] = block  # not a submodule: keeps unpatch() possible, not in state_dict

    def extra_repr(self) -> str:
        c = self.engine_config
        return (f"arch={self.arch}, d_model={c['d_model']}, d_ff={c['d_ff']}, n_experts={c['n_experts']}, "
                f"top_k={self.top_k}, normalize={c['router']['normalize']}, shared={c.get('n_shared_experts', 0)}")

    def _params(self):
        """The engine's parameters, in moe_cpp.torch._PARAM_NAMES order (router_bias filled in later)."""
        p = {"router_w": self.gate.weight, "w_gate": self.experts.w_gate, "w_up": self.experts.w_up,
             "w_down": self.experts.down_proj}
        if self.arch == "qwen2_moe":
            se = self.shared_expert
            p.update(shared_w_gate=se.gate_proj.weight, shared_w_up=se.up_proj.weight,
                     shared_w_down=se.down_proj.weight, shared_gate_w=self.shared_expert_gate.weight)
        return p

    def _engine(self, dtype: torch.dtype) -> _Engine:
        e = self._engines.get(dtype)
        if e is None:
            e = _Engine(self.engine_config, dtype)
            if self.bf16_compute and dtype == torch.float32:
                e._core.set_bf16_compute(True)
            self._engines[dtype] = e
        return e

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mt = _mt()
        p = self._params()
        w = p["w_gate"]
        for n, t in p.items():
            if t.device.type != "cpu" or t.dtype != w.dtype or t.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"moe_cpp.torch: a patched {self.arch} MoE block runs on CPU float32/float64 weights "
                                 f"of one dtype; {n} is {t.dtype} on {t.device} (moe_cpp.torch.unpatch(model) first)")
        x = hidden_states
        if x.device.type != "cpu" or x.dtype != w.dtype:
            raise ValueError(f"moe_cpp.torch: a patched {self.arch} MoE block got hidden states {x.dtype} on {x.device}; "
                             f"its weights are {w.dtype} on cpu")
        lead, d = x.shape[:-1], x.shape[-1]
        if self.training and self.jitter_noise > 0:  # Mixtral: router and experts see the jittered input
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        x2 = x.reshape(-1, d)
        wanted = _router_logits_requested()
        if wanted or (wanted is None and len(self.gate._forward_hooks) > 0):
            self.gate(x2)  # the model's router: its hooks record the (differentiable) logits for the aux loss
        e = self._engine(w.dtype)
        p["router_bias"] = e.router_bias
        params = [p.get(n) for n in mt._PARAM_NAMES]
        refresh = False
        if self.bf16_compute and e._core.bf16_compute:
            v = tuple((t.data_ptr(), t._version) for t in params if t is not None)
            refresh, e.versions = v != e.versions, v
        opts = {"training": self.training, "step": 0, "seed": 0, "token_ids": None, "check_finite": False,
                "refresh_bf16": refresh}
        y, _ = mt._MoEFunction.apply(e, opts, x2, *params)
        if not (torch.is_grad_enabled() and (x2.requires_grad or any(t is not None and t.requires_grad
                                                                      for t in params))):
            e._last_forward.release()  # no backward will come: drop the activations now
        e._last_forward = None
        return y.reshape(*lead, d)


def _blocks(model: nn.Module):
    """(parent, attribute name, block) for every supported sparse MoE block."""
    out = []
    for parent in model.modules():
        for name, child in parent.named_children():
            arch = _BLOCKS.get(type(child).__name__)
            if arch is not None:
                out.append((parent, name, child, arch))
    return out


def patch(model: nn.Module, *, bf16_compute: bool = False) -> nn.Module:
    """Replace, in place, the sparse MoE blocks of a transformers Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE
    model by EngineSparseMoeBlock (same function, the engine's CPU layer). Returns the model.

    bf16_compute: the experts' GEMMs in bf16 with fp32 sums (float32 models only; not exact).
    Raises ValueError naming the class for a model without such blocks (other architectures,
    transformers 4.x per-expert layouts) and for weights not float32/float64 on CPU. Patching a
    patched model is a no-op. Create optimizers after patching."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"moe_cpp.torch.patch: expected a torch.nn.Module, got {type(model).__name__}")
    found = _blocks(model)
    already = any(isinstance(m, EngineSparseMoeBlock) for m in model.modules())
    if not found:
        if already:
            return model
        mtype = getattr(getattr(model, "config", None), "model_type", None)
        why = (" (transformers 4.x per-expert layout? moe_cpp needs transformers >= 5's fused experts)"
               if mtype in _MODEL_TYPES else "")
        raise ValueError(f"moe_cpp.torch.patch: {type(model).__name__} (model_type {mtype!r}) has no supported sparse "
                         f"MoE block{why}; supported: {', '.join(sorted(_BLOCKS))} (Mixtral, Qwen2-MoE, Qwen3-MoE, "
                         "OLMoE in transformers 5)")
    for _, _, block, _ in found:  # check everything before changing anything
        name = type(block).__name__
        for pname, t in block.named_parameters():
            _check_weight(t, pname, name)
    if bf16_compute and any(b.experts.gate_up_proj.dtype != torch.float32 for _, _, b, _ in found):
        warnings.warn("moe_cpp.torch.patch: bf16_compute applies to float32 blocks only", stacklevel=2)
    new = [(parent, name, block, EngineSparseMoeBlock(block, arch, bf16_compute)) for parent, name, block, arch in found]
    for parent, name, block, eng in new:
        eng.train(block.training)
        setattr(parent, name, eng)
        gu = block.experts.gate_up_proj
        gu.data = torch.empty(0, dtype=gu.dtype)  # the copy lives in w_gate / w_up now
        gu.grad = None
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Put the original transformers blocks back, with the current (trained) weights: gate_up_proj gets
    [w_gate; w_up], the shared modules and Parameters are the ones the patched model used. Returns the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, EngineSparseMoeBlock):
                continue
            orig = child._original
            ex = orig.experts
            orig.gate = child.gate
            if child.arch == "qwen2_moe":
                orig.shared_expert, orig.shared_expert_gate = child.shared_expert, child.shared_expert_gate
            ex.down_proj = child.experts.down_proj
            gu = ex.gate_up_proj
            with torch.no_grad():
                gu.data = torch.cat([child.experts.w_gate.detach(), child.experts.w_up.detach()], dim=1)
            gu.requires_grad_(child.experts.w_gate.requires_grad)
            orig.train(child.training)
            setattr(parent, name, orig)
    return model
