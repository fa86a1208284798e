#!/usr/bin/python3
"""Driver of the whole-model oracle: tiny MoE transformers of the four Hugging Face layouts, written by
this script as a model directory (config.json + model.safetensors, random weights), loaded and run by
model_oracle_run (one Transformer::forward_backward), compared with torch_model.py (float64 PyTorch).

    /usr/bin/python3 test_model_oracle.py --tool build/tests/oracle/model_oracle_run [--filter REGEX] [--list]
                                          [--modes f64,f32] [--keep DIR] [-v]

Compared: the cross-entropy sum, the target count, the balancing losses (total and per MoE layer), the
logits, the routed load of every expert of every MoE layer (exactly) and the gradient of every tensor of
the checkpoint. In f32 the tool also runs with --threads 1 and every output must be bit-identical to the
--threads 3 run. README.md explains the tolerances.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import zlib

try:
    import numpy as np
    import torch
except ImportError as exc:  # fail loudly, as test_oracle.py does: the oracle is a required test
    sys.exit(f"test_model_oracle.py: FAILED: cannot import {exc.name} with {sys.executable}: install "
             "python3-torch and python3-numpy (Debian packages) - the oracle tests cannot run without them")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model  # noqa: E402
from test_oracle import check_one_line_error, read_safetensors, write_safetensors  # noqa: E402  (strict reader, plain writer)

# ---------------------------------------------------------------------------------------------
# Cases. Base: vocab 50, d 16, 2 layers, 4 query heads of 4 over 2 key/value heads, 8 experts of width
# 24, top-2; batch 2 x 7 (odd S) with one ignored target.

HF_CLASS = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
            "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}


def hf_config(arch, **kw):
    """A config.json as transformers writes it (plus any overrides); head_dim is left out unless given."""
    c = {"model_type": arch, "architectures": [HF_CLASS[arch]], "vocab_size": 50, "hidden_size": 16,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24,
         "num_experts_per_tok": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
         "max_position_embeddings": 128,
         "tie_word_embeddings": False, "router_aux_loss_coef": 0.02, "initializer_range": 0.02,
         "hidden_act": "silu", "torch_dtype": "float32"}
    if arch == "mixtral":
        c["num_local_experts"] = 8
    else:
        c.update(num_experts=8, norm_topk_prob=False)
    if arch in ("qwen2_moe", "qwen3_moe"):
        c.update(moe_intermediate_size=12, intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[])
    if arch == "qwen2_moe":
        c["shared_expert_intermediate_size"] = 20
    c.update(kw)
    return c


def case(name, cfg, B=2, S=7, ignore=((0, 2),), ce_scale=1.0, aux_scale=1.0):
    return {"name": name, "cfg": cfg, "B": B, "S": S, "ignore": ignore, "ce_scale": ce_scale,
            "aux_scale": aux_scale}


MOE_CPP = {"router": {"score": "sigmoid", "use_bias": True, "n_groups": 4, "topk_groups": 2, "scaling": 2.0,
                      "capacity_factor": 1.25},
           "balance": {"seq_aux_coef": 0.1, "seq_len": 6}}

CASES = [
    case("mixtral.gqa", hf_config("mixtral")),
    case("mixtral.tied_mha_k1_zloss", hf_config("mixtral", tie_word_embeddings=True, num_attention_heads=2,
                                                num_key_value_heads=2, num_experts_per_tok=1,
                                                num_hidden_layers=3, router_z_loss_coef=0.05),
         B=1, S=9, ignore=((0, 0), (0, 5)), ce_scale=1.0 / 7, aux_scale=0.5),
    case("mixtral.long_sequence", hf_config("mixtral", num_local_experts=4, rope_theta=500000.0), B=1, S=70,
         ignore=()),
    case("qwen2_moe.shared_dense_middle", hf_config("qwen2_moe", num_hidden_layers=3, mlp_only_layers=[1])),
    case("qwen2_moe.sparse_step_tied", hf_config("qwen2_moe", decoder_sparse_step=2, tie_word_embeddings=True,
                                                 norm_topk_prob=True, router_z_loss_coef=0.05),
         B=3, S=5, ignore=((1, 4), (2, 0))),
    case("qwen3_moe.dense_first_wide_heads", hf_config("qwen3_moe", num_hidden_layers=3, mlp_only_layers=[0],
                                                       head_dim=8, norm_topk_prob=True,
                                                       router_aux_loss_coef=0.001)),
    case("qwen3_moe.k_eq_E_mqa_scales", hf_config("qwen3_moe", num_experts=4, num_experts_per_tok=4,
                                                  num_key_value_heads=1, router_aux_loss_coef=0.1,
                                                  router_z_loss_coef=0.01),
         ce_scale=1.0 / 13, aux_scale=0.25),
    case("qwen3_moe.moe_cpp_router", hf_config("qwen3_moe", norm_topk_prob=True, moe_cpp=MOE_CPP), B=2, S=6),
    case("olmoe.gqa", hf_config("olmoe", router_aux_loss_coef=0.01)),
    case("olmoe.tied_k3_no_aux_gradient", hf_config("olmoe", tie_word_embeddings=True, num_key_value_heads=4,
                                                    num_experts_per_tok=3, norm_topk_prob=True,
                                                    router_z_loss_coef=0.05),
         B=3, S=5, ignore=((2, 2),), aux_scale=0.0),
]


def tweak_batch(name, index, value):
    def f(cfg, w, batch):
        batch[name][index] = value
    return f


def drop_tensor(name):
    def f(cfg, w, batch):
        del w[name]
    return f


def bad(name, expect, tweak):
    return {"name": name, "expect": expect, "tweak": tweak}


def _transpose(name):
    def f(cfg, w, batch):
        w[name] = w[name].T.contiguous()
    return f


def _extra(cfg, w, batch):
    w["model.layers.0.mlp.extra.weight"] = torch.zeros(2, 2, dtype=torch.float64)


def _targets_shape(cfg, w, batch):
    batch["targets"] = np.zeros((2, 8), np.int32)


def _tokens_i64(cfg, w, batch):
    batch["tokens"] = batch["tokens"].astype(np.int64)


def _config(**kw):
    def f(cfg, w, batch):
        for k, v in kw.items():
            if v is None:
                del cfg[k]
            else:
                cfg[k] = v
    return f


BAD_CASES = [  # on the mixtral.gqa model and batch (B = 2, S = 7, V = 50)
    bad("bad.token_out_of_vocab", ["token id 50", "vocabulary"], tweak_batch("tokens", (1, 3), 50)),
    bad("bad.negative_token", ["token id -2", "vocabulary"], tweak_batch("tokens", (0, 0), -2)),
    bad("bad.target_out_of_vocab", ["= 50", "V = 50"], tweak_batch("targets", (0, 1), 50)),
    bad("bad.targets_shape", ["'targets'", "(2, 8)"], _targets_shape),
    bad("bad.tokens_dtype", ["'tokens'", "i32"], _tokens_i64),
    bad("bad.missing_expert", ["missing tensor", "block_sparse_moe.experts.3.w2.weight"],
        drop_tensor("model.layers.1.block_sparse_moe.experts.3.w2.weight")),
    bad("bad.expert_shape", ["experts.5.w1.weight", "expected shape (24, 16)", "(16, 24)"],
        _transpose("model.layers.0.block_sparse_moe.experts.5.w1.weight")),
    bad("bad.unexpected_tensor", ["unexpected tensor", "model.layers.0.mlp.extra.weight"], _extra),
    bad("bad.config_missing_key", ["config.json", "num_experts_per_tok"], _config(num_experts_per_tok=None)),
    bad("bad.unsupported_arch", ["model_type 'llama'"], _config(model_type="llama")),
    bad("bad.sequence_too_long", ["max_position_embeddings = 4"], _config(max_position_embeddings=4)),
]

# ---------------------------------------------------------------------------------------------
# Tolerances: max|C++ - torch| <= tol * max(max|torch|, SCALE_FLOOR) over each tensor.

U32 = 2.0 ** -24
F64_TOL = 1e-10
F32_STAGES_PER_LAYER = 8
F32_VS_TORCH32 = 4.0
SCALE_FLOOR = 1e-3
MARGIN = {"f64": 1e-9, "f32": 1e-4}  # smallest relative gap at a routing decision (see README.md)


def longest_reduction(c):
    sp = torch_model.Spec(c["cfg"])
    n = c["B"] * c["S"]
    return max(sp.d, sp.hq * sp.hd, sp.F_expert, sp.F_dense, sp.F_shared, sp.V, sp.E, c["S"], n)


def tolerance(c, dtype):
    """f64: C++ and torch evaluate the same formulas in double; only the summation order differs, so the
    differences are a few ulps of the largest terms amplified by a few layers (observed <= 1e-13).
    f32: one layer is a chain of about eight reductions (norm, projection, scores, softmax, P.V, output
    projection, router, expert GEMMs) and its backward mirrors it; each reduction of length K with rounding
    errors of random sign adds a relative error of about sqrt(K) * 2^-24, and the residual stream carries the
    errors of every layer to the head and back, so they add over the L + 1 blocks (layers and head):
    tol = F32_STAGES_PER_LAYER * (L + 1) * sqrt(K) * 2^-24, K the longest reduction (d, projections,
    widths, V, S, or the B*S tokens of a weight gradient). Raised per output to F32_VS_TORCH32 times the
    error of the same oracle evaluated in float32 where that is larger (an ill-conditioned output)."""
    if dtype == "f64":
        return F64_TOL
    L = torch_model.Spec(c["cfg"]).L
    return F32_STAGES_PER_LAYER * (L + 1) * math.sqrt(longest_reduction(c)) * U32


def rel_error(a, b):
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), SCALE_FLOOR) if b.size else 0.0


# ---------------------------------------------------------------------------------------------
# Inputs.

def draw(c, seed, dtype):
    """Weights (float64 values, rounded to float32 in f32 mode), tokens and targets (B, S) i32."""
    w = torch_model.random_weights(c["cfg"], seed)
    if dtype == "f32":
        w = {n: v.to(torch.float32).to(torch.float64) for n, v in w.items()}
    g = torch.Generator().manual_seed(seed + 1)
    V = c["cfg"]["vocab_size"]
    tokens = torch.randint(0, V, (c["B"], c["S"]), generator=g, dtype=torch.int32)
    targets = torch.randint(0, V, (c["B"], c["S"]), generator=g, dtype=torch.int32)
    for b, s in c["ignore"]:
        targets[b, s] = -1
    return w, tokens, targets


def well_posed(c, dtype):
    """Inputs whose routing decisions are well-posed at `dtype` (redrawn while a decision's relative margin
    is below MARGIN[dtype]) and the float64 oracle's outputs on them."""
    base = zlib.crc32(c["name"].encode())
    for attempt in range(25):
        w, tokens, targets = draw(c, base + 7919 * attempt, dtype)
        ref = torch_model.forward_backward(c["cfg"], w, tokens, targets, c["ce_scale"], c["aux_scale"])
        if ref["margin"] >= MARGIN[dtype]:
            return w, tokens, targets, ref, attempt
    raise RuntimeError(f"{c['name']}: no well-posed inputs in 25 draws")


