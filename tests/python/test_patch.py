"""moe_cpp.torch.patch / unpatch on transformers 5 Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE models.

For each architecture (the tiny random checkpoints of tests/fixtures/hf, loaded by transformers) the
patched model gives the unpatched model's logits, loss and balancing aux loss (output_router_logits)
and the gradient of every parameter (w_gate / w_up against the slices of gate_up_proj's gradient)
within float32 rounding, and in float64 within the float32 router softmax that transformers keeps;
state_dict keys and layout are transformers', load_state_dict and save_pretrained round-trip,
unpatch restores the original blocks with the trained weights, and unsupported models or dtypes
raise ValueError.
Run: PYTHONPATH=build/python <PyTorch 2.x + transformers 5 python> tests/python/test_patch.py
Exits 77 (skipped) when transformers is not importable.
"""
import copy
import os
import sys
import tempfile
import types
import unittest

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
except Exception as e:  # noqa: BLE001
    print(f"skipped: transformers is not importable here ({e})")
    sys.exit(77)
if int(transformers.__version__.split(".")[0]) < 5:
    print(f"skipped: moe_cpp.torch.patch needs transformers >= 5 (this is {transformers.__version__})")
    sys.exit(77)

import moe_cpp.torch  # noqa: E402
from moe_cpp.hf import EngineSparseMoeBlock  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hf")
ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]
ORIGINAL = {"mixtral": "MixtralSparseMoeBlock", "qwen2_moe": "Qwen2MoeSparseMoeBlock",
            "qwen3_moe": "Qwen3MoeSparseMoeBlock", "olmoe": "OlmoeSparseMoeBlock"}
torch.set_num_threads(2)


def load(arch, dtype=torch.float32, experts="eager"):
    # eager experts: transformers' reference loop (its default grouped_mm has no float64 on CPU)
    m = AutoModelForCausalLM.from_pretrained(os.path.join(FIXTURES, arch), dtype=torch.float32,
                                             attn_implementation="eager", experts_implementation=experts)
    m.config.router_aux_loss_coef = 0.1  # make the aux loss' gradient matter
    return m.to(dtype)


def batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=g)
    return ids


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def run(model, ids, backward=True):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids, output_router_logits=True)
    if backward:
        out.loss.backward()
    return out


def grads(model):
    """name -> gradient in transformers' layout (w_gate / w_up put back into gate_up_proj)."""
    g = {}
    for n, p in model.named_parameters():
        if n.endswith("experts.w_gate") or n.endswith("experts.w_up"):
            continue
        g[n] = p.grad
    for n, m in model.named_modules():
        if isinstance(m, EngineSparseMoeBlock):
            g[n + ".experts.gate_up_proj"] = torch.cat([m.experts.w_gate.grad, m.experts.w_up.grad], dim=1)
    return g


