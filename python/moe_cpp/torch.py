"""The engine's MoE layer as a PyTorch module, and `patch` for transformers models.

    from moe_cpp.torch import MoE
    moe = MoE(d_model=512, d_ff=1024, n_experts=8, top_k=2, balance={"aux_coef": 0.01})
    out = moe(x)                      # x (..., d_model), float32 or float64
    loss = task_loss(out.y) + out.aux_loss
    loss.backward()                   # gradients of x and every parameter from the engine's backward

Parameters are ordinary torch tensors (names and shapes of docs/MOE_LAYER.md: router_w (E, d),
w_gate / w_up (E, F, d), w_down (E, d, F), shared_w_* and shared_gate_w; router_bias is a buffer).
Each call hands the engine the tensors' memory through DLPack (no copies), so optimizers, in-place
updates and reassignment all work. Works with torch 1.13 and 2.x, on CPU tensors.
"""
import json
from typing import Any, Dict, NamedTuple, Optional

import torch
from torch.utils import dlpack as _dlpack

from . import _core

_PARAM_NAMES = list(_core.PARAM_NAMES)
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


class MoEOutput(NamedTuple):
    y: torch.Tensor          # same shape as x
    aux_loss: torch.Tensor   # scalar: the weighted balancing losses (aux + seq_aux + z + entropy), differentiable
    stats: Dict[str, Any]    # per-expert counts, dropped, imbalance, each loss term (floats)


def _cap(t: torch.Tensor):
    return _dlpack.to_dlpack(t.detach().contiguous())


def _tensor(cap) -> torch.Tensor:
    return _dlpack.from_dlpack(cap)


