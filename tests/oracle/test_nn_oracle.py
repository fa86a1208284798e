#!/usr/bin/python3
"""PyTorch oracle for the transformer blocks of moe/model/nn.h: RMSNorm, RoPE, causal GQA attention and
cross-entropy, forward and backward, against an independent float64 PyTorch version written in the
Hugging Face conventions (Llama/Mixtral RMSNorm, rotate_half RoPE, causal attention with
repeat_interleave of the key/value heads, F.cross_entropy). Gradients come from autograd.

    /usr/bin/python3 test_nn_oracle.py --tool build/tests/oracle/nn_oracle_run [--filter REGEX] [--list]
                                       [--modes f64,f32] [--keep DIR] [-v]

Each case runs in f64 and in f32 (inputs rounded to float32 first, the oracle still in float64); in f32
the tool runs with --threads 3 and --threads 1 and every output must be bit-identical. Tolerances are
explained in tolerance() below and in README.md.
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
    import torch.nn.functional as F
except ImportError as exc:  # fail loudly, as test_oracle.py does: the oracle is a required test
    sys.exit(f"test_nn_oracle.py: FAILED: cannot import {exc.name} with {sys.executable}: install python3-torch "
             "and python3-numpy (Debian packages) - the oracle tests cannot run without them")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_oracle import check_one_line_error, read_safetensors, write_safetensors  # noqa: E402  (strict reader, plain writer)

# ---------------------------------------------------------------------------------------------
# The oracle: Hugging Face formulas in torch; each returns a dict of output tensors.


def rmsnorm(x, w, dy, eps):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    variance = x.pow(2).mean(-1, keepdim=True)  # LlamaRMSNorm / MixtralRMSNorm
    rstd = torch.rsqrt(variance + eps)
    y = w * (x * rstd)
    (y * dy).sum().backward()
    return {"y": y, "rstd": rstd.squeeze(-1), "dx": x.grad, "dw": w.grad}


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope(x, pos, dy, theta):
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))  # LlamaRotaryEmbedding
    freqs = pos.to(torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype)[:, None, :], emb.sin().to(x.dtype)[:, None, :]  # (n, 1, hd)
    x = x.clone().requires_grad_()
    y = x * cos + rotate_half(x) * sin  # apply_rotary_pos_emb
    (y * dy).sum().backward()
    return {"y": y, "dx": x.grad}


def attention(q, k, v, dout, scale):
    """q (B, sq, hq, hd), k, v (B, sk, hkv, hd). Queries are the last sq of sk positions."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    _, sq, hq, hd = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    scale = scale or 1.0 / math.sqrt(hd)
    qh = q.transpose(1, 2)                                            # (B, hq, sq, hd)
    kh = k.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)        # (B, hq, sk, hd), repeat_kv
    vh = v.transpose(1, 2).repeat_interleave(hq // hkv, dim=1)
    s = torch.matmul(qh, kh.transpose(-1, -2)) * scale                # (B, hq, sq, sk)
    allowed = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                  # (B, hq, sq)
    out = torch.matmul(torch.softmax(s, dim=-1), vh).transpose(1, 2)  # (B, sq, hq, hd)
    (out * dout).sum().backward()
    return {"out": out, "lse": lse, "dq": q.grad, "dk": k.grad, "dv": v.grad}


def cross_entropy(logits, targets, grad_scale):
    logits = logits.clone().requires_grad_()
    counted = targets >= 0
    loss_sum = F.cross_entropy(logits[counted], targets[counted].long(), reduction="sum")
    (grad_scale * loss_sum).backward()
    return {"loss_sum": loss_sum.reshape(()), "count": counted.sum().to(torch.int64), "dlogits": logits.grad}


def evaluate(case, inputs, dtype):
    t = {n: (torch.from_numpy(np.array(a)).to(dtype) if a.dtype.kind == "f" else torch.from_numpy(np.array(a)))
         for n, a in inputs.items()}
    op, c = case["op"], case["cfg"]
    if op == "rmsnorm":
        return rmsnorm(t["x"], t["w"], t["dy"], c["eps"])
    if op == "rope":
        return rope(t["x"], t["pos"], t["dy"], c["theta"])
    if op == "attention":
        return attention(t["q"], t["k"], t["v"], t["dout"], c.get("scale", 0.0))
    return cross_entropy(t["logits"], t["targets"], c["grad_scale"])


# ---------------------------------------------------------------------------------------------
# Cases and inputs.

def case(name, op, shapes, cfg=None):
    return {"name": name, "op": op, "shapes": shapes, "cfg": dict(cfg or {}, op=op)}


CASES = [
    case("rmsnorm.one", "rmsnorm", {"n": 1, "d": 1}, {"eps": 1e-6}),
    case("rmsnorm.odd", "rmsnorm", {"n": 37, "d": 24}, {"eps": 1e-5}),
    case("rmsnorm.wide", "rmsnorm", {"n": 70, "d": 256}, {"eps": 1e-6}),
    case("rope.hd2", "rope", {"n": 1, "heads": 1, "hd": 2, "pos0": 5, "step": 1}, {"theta": 10000.0}),
    case("rope.heads", "rope", {"n": 13, "heads": 4, "hd": 16, "pos0": 0, "step": 1}, {"theta": 10000.0}),
    case("rope.long_context", "rope", {"n": 9, "heads": 2, "hd": 64, "pos0": 17, "step": 997},
         {"theta": 500000.0}),
    case("attention.one_position", "attention", {"B": 1, "sq": 1, "sk": 1, "hq": 2, "hkv": 1, "hd": 4}),
    case("attention.mha", "attention", {"B": 2, "sq": 17, "sk": 17, "hq": 4, "hkv": 4, "hd": 8}),
    case("attention.gqa", "attention", {"B": 2, "sq": 33, "sk": 33, "hq": 8, "hkv": 2, "hd": 16}),
    case("attention.mqa_blocks", "attention", {"B": 1, "sq": 70, "sk": 70, "hq": 4, "hkv": 1, "hd": 8}),
    case("attention.kv_cache", "attention", {"B": 2, "sq": 3, "sk": 40, "hq": 4, "hkv": 2, "hd": 8}),
    case("attention.scale_odd_hd", "attention", {"B": 1, "sq": 5, "sk": 9, "hq": 6, "hkv": 3, "hd": 5},
         {"scale": 0.3}),
    case("attention.long", "attention", {"B": 1, "sq": 130, "sk": 130, "hq": 2, "hkv": 1, "hd": 32}),
    case("cross_entropy.small", "cross_entropy", {"n": 5, "V": 7, "ignore_every": 0}, {"grad_scale": 1.0}),
    case("cross_entropy.ignored", "cross_entropy", {"n": 16, "V": 50, "ignore_every": 3},
         {"grad_scale": 1.0 / 11}),
    case("cross_entropy.vocab", "cross_entropy", {"n": 8, "V": 5000, "ignore_every": 0}, {"grad_scale": 0.125}),
]

BAD_CASES = [  # (name, case, tweak of the inputs, strings the one stderr line must contain)
    ("bad.attention_heads", case("x", "attention", {"B": 1, "sq": 2, "sk": 2, "hq": 3, "hkv": 2, "hd": 4}),
     None, ["hq must be a multiple of hkv", "hkv = 2"]),
    ("bad.attention_sq_gt_sk", case("x", "attention", {"B": 1, "sq": 3, "sk": 2, "hq": 2, "hkv": 2, "hd": 4}),
     None, ["sk must be >= sq"]),
    ("bad.rope_odd_hd", case("x", "rope", {"n": 2, "heads": 1, "hd": 5, "pos0": 0, "step": 1}, {"theta": 1e4}),
     None, ["hd", "5"]),
    ("bad.cross_entropy_target", case("x", "cross_entropy", {"n": 4, "V": 6, "ignore_every": 0},
                                      {"grad_scale": 1.0}),
     lambda t: t["targets"].__setitem__(2, 6), ["targets[2] = 6", "V = 6"]),
]


def make_inputs(c, seed):
    rng = np.random.default_rng(seed)
    s = c["shapes"]

    def normal(*shape, sd=1.0):
        return rng.standard_normal(shape) * sd

    if c["op"] == "rmsnorm":
        return {"x": normal(s["n"], s["d"]), "w": 1.0 + normal(s["d"], sd=0.3), "dy": normal(s["n"], s["d"])}
    if c["op"] == "rope":
        pos = (s["pos0"] + s["step"] * np.arange(s["n"])).astype(np.int32)
        return {"x": normal(s["n"], s["heads"], s["hd"]), "pos": pos, "dy": normal(s["n"], s["heads"], s["hd"])}
    if c["op"] == "attention":
        qs, ks = (s["B"], s["sq"], s["hq"], s["hd"]), (s["B"], s["sk"], s["hkv"], s["hd"])
        return {"q": normal(*qs), "k": normal(*ks), "v": normal(*ks), "dout": normal(*qs)}
    targets = rng.integers(0, s["V"], s["n"]).astype(np.int32)
    if s["ignore_every"]:
        targets[1::s["ignore_every"]] = -100
    return {"logits": normal(s["n"], s["V"], sd=3.0), "targets": targets}


# ---------------------------------------------------------------------------------------------
# Tolerances: max|C++ − torch| <= tol · max(max|torch|, 1e-3) over each tensor.

U32 = 2.0 ** -24
F64_TOL = 1e-10
F32_STAGES = 16
F32_VS_TORCH32 = 4.0
SCALE_FLOOR = 1e-3


def longest_reduction(c):
    s = c["shapes"]
    if c["op"] == "rmsnorm":
        return max(s["d"], s["n"])  # over features; dw over rows
    if c["op"] == "rope":
        return 2
    if c["op"] == "attention":
        return max(s["hd"], s["sk"], s["sq"] * s["hq"] // s["hkv"])  # scores; softmax and P·V; dK, dV
    return max(s["V"], s["n"])


def tolerance(c, dtype):
    """f64: the same formulas in double, only the summation order differs (a few ulps of the largest
    terms); 1e-10 leaves a wide margin, also for RoPE angles of ~10^4 radians known to ~1e-12.
    f32: each reduction of length K with rounding errors of random sign contributes about sqrt(K)·u;
    F32_STAGES = 16 covers the few chained stages (products, exp, normalisation) and the f32 rounding
    between them. The caller raises it to F32_VS_TORCH32 times the error of the same oracle run in
    float32 where that is larger (an ill-conditioned output, e.g. a cancelling sum)."""
    if dtype == "f64":
        return F64_TOL
    return F32_STAGES * math.sqrt(longest_reduction(c)) * U32


def rel_error(a, b):
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), SCALE_FLOOR) if b.size else 0.0