class PatchAgreement(unittest.TestCase):
    def check_arch(self, arch, dtype, tol_y, tol_g, experts="eager"):
        ref = load(arch, dtype, experts)
        pat = moe_cpp.torch.patch(copy.deepcopy(ref))
        blocks = [m for m in pat.modules() if isinstance(m, EngineSparseMoeBlock)]
        self.assertEqual(len(blocks), ref.config.num_hidden_layers - len(getattr(ref.config, "mlp_only_layers", [])))
        self.assertFalse(any(type(m).__name__ == ORIGINAL[arch] for m in pat.modules()))
        ids = batch(ref)
        a, b = run(ref, ids), run(pat, ids)
        ey, el, ea = rel(b.logits, a.logits), rel(b.loss, a.loss), rel(b.aux_loss, a.aux_loss)
        ga, gb = grads(ref), grads(pat)
        self.assertEqual(sorted(ga), sorted(gb))
        eg = max(rel(gb[n], ga[n]) for n in ga)
        worst = max(ga, key=lambda n: rel(gb[n], ga[n]))
        print(f"  {arch} {dtype} {experts}: logits {ey:.2e} loss {el:.2e} aux {ea:.2e} grads {eg:.2e} ({worst})")
        self.assertLess(ey, tol_y)
        self.assertLess(el, tol_y)
        self.assertLess(ea, tol_y)
        self.assertLess(eg, tol_g, worst)
        # inference: no_grad, eval
        with torch.no_grad():
            self.assertLess(rel(pat(input_ids=ids).logits, ref(input_ids=ids).logits), tol_y)

    def test_f32(self):
        for arch in ARCHS:
            with self.subTest(arch=arch):
                self.check_arch(arch, torch.float32, 1e-5, 1e-4)
                self.check_arch(arch, torch.float32, 1e-5, 1e-4, experts="grouped_mm")  # transformers' default

    def test_f64(self):
        # transformers' routers compute the softmax in float32 also for float64 models (the combine
        # weights carry float32 rounding); the engine computes them in double.
        for arch in ARCHS:
            with self.subTest(arch=arch):
                self.check_arch(arch, torch.float64, 1e-6, 1e-5)

    def test_f64_router_in_double(self):
        # With transformers' routers computing their softmax in float64 too, the patched float64 model
        # equals the unpatched one to double rounding.
        def router64(self, h):
            h = h.reshape(-1, self.hidden_dim)
            logits = torch.nn.functional.linear(h, self.weight)
            top, idx = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
            if getattr(self, "norm_topk_prob", True):  # Mixtral always renormalises
                top = top / top.sum(dim=-1, keepdim=True)
            return logits, top, idx

        for arch in ARCHS:
            with self.subTest(arch=arch):
                ref = load(arch, torch.float64)
                pat = moe_cpp.torch.patch(copy.deepcopy(ref))
                for m in ref.modules():
                    if type(m).__name__.endswith("TopKRouter"):
                        m.forward = types.MethodType(router64, m)
                ids = batch(ref, 5)
                a, b = run(ref, ids), run(pat, ids)
                ga, gb = grads(ref), grads(pat)
                ey, eg = rel(b.logits, a.logits), max(rel(gb[n], ga[n]) for n in ga)
                print(f"  {arch} float64, routers in double: logits {ey:.2e} grads {eg:.2e}")
                self.assertLess(ey, 1e-12)
                self.assertLess(eg, 1e-11)

    def test_mixtral_jitter(self):
        ref = load("mixtral")
        for m in ref.modules():
            if type(m).__name__ == "MixtralSparseMoeBlock":
                m.jitter_noise = 0.01
        pat = moe_cpp.torch.patch(copy.deepcopy(ref))
        ids = batch(ref, 3)
        torch.manual_seed(5)
        a = run(ref, ids)
        torch.manual_seed(5)
        b = run(pat, ids)
        self.assertLess(rel(b.logits, a.logits), 1e-5)
        ga, gb = grads(ref), grads(pat)
        self.assertLess(max(rel(gb[n], ga[n]) for n in ga), 1e-4)


    def test_generate(self):
        # the fixtures' greedy continuations (made by transformers), through the KV cache
        from safetensors.torch import load_file
        for arch in ARCHS:
            with self.subTest(arch=arch):
                exp = load_file(os.path.join(FIXTURES, arch, "expected.safetensors"))
                pat = moe_cpp.torch.patch(load(arch)).eval()
                ids = exp["input_ids"]
                with torch.inference_mode():
                    out = pat.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
                    logits = pat(input_ids=ids).logits[0]
                self.assertEqual(out[0, ids.shape[1]:].tolist(), exp["greedy_ids"].tolist())
                self.assertLess(rel(logits, exp["logits"]), 2e-5)