def write_model(dirname, cfg, w, dtype):
    """config.json and model.safetensors as transformers' save_pretrained writes them."""
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    npdt = np.float32 if dtype == "f32" else np.float64
    write_safetensors(os.path.join(dirname, "model.safetensors"),
                      {n: v.numpy().astype(npdt) for n, v in sorted(w.items())}, {"format": "pt"})


def run_tool(tool, model_dir, batch, workdir, dtype, tag, threads, c):
    in_path, out_path = (os.path.join(workdir, f"{tag}.{ext}")
                         for ext in ("batch.safetensors", "out.safetensors"))
    write_safetensors(in_path, batch)
    cmd = [tool, "--model", model_dir, "--inputs", in_path, "--out", out_path, "--dtype", dtype,
           "--threads", str(threads), "--ce-scale", repr(c.get("ce_scale", 1.0)),
           "--aux-scale", repr(c.get("aux_scale", 1.0)), "--logits"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc, out_path, cmd


# ---------------------------------------------------------------------------------------------
# Comparing.

def reference_outputs(ref):
    """{name: float64 or int64 numpy array} of everything the tool must write."""
    out = {n: ref[n] for n in ("loss_sum", "count", "aux_loss", "logits")}
    out.update({n: v for n, v in ref.items() if n.startswith("moe.")})
    out.update(ref["grads"])
    return {n: (v.detach().numpy() if v.is_floating_point() else v.numpy()) for n, v in out.items()}


def compare(ref, got, tol_of):
    fails, worst = [], (0.0, "")
    for name, b in ref.items():
        if name not in got:
            fails.append(f"missing output '{name}'")
            continue
        a = np.asarray(got[name])
        if a.shape != b.shape:
            fails.append(f"'{name}': shape {a.shape}, expected {b.shape}")
            continue
        if b.dtype.kind in "iu":  # count, routed_per_expert: exactly
            if not np.array_equal(a.astype(np.int64), b.astype(np.int64)):
                fails.append(f"'{name}' = {a.tolist()}, expected {b.tolist()}")
            continue
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):  # NaN never passes
            fails.append(f"'{name}': non-finite values at {np.argwhere(~np.isfinite(a))[:4].tolist()}")
            continue
        err, tol = rel_error(a, b), tol_of(name)
        if err / tol > worst[0]:
            worst = (err / tol, name)
        if err > tol:
            i = int(np.argmax(np.abs(a - b)))
            fails.append(f"'{name}': relative error {err:.3e} > tol {tol:.3e} (worst at flat index {i}: "
                         f"C++ {a.reshape(-1)[i]!r}, torch {b.reshape(-1)[i]!r})")
    fails += [f"unexpected output '{n}'" for n in got if n not in ref]
    return fails, worst


