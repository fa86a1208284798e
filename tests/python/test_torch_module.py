"""moe_cpp.torch.MoE against the PyTorch oracle of the layer (tests/oracle/torch_moe.py).

For each router kind and option the module's output, balancing loss and every gradient (x and each
parameter, through torch autograd) equal the oracle's in float64 and stay within float32 rounding
in float32; torch.autograd.gradcheck passes in double; bad input raises a clear error.
Run: PYTHONPATH=build/python python3 tests/python/test_torch_module.py   (torch 1.13 or 2.x)
"""
import math
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
import torch_moe  # noqa: E402

import moe_cpp  # noqa: E402
from moe_cpp.torch import MoE  # noqa: E402

BASE = {"d_model": 12, "d_ff": 10, "n_experts": 8}
VARIANTS = {
    "top2_softmax_aux_z": {"balance": {"aux_coef": 0.3, "z_coef": 0.1}},
    "normalize_scaling": {"router": {"normalize": True, "scaling": 2.0}},
    "topk_then_softmax": {"router": {"order": "topk_then_softmax", "top_k": 3}},
    "sigmoid_bias": {"router": {"score": "sigmoid", "normalize": True, "use_bias": True}},
    "group_limited": {"router": {"n_groups": 4, "topk_groups": 2, "group_score": "max"}},
    "expert_choice": {"router": {"routing": "expert_choice", "capacity_factor": 1.5}},
    "hash": {"router": {"routing": "hash", "top_k": 3, "hash_seed": 7}},
    "balanced": {"router": {"routing": "balanced", "sinkhorn_iters": 4}},
    "capacity_probs": {"router": {"capacity_factor": 0.75, "drop_policy": "probs"}},
    "gelu_shared_gate": {"activation": "gelu", "n_shared_experts": 2, "d_ff_shared": 3, "shared_gate": True},
    "swiglu_shared": {"n_shared_experts": 1, "balance": {"aux_coef": 0.1, "seq_aux_coef": 0.2, "seq_len": 5}},
    "k1": {"router": {"top_k": 1}},
    "k_equals_e": {"router": {"top_k": 8}},
    "top_p_entropy": {"router": {"top_k": 4, "top_p": 0.45, "normalize": True},
                      "balance": {"aux_coef": 0.2, "entropy_coef": 0.1}},
}
T = 15


def config(extra):
    cfg = dict(BASE, **{k: v for k, v in extra.items() if k not in ("router", "balance")})
    cfg["router"], cfg["balance"] = dict(extra.get("router", {})), dict(extra.get("balance", {}))
    return cfg


def module_for(cfg, p, dtype):
    m = MoE(cfg, dtype=dtype)
    with torch.no_grad():
        for n, t in p.items():
            getattr(m, n).copy_(t.to(dtype))
    return m


def run_module(m, x, dy, ids, dtype):
    xx = x.to(dtype).clone().requires_grad_(True)
    out = m(xx, token_ids=ids)
    loss = (out.y * dy.to(dtype)).sum() + out.aux_loss
    loss.backward()
    grads = {"d_" + n: getattr(m, n).grad for n in torch_moe.PARAM_NAMES if getattr(m, n) is not None}
    return out, xx.grad, grads


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


class OracleAgreement(unittest.TestCase):
    def check_variant(self, name, dtype, tol):
        cfg = config(VARIANTS[name])
        for seed in range(40):  # inputs whose selection is well-posed at this precision (README of oracle/)
            p, x, dy, ids = torch_moe.random_inputs(cfg, T, 1000 + seed)
            if dtype == torch.float32:
                p = {n: t.float().double() for n, t in p.items()}
                x, dy = x.float().double(), dy.float().double()
            ref = torch_moe.forward_backward(cfg, p, x, dy, ids)
            if float(ref["margin"]) > (1e-9 if dtype == torch.float64 else 1e-4):
                break
        m = module_for(cfg, p, dtype)
        out, dx, grads = run_module(m, x, dy, ids, dtype)
        with self.subTest(name=name, dtype=str(dtype)):
            self.assertLess(rel_err(out.y, ref["y"]), tol, "y")
            aux = ref["aux_loss"] + ref["seq_aux_loss"] + ref["z_loss"] + ref["entropy_loss"]
            self.assertLess(abs(float(out.aux_loss) - float(aux)), tol * max(1.0, abs(float(aux))), "aux_loss")
            self.assertLess(rel_err(dx, ref["dx"]), tol, "dx")
            for n, g in grads.items():
                self.assertIsNotNone(g, n)
                self.assertLess(rel_err(g, ref[n]), tol, n)
            self.assertEqual(list(out.stats["tokens_per_expert"]), ref["tokens_per_expert"].tolist())
            self.assertEqual(out.stats["dropped"], int(ref["dropped"]))

    def test_float64_equals_the_oracle(self):
        for name in VARIANTS:
            self.check_variant(name, torch.float64, 1e-10)

    def test_float32_within_rounding(self):
        for name in VARIANTS:
            self.check_variant(name, torch.float32, 2e-4)