class Weights(unittest.TestCase):
    def test_shared_and_split(self):
        ref = load("qwen2_moe")
        gu = {n: p.detach().clone() for n, p in ref.named_parameters() if n.endswith("gate_up_proj")}
        keep = {n: p for n, p in ref.named_parameters() if not n.endswith("gate_up_proj")}
        moe_cpp.torch.patch(ref)
        params = dict(ref.named_parameters())
        for n, p in keep.items():
            self.assertIs(params[n], p, n)  # router, down_proj, shared expert: the same Parameter objects
        for n, t in gu.items():
            pre = n[: -len("gate_up_proj")]
            g, u = params[pre + "w_gate"], params[pre + "w_up"]
            F = g.shape[1]
            self.assertTrue(g.is_contiguous() and u.is_contiguous())
            self.assertTrue(torch.equal(g, t[:, :F]) and torch.equal(u, t[:, F:]))

    def test_state_dict_round_trip(self):
        for arch in ARCHS:
            with self.subTest(arch=arch):
                ref = load(arch)
                sd = ref.state_dict()
                pat = moe_cpp.torch.patch(load(arch))
                psd = pat.state_dict()
                self.assertEqual(list(psd), list(sd))  # same keys, same order
                for k in sd:
                    self.assertEqual(psd[k].shape, sd[k].shape, k)
                    self.assertTrue(torch.equal(psd[k], sd[k]), k)
                # load a transformers state dict (other weights) into the patched model
                other = load(arch)
                with torch.no_grad():
                    for p in other.parameters():
                        p.mul_(0.9)
                res = pat.load_state_dict(other.state_dict(), strict=True)
                self.assertEqual((res.missing_keys, res.unexpected_keys), ([], []))
                ids = batch(ref, 1)
                with torch.no_grad():
                    self.assertLess(rel(pat(input_ids=ids).logits, other(input_ids=ids).logits), 1e-5)
                # and the patched state dict into an unpatched model
                fresh = load(arch)
                fresh.load_state_dict(pat.state_dict(), strict=True)
                with torch.no_grad():
                    self.assertLess(rel(fresh(input_ids=ids).logits, other(input_ids=ids).logits), 1e-5)

    def test_save_pretrained(self):
        for arch in ARCHS:
            with self.subTest(arch=arch):
                pat = moe_cpp.torch.patch(load(arch))
                with torch.no_grad():
                    for n, p in pat.named_parameters():
                        if "experts" in n:
                            p.add_(0.01)
                ids = batch(pat, 2)
                with tempfile.TemporaryDirectory() as d:
                    pat.save_pretrained(d)
                    back = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
                with torch.no_grad():
                    self.assertLess(rel(back(input_ids=ids).logits, pat(input_ids=ids).logits), 1e-5)

    def test_unpatch_after_training(self):
        for arch in ARCHS:
            with self.subTest(arch=arch):
                pat = moe_cpp.torch.patch(load(arch))
                opt = torch.optim.AdamW(pat.parameters(), lr=1e-2)
                ids = batch(pat, 4)
                for _ in range(2):
                    opt.zero_grad()
                    pat(input_ids=ids, labels=ids, output_router_logits=True).loss.backward()
                    opt.step()
                with torch.no_grad():
                    want = pat(input_ids=ids).logits
                sd = pat.state_dict()
                moe_cpp.torch.unpatch(pat)
                self.assertFalse(any(isinstance(m, EngineSparseMoeBlock) for m in pat.modules()))
                self.assertTrue(any(type(m).__name__ == ORIGINAL[arch] for m in pat.modules()))
                self.assertEqual(list(pat.state_dict()), list(sd))
                for k, v in pat.state_dict().items():
                    self.assertTrue(torch.equal(v, sd[k]), k)
                with torch.no_grad():
                    self.assertLess(rel(pat(input_ids=ids).logits, want), 1e-5)
                # and again: patch an unpatched model, same outputs
                moe_cpp.torch.patch(pat)
                with torch.no_grad():
                    self.assertLess(rel(pat(input_ids=ids).logits, want), 1e-5)


class Bf16Compute(unittest.TestCase):
    def test_bf16_compute_trains(self):
        ref = load("qwen2_moe")
        pat = moe_cpp.torch.patch(copy.deepcopy(ref), bf16_compute=True)
        ids = batch(ref, 6)
        a, b = run(ref, ids), run(pat, ids)
        self.assertLess(rel(b.logits, a.logits), 3e-2)  # bf16 products, f32 sums
        ga, gb = grads(ref), grads(pat)
        self.assertLess(max(rel(gb[n], ga[n]) for n in ga), 1e-1)


class Errors(unittest.TestCase):
    def test_unsupported_model(self):
        cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2)
        with self.assertRaisesRegex(ValueError, "LlamaForCausalLM"):
            moe_cpp.torch.patch(transformers.LlamaForCausalLM(cfg))
        with self.assertRaisesRegex(ValueError, "Linear"):
            moe_cpp.torch.patch(torch.nn.Linear(3, 3))

    def test_dtype(self):
        m = load("olmoe").to(torch.bfloat16)
        with self.assertRaisesRegex(ValueError, "bfloat16"):
            moe_cpp.torch.patch(m)
        self.assertFalse(any(isinstance(b, EngineSparseMoeBlock) for b in m.modules()))  # nothing changed
        pat = moe_cpp.torch.patch(load("olmoe"))
        pat.to(torch.bfloat16)
        with self.assertRaisesRegex(ValueError, "unpatch"):
            pat(input_ids=batch(pat))

    def test_dtype_change_after_patch(self):
        pat = moe_cpp.torch.patch(load("qwen3_moe"))
        ref = load("qwen3_moe").double()
        pat.double()
        ids = batch(pat)
        with torch.no_grad():
            self.assertLess(rel(pat(input_ids=ids).logits, ref(input_ids=ids).logits), 1e-6)


if __name__ == "__main__":
    unittest.main(verbosity=2)