def run_case(c, dtype, tool, workdir, verbose):
    w, tokens, targets, ref, attempt = well_posed(c, dtype)
    tag = f"{c['name']}.{dtype}"
    model_dir = os.path.join(workdir, tag)
    write_model(model_dir, c["cfg"], w, dtype)
    batch = {"tokens": tokens.numpy(), "targets": targets.numpy()}
    proc, out_path, cmd = run_tool(tool, model_dir, batch, workdir, dtype, tag, 3, c)
    if proc.returncode != 0:
        return [f"tool exited {proc.returncode}: {proc.stderr.strip()}\n"
                f"      command: {' '.join(cmd)}"], (0, "")
    got, _ = read_safetensors(out_path)
    fails = []
    if dtype == "f32":  # determinism: bit-identical with 3 threads and 1
        proc1, out1, cmd1 = run_tool(tool, model_dir, batch, workdir, dtype, tag + ".t1", 1, c)
        if proc1.returncode != 0:
            return [f"tool exited {proc1.returncode} with --threads 1: {proc1.stderr.strip()}"], (0, "")
        got1, _ = read_safetensors(out1)
        for n in sorted(set(got) | set(got1)):
            if n not in got or n not in got1 or got[n].tobytes() != got1[n].tobytes():
                fails.append(f"'{n}' is not bit-identical with --threads 3 and --threads 1")
    want = reference_outputs(ref)
    tol = tolerance(c, dtype)
    tols = {}
    if dtype == "f32":  # conditioning: the error of the same oracle in float32, when it routes the same
        ref32 = torch_model.forward_backward(c["cfg"], w, tokens, targets, c["ce_scale"], c["aux_scale"],
                                             dtype=torch.float32)
        if all(torch.equal(ref32["routing"][l], ref["routing"][l]) for l in ref["routing"]):
            for n, v in reference_outputs(ref32).items():
                if v.dtype.kind == "f":
                    tols[n] = max(tol, F32_VS_TORCH32 * rel_error(v.astype(np.float64), want[n]))
    more, worst = compare(want, got, lambda n: tols.get(n, tol))
    fails += more
    if verbose:
        raised = ", ".join(f"{n} {v / tol:.1f}x" for n, v in tols.items() if v > tol)
        err = 0.0
        if worst[1]:
            err = rel_error(np.asarray(got[worst[1]], dtype=np.float64), want[worst[1]])
        k = longest_reduction(c)
        print(f"      tol {tol:.2e} (K = {k}), worst {worst[0]:.2e} x tol in '{worst[1]}' "
              f"(= {err / (math.sqrt(k) * U32):.2f} sqrt(K) u), redraws {attempt}, "
              f"margin {ref['margin']:.2e}, "
              f"loss_sum {float(ref['loss_sum']):.6f}, aux {float(ref['aux_loss']):.3e}"
              + (f"; tol raised by conditioning: {raised}" if raised else ""))
    return fails, worst