class Autograd(unittest.TestCase):
    def test_gradcheck_in_double(self):
        for name in ("top2_softmax_aux_z", "swiglu_shared", "gelu_shared_gate"):
            cfg = config(VARIANTS[name])
            p, x, _, _ = torch_moe.random_inputs(cfg, 10, 7)
            m = module_for(cfg, p, torch.float64)

            def f(xv):
                out = m(xv)
                return out.y, out.aux_loss

            xx = x.clone().requires_grad_(True)
            self.assertTrue(torch.autograd.gradcheck(f, (xx,), eps=1e-6, atol=1e-7), name)

            def g(w_down, router_w):
                m._parameters["w_down"], m._parameters["router_w"] = w_down, router_w  # plain tensors
                out = m(x)
                return out.y, out.aux_loss

            wd = p["w_down"].clone().requires_grad_(True)
            rw = p["router_w"].clone().requires_grad_(True)
            self.assertTrue(torch.autograd.gradcheck(g, (wd, rw), eps=1e-6, atol=1e-7), name)

    def test_batch_shape_and_no_grad(self):
        m = MoE(d_model=12, d_ff=10, n_experts=4, top_k=2)
        x = torch.randn(2, 3, 12)
        with torch.no_grad():
            out = m(x)
        self.assertEqual(tuple(out.y.shape), (2, 3, 12))
        y2 = m(x.reshape(6, 12)).y.detach()
        self.assertTrue(torch.equal(out.y.reshape(6, 12), y2))

    def test_parameters_are_shared_not_copied(self):
        """The engine writes the selection bias of aux-loss-free balancing into the module's buffer."""
        m = MoE(d_model=12, d_ff=10, n_experts=4, top_k=1, use_bias=True, bias_update_rate=0.5)
        ptr = m.router_bias.data_ptr()
        m.train()
        m(torch.randn(32, 12))
        self.assertEqual(m.router_bias.data_ptr(), ptr)
        self.assertGreater(float(m.router_bias.abs().sum()), 0.0)
        # An in-place weight change is seen by the next forward.
        m.eval()
        x = torch.randn(5, 12)
        y0 = m(x).y.detach().clone()
        with torch.no_grad():
            m.w_down.mul_(2.0)
        self.assertTrue(torch.allclose(m(x).y, 2 * y0, rtol=1e-5, atol=1e-6))

    def test_optimizer_step_moves_the_loss(self):
        torch.manual_seed(0)
        m = MoE(d_model=16, d_ff=32, n_experts=4, top_k=2, aux_coef=0.01)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        x, target = torch.randn(64, 16), torch.randn(64, 16)
        losses = []
        for _ in range(20):
            out = m(x)
            loss = torch.nn.functional.mse_loss(out.y, target) + out.aux_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        self.assertLess(losses[-1], 0.8 * losses[0])


class Bf16Compute(unittest.TestCase):
    def test_close_to_f32_and_sees_weight_changes(self):
        torch.manual_seed(3)
        m32 = MoE(d_model=64, d_ff=96, n_experts=4, top_k=2, seed=5)
        m16 = MoE(d_model=64, d_ff=96, n_experts=4, top_k=2, seed=5, bf16_compute=True)
        x = torch.randn(40, 64)
        for step in range(2):
            outs = []
            for m in (m32, m16):
                xx = x.clone().requires_grad_(True)
                y = m(xx).y
                y.square().sum().backward()
                outs.append((y.detach(), xx.grad, m.w_up.grad.clone()))
                m.zero_grad(set_to_none=True)
            for a, b in zip(*outs):
                self.assertLess(rel_err(b, a), 3e-2)
            with torch.no_grad():  # a weight change must reach the bf16 copies
                for m in (m32, m16):
                    m.w_down.mul_(-1.5)


class BadInput(unittest.TestCase):
    def test_config_errors_name_the_field(self):
        with self.assertRaisesRegex(ValueError, "top_k"):
            MoE(d_model=8, d_ff=8, n_experts=4, top_k=5)
        with self.assertRaisesRegex(ValueError, "dtype"):
            MoE(d_model=8, d_ff=8, n_experts=4, dtype=torch.float16)
        with self.assertRaises(ValueError):
            MoE(d_model=8, d_ff=8, n_experts=4, no_such_field=1)

    def test_wrong_shapes(self):
        m = MoE(d_model=8, d_ff=8, n_experts=4)
        with self.assertRaisesRegex(ValueError, "d_model"):
            m(torch.randn(3, 7))
        m.w_up = torch.nn.Parameter(torch.randn(4, 9, 8))
        with self.assertRaisesRegex(moe_cpp.Error, "w_up"):
            m(torch.randn(3, 8))

    def test_nan_input_is_reported_when_checked(self):
        m = MoE(d_model=8, d_ff=8, n_experts=4, check_finite=True)
        x = torch.randn(3, 8)
        x[1, 2] = math.nan
        with self.assertRaises(moe_cpp.Error):
            m(x)
        self.assertTrue(torch.isfinite(m(torch.randn(3, 8)).y).all())  # the layer still works

    def test_hash_routing_needs_token_ids(self):
        m = MoE(d_model=8, d_ff=8, n_experts=4, routing="hash")
        with self.assertRaises(moe_cpp.Error):
            m(torch.randn(3, 8))
        self.assertEqual(tuple(m(torch.randn(3, 8), token_ids=torch.arange(3)).y.shape), (3, 8))

    def test_second_backward_through_a_retained_graph_gives_the_same_gradients(self):
        m = MoE(d_model=8, d_ff=8, n_experts=4, aux_coef=0.1)
        x = torch.randn(3, 8, requires_grad=True)
        out = m(x)
        (out.y.sum() + out.aux_loss).backward(retain_graph=True)
        g1, gw1 = x.grad.clone(), m.w_up.grad.clone()
        x.grad, m.w_up.grad = None, None
        (out.y.sum() + out.aux_loss).backward()
        self.assertTrue(torch.equal(x.grad, g1))
        self.assertTrue(torch.equal(m.w_up.grad, gw1))


if __name__ == "__main__":
    print(f"torch {torch.__version__}, moe_cpp {moe_cpp.__version__}")
    unittest.main(verbosity=2)