def _config(config: Optional[Dict[str, Any]], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """A config dict in the layout of docs/MOE_LAYER.md from a dict and/or keyword arguments.
    Router keys (top_k, routing, score, ...) and balance keys (aux_coef, z_coef, ...) may be given
    flat; the engine validates everything and names the first bad field."""
    cfg = json.loads(json.dumps(config or {}))
    router_keys = {"routing", "score", "order", "top_k", "normalize", "scaling", "n_groups", "topk_groups",
                   "group_score", "use_bias", "jitter_eps", "capacity_factor", "drop_policy",
                   "sinkhorn_iters", "hash_seed", "skip_threshold", "top_p", "min_k"}
    balance_keys = {"aux_coef", "seq_aux_coef", "seq_len", "z_coef", "bias_update_rate", "entropy_coef"}
    for k, v in kwargs.items():
        if k in router_keys:
            cfg.setdefault("router", {})[k] = v
        elif k in balance_keys:
            cfg.setdefault("balance", {})[k] = v
        elif k in ("router", "balance"):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    return cfg


class _MoEFunction(torch.autograd.Function):
    """y, aux_loss = layer(x; params). Backward: the engine's fused backward, with the gradient of
    aux_loss as the balancing losses' scale."""

    @staticmethod
    def forward(ctx, module, opts, x, *params):
        caps = {n: _cap(p) for n, p in zip(_PARAM_NAMES, params) if p is not None}
        fwd = module._core.forward(_cap(x), caps, **opts)
        y = _tensor(fwd.y())
        ctx.module, ctx.fwd, ctx.opts = module, fwd, opts
        ctx.save_for_backward(x, *[p if p is not None else torch.empty(0) for p in params])
        ctx.present = [p is not None for p in params]
        module._last_forward = fwd
        return y, torch.tensor(fwd.total_loss, dtype=x.dtype)

    @staticmethod
    def backward(ctx, dy, daux):
        x, *params = ctx.saved_tensors
        caps = {n: _cap(p) for n, p, ok in zip(_PARAM_NAMES, params, ctx.present) if ok}
        aux_scale = float(daux) if daux is not None else 0.0
        if dy is None:
            dy = torch.zeros_like(x)
        core = ctx.module._core
        if ctx.fwd.backward_done:
            # The engine's backward consumes its forward's activations (it writes gradients over
            # them). A second backward through the same graph (retain_graph=True, gradcheck) runs
            # the forward again on the saved inputs: same routing, same jitter stream, same values.
            opts = dict(ctx.opts, refresh_bf16=False)
            ctx.fwd = core.forward(_cap(x), caps, **opts)
            caps = {n: _cap(p) for n, p, ok in zip(_PARAM_NAMES, params, ctx.present) if ok}
        g = core.backward(ctx.fwd, _cap(dy), caps, aux_scale)
        grads = []
        for n, ok, need in zip(_PARAM_NAMES, ctx.present, ctx.needs_input_grad[3:]):
            grads.append(_tensor(g[n]) if ok and need and n in g else None)
        return (None, None, _tensor(g["dx"]), *grads)


class MoE(torch.nn.Module):
    """The engine's MoE layer (router -> experts -> combine, + shared experts) with autograd.

    MoE(config=None, *, dtype=torch.float32, seed=0, bf16_compute=False, **fields)

    config / fields: the layer config of docs/MOE_LAYER.md (d_model, d_ff, n_experts, activation,
    n_shared_experts, d_ff_shared, shared_gate, router={...}, balance={...}); router and balance keys
    may also be passed flat (top_k=2, routing="expert_choice", capacity_factor=1.25, aux_coef=0.01,
    z_coef=1e-3, use_bias=True, bias_update_rate=1e-3, ...).
    dtype: float32 (the fast path) or float64 (the engine's reference precision; gradcheck).
    seed: the engine's initialisation (normal, std 1/sqrt(fan_in)); load_state_dict replaces it.
    bf16_compute: the experts' GEMMs in bf16 with fp32 sums (training and inference; f32 only).

    forward(x, token_ids=None) -> MoEOutput(y, aux_loss, stats). token_ids (int32/int64, one per
    token) are needed by hash routing. In training mode router jitter is drawn from (seed, step),
    the step advancing with every forward; with use_bias and bias_update_rate the selection bias is
    updated after each training forward (aux-loss-free balancing).
    """

    def __init__(self, config: Optional[Dict[str, Any]] = None, *, dtype=torch.float32, seed: int = 0,
                 bf16_compute: bool = False, check_finite: bool = False, **fields):
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"moe_cpp.torch.MoE: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.config = _config(config, fields)
        self._core = _core.Layer(json.dumps(self.config), _DTYPES[dtype])
        self.config = json.loads(self._core.config_json)  # every default filled in
        self.seed = seed
        self.step = 0
        self.check_finite = check_finite
        init = {n: _tensor(c) for n, c in self._core.init_params(seed).items()}
        for n in _PARAM_NAMES:
            if n == "router_bias":
                self.register_buffer("router_bias", init[n])
            elif n in init:
                self.register_parameter(n, torch.nn.Parameter(init[n]))
            else:
                self.register_parameter(n, None)
        self._versions = None
        self._last_forward = None
        if bf16_compute:
            self._core.set_bf16_compute(True)

    @property
    def d_model(self) -> int:
        return int(self.config["d_model"])

    def extra_repr(self) -> str:
        c, r = self.config, self.config["router"]
        return (f"d_model={c['d_model']}, d_ff={c['d_ff']}, n_experts={c['n_experts']}, top_k={r['top_k']}, "
                f"routing={r['routing']}, activation={c['activation']}, shared={c['n_shared_experts']}")

    def _params(self):
        return [getattr(self, n) for n in _PARAM_NAMES]

    def _bf16_stale(self, params) -> bool:
        """bf16 copies are made again when any weight changed (data pointer or in-place version)."""
        if not self._core.bf16_compute:
            return False
        v = tuple((p.data_ptr(), p._version) for p in params if p is not None)
        stale = v != self._versions
        self._versions = v
        return stale

    def forward(self, x: torch.Tensor, token_ids: Optional[torch.Tensor] = None) -> MoEOutput:
        d = self.d_model
        if x.shape[-1] != d:
            raise ValueError(f"moe_cpp.torch.MoE: x has last dimension {x.shape[-1]}, expected d_model = {d}")
        if x.device.type != "cpu":
            raise ValueError(f"moe_cpp.torch.MoE: x is on {x.device}; the engine's layer runs on CPU tensors")
        params = self._params()
        if x.dtype != params[0].dtype:
            raise ValueError(f"moe_cpp.torch.MoE: x is {x.dtype}, the layer's parameters {params[0].dtype}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, d)
        ids = None
        if token_ids is not None:
            ids = _cap(token_ids.reshape(-1).to(torch.int32))
        opts = {"training": self.training, "step": self.step, "seed": self.seed, "token_ids": ids,
                "check_finite": self.check_finite, "refresh_bf16": self._bf16_stale(params)}
        y, aux = _MoEFunction.apply(self, opts, x2, *params)
        fwd = self._last_forward
        if not (torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad
                                                                     for p in params))):
            fwd.release()  # no backward will come: do not keep the activations
        if self.training:
            self.step += 1
            r = self.config["router"]
            if r["use_bias"] and self.config["balance"]["bias_update_rate"] > 0:
                self._core.update_bias(fwd, _cap(self.router_bias))
        return MoEOutput(y.reshape(*lead, d), aux, fwd.stats)

    def routing(self) -> Dict[str, Any]:
        """The last forward's assignments: token, expert, weight, kept (N = T·k or E·C) and the router's
        logits and scores (T, E), as torch tensors."""
        if self._last_forward is None:
            raise ValueError("moe_cpp.torch.MoE.routing: no forward has run yet")
        r = self._last_forward.routing()
        return {k: (_tensor(v) if not isinstance(v, int) else v) for k, v in r.items()}
from .hf import patch, unpatch  # noqa: E402,F401