def run_bad_case(c, tool, workdir):
    """The tool must exit 2 with one stderr line containing every string of c['expect']."""
    base = CASES[0]
    cfg = json.loads(json.dumps(base["cfg"]))
    w, tokens, targets = draw(base, 1, "f64")
    batch = {"tokens": tokens.numpy(), "targets": targets.numpy()}
    c["tweak"](cfg, w, batch)
    model_dir = os.path.join(workdir, c["name"])
    write_model(model_dir, cfg, w, "f64")
    proc, _, _ = run_tool(tool, model_dir, batch, workdir, "f64", c["name"], 1, {})
    return check_one_line_error(proc, c["expect"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", help="path of the model_oracle_run executable")
    ap.add_argument("--filter", default=".", help="regular expression on case names (re.search)")
    ap.add_argument("--modes", default="f64,f32")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", help="keep the model directories, batches and outputs of every case here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    pattern = re.compile(args.filter)
    cases = [c for c in CASES if pattern.search(c["name"])]
    bad_cases = [c for c in BAD_CASES if pattern.search(c["name"])]
    if args.list:
        print("\n".join(c["name"] for c in cases + bad_cases))
        return 0
    if not args.tool or not os.access(args.tool, os.X_OK):
        sys.exit(f"test_model_oracle.py: FAILED: --tool {args.tool!r} is not an executable")
    if not cases and not bad_cases:
        sys.exit(f"test_model_oracle.py: FAILED: no case matches --filter {args.filter!r}")
    torch.set_num_threads(1)
    modes = args.modes.split(",")
    n_fail, worst = 0, {}
    with tempfile.TemporaryDirectory(prefix="moe_model_oracle_") as tmp:
        workdir = args.keep or tmp
        os.makedirs(workdir, exist_ok=True)
        for c in cases:
            for dtype in modes:
                print(f"{c['name']} [{dtype}]", flush=True)
                try:
                    fails, w = run_case(c, dtype, args.tool, workdir, args.verbose)
                    worst[dtype] = max(worst.get(dtype, (0.0, "", "")), (w[0], c["name"], w[1]))
                except Exception as exc:  # a broken output file or oracle error is a failure too
                    fails = [f"{type(exc).__name__}: {exc}"]
                for line in fails:
                    print(f"  FAIL {line}")
                n_fail += bool(fails)
        for c in bad_cases:
            print(f"{c['name']} [bad input]", flush=True)
            fails = run_bad_case(c, args.tool, workdir)
            for line in fails:
                print(f"  FAIL {line}")
            n_fail += bool(fails)
    for dtype, (r, name, tensor) in sorted(worst.items()):
        print(f"worst {dtype}: {r:.2e} x tol ('{tensor}' of {name})")
    total = len(cases) * len(modes) + len(bad_cases)
    print(f"{total - n_fail}/{total} model oracle checks passed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