# ---------------------------------------------------------------------------------------------
# Running.

def run_tool(tool, c, inputs, workdir, dtype, tag, threads):
    cfg_path, in_path, out_path = (os.path.join(workdir, f"{tag}.{ext}")
                                   for ext in ("json", "in.safetensors", "out.safetensors"))
    with open(cfg_path, "w") as f:
        json.dump(c["cfg"], f)
    write_safetensors(in_path, inputs, {"case": tag})
    cmd = [tool, "--config", cfg_path, "--inputs", in_path, "--out", out_path, "--dtype", dtype,
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc, out_path, cmd


def run_case(c, dtype, tool, workdir, verbose):
    inputs = make_inputs(c, zlib.crc32(c["name"].encode()))
    if dtype == "f32":
        inputs = {n: a.astype(np.float32) if a.dtype.kind == "f" else a for n, a in inputs.items()}
    tag = f"{c['name']}.{dtype}"
    proc, out_path, cmd = run_tool(tool, c, inputs, workdir, dtype, tag, threads=3)
    if proc.returncode != 0:
        return [f"tool exited {proc.returncode}: {proc.stderr.strip()}\n      command: {' '.join(cmd)}"]
    got, _ = read_safetensors(out_path)
    fails = []
    if dtype == "f32":  # determinism: bit-identical with 3 threads and 1
        proc1, out1, cmd1 = run_tool(tool, c, inputs, workdir, dtype, tag + ".t1", threads=1)
        if proc1.returncode != 0:
            return [f"tool exited {proc1.returncode} with --threads 1: {proc1.stderr.strip()}"]
        got1, _ = read_safetensors(out1)
        for n in sorted(set(got) | set(got1)):
            if n not in got or n not in got1 or got[n].tobytes() != got1[n].tobytes():
                fails.append(f"'{n}' is not bit-identical with --threads 3 and --threads 1")
    ref = evaluate(c, inputs, torch.float64)
    ref32 = evaluate(c, inputs, torch.float32) if dtype == "f32" else None
    tol = tolerance(c, dtype)
    for name, r in ref.items():
        b = r.detach().numpy()
        if name not in got:
            fails.append(f"missing output '{name}'")
            continue
        a = np.asarray(got[name])
        if a.shape != b.shape:
            fails.append(f"'{name}': shape {a.shape}, expected {b.shape}")
            continue
        if b.dtype.kind in "iu":
            if not np.array_equal(a, b):
                fails.append(f"'{name}' = {a.tolist()}, expected {b.tolist()}")
            continue
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):  # NaN never passes
            fails.append(f"'{name}': non-finite values at {np.argwhere(~np.isfinite(a))[:4].tolist()}")
            continue
        t = tol
        if ref32 is not None:
            t = max(t, F32_VS_TORCH32 * rel_error(ref32[name].detach().double().numpy(), b))
        err = rel_error(a, b)
        if verbose:
            print(f"      {name}: relative error {err:.2e}, tol {t:.2e}")
        if err > t:
            i = int(np.argmax(np.abs(a - b)))
            fails.append(f"'{name}': relative error {err:.3e} > tol {t:.3e} (worst at flat index {i}: "
                         f"C++ {a.reshape(-1)[i]!r}, torch {b.reshape(-1)[i]!r})")
    return fails


def run_bad_case(name, c, tweak, expect, tool, workdir):
    inputs = make_inputs(c, 1)
    if tweak:
        tweak(inputs)
    proc, _, _ = run_tool(tool, c, inputs, workdir, "f64", name, threads=1)
    return check_one_line_error(proc, expect)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", help="path of the nn_oracle_run executable")
    ap.add_argument("--filter", default=".", help="regular expression on case names (re.search)")
    ap.add_argument("--modes", default="f64,f32")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", help="keep the config/input/output files of every case in this folder")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    pattern = re.compile(args.filter)
    cases = [c for c in CASES if pattern.search(c["name"])]
    bad = [b for b in BAD_CASES if pattern.search(b[0])]
    if args.list:
        print("\n".join([c["name"] for c in cases] + [b[0] for b in bad]))
        return 0
    if not args.tool or not os.access(args.tool, os.X_OK):
        sys.exit(f"test_nn_oracle.py: FAILED: --tool {args.tool!r} is not an executable")
    if not cases and not bad:
        sys.exit(f"test_nn_oracle.py: FAILED: no case matches --filter {args.filter!r}")
    torch.set_num_threads(1)
    modes = args.modes.split(",")
    n_fail = 0
    with tempfile.TemporaryDirectory(prefix="moe_nn_oracle_") as tmp:
        workdir = args.keep or tmp
        os.makedirs(workdir, exist_ok=True)
        for c in cases:
            for dtype in modes:
                print(f"{c['name']} [{dtype}]", flush=True)
                try:
                    fails = run_case(c, dtype, args.tool, workdir, args.verbose)
                except Exception as exc:  # a broken output file or oracle error is a failure too
                    fails = [f"{type(exc).__name__}: {exc}"]
                for line in fails:
                    print(f"  FAIL {line}")
                n_fail += bool(fails)
        for name, c, tweak, expect in bad:
            print(f"{name} [bad input]", flush=True)
            fails = run_bad_case(name, c, tweak, expect, args.tool, workdir)
            for line in fails:
                print(f"  FAIL {line}")
            n_fail += bool(fails)
    total = len(cases) * len(modes) + len(bad)
    print(f"{total - n_fail}/{total} nn oracle checks passed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
