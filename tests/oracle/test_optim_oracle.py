#!/usr/bin/python3
"""PyTorch oracle of the optimizer: runs optim_oracle_run (moe::train::AdamW and clip_grad_norm) on each
case and compares with torch.optim.AdamW and torch.nn.utils.clip_grad_norm_.

    /usr/bin/python3 test_optim_oracle.py --tool build/tests/oracle/optim_oracle_run [--filter REGEX]
                                          [--list] [--keep DIR] [-v]

A case is a few f32 parameters (some with weight decay, some without), S steps of f32 gradients, a
learning rate per step and optionally a max_norm for clipping before each step. The reference is
torch.optim.AdamW (two parameter groups: weight_decay = wd and 0) run in float64 on the same f32
values, with the gradients clipped by moe's formula (times max_norm / norm when norm > max_norm). The
same run in float32 measures what a same-precision implementation gets. Compared (README.md):

- the pre-clip norm of each step: within 1e-12 relative (both sum squares of the same f32 values in
  double, in different orders);
- the clipped gradients: within 2 * 2^-24 relative (one rounding to f32 of a double product);
- torch.nn.utils.clip_grad_norm_ itself (float64): the same norm within 1e-12, and the same clipped
  gradients within 2 * 2^-24 + 1e-6 / norm relative (torch scales by max_norm / (norm + 1e-6));
- the parameters after every step and the final exp_avg / exp_avg_sq: scale-aware relative error
  max|C++ - ref| / max|ref| at most max(2 (s + 1) 2^-24, 4 x the error of torch float32). Each step
  rounds p, m and v to f32 once (error <= 2^-24 relative each); errors from earlier steps are carried
  with factors (1 - lr wd), beta1, beta2 <= 1, so they add up at most linearly in the step count.
  Where m is a small difference of earlier gradients its relative error can be larger; the float32
  torch run has the same conditioning, which the second term measures;
- the step count exactly; and the outputs with --threads 3, --threads 1 and with a save/restore of the
  optimizer state half way (--threads 2 --resume-at S/2) bit for bit.
"""
import argparse
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
except ImportError as exc:  # fail loudly: the oracle is a required test (python3-torch, python3-numpy)
    sys.exit(f"test_optim_oracle.py: FAILED: cannot import {exc.name} with {sys.executable}: install "
             "python3-torch and python3-numpy (Debian packages) - the oracle tests cannot run without them")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_oracle import check_one_line_error, read_safetensors, write_safetensors  # noqa: E402

U32 = 2.0 ** -24  # unit roundoff of float32
NORM_TOL = 1e-12
CLIP_TOL = 2 * U32
TORCH_CLIP_EPS = 1e-6  # the epsilon of torch.nn.utils.clip_grad_norm_
STEP_TOL = 2 * U32
F32_VS_TORCH32 = 4.0

# ---------------------------------------------------------------------------------------------
# Cases.

SHAPES = {"embed": (11, 8), "w_gate": (3, 8, 5), "norm": (8,), "router_bias": (3,)}
NO_DECAY = {"norm", "router_bias"}


def warmup_cosine(max_lr, min_lr, warmup, total, steps):
    """The LrSchedule of moe/train/optim.h, so that a case sees the schedule's shape."""
    out = []
    for s in range(steps):
        if s < warmup:
            out.append(max_lr * (s + 1) / warmup)
        elif s >= total:
            out.append(min_lr)
        else:
            p = (s - warmup) / (total - warmup)
            out.append(min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p)))
    return out


def case(name, steps=6, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, wd=0.1, max_norm=None, grad_std=0.1,
         tweak=None, shapes=None):
    lrs = lr if isinstance(lr, list) else [lr] * steps
    return {"name": name, "steps": len(lrs), "lr": lrs, "betas": betas, "eps": eps, "wd": wd,
            "max_norm": max_norm, "grad_std": grad_std, "tweak": tweak, "shapes": shapes or SHAPES}


def silent_expert(grads, rng):  # an expert that got no tokens: all-zero gradient rows in some steps
    for s, g in enumerate(grads):
        if s % 2 == 0:
            g["w_gate"][1] = 0
        g["embed"][rng.random(g["embed"].shape) < 0.5] = 0  # rows of tokens not in the batch


def uneven_scale(grads, rng):  # gradient norms that grow and shrink: clipping on some steps only
    for s, g in enumerate(grads):
        for n in g:
            g[n] *= np.float32(4.0 if s % 3 == 1 else 0.5)


CASES = [
    case("adamw.defaults"),
    case("adamw.betas_eps_wd", betas=(0.8, 0.99), eps=1e-6, wd=0.05, lr=3e-2),
    case("adamw.schedule", lr=warmup_cosine(2e-2, 2e-3, 3, 10, 12)),
    case("adamw.large_lr_decay", lr=0.2, wd=0.5, steps=5),
    case("adamw.no_weight_decay", wd=0.0),
    case("adamw.sparse_grads", tweak=silent_expert, steps=8),
    case("adamw.tiny_grads_eps", grad_std=1e-8, eps=1e-8),  # sqrt(v) ~ eps: eps matters
    case("adamw.big_tensor", steps=3, shapes={"big": (130, 257), "bias": (257,)}),  # > 2^14 elements
    case("clip.always", max_norm=0.05),
    case("clip.never", max_norm=100.0),
    case("clip.sometimes", max_norm=1.0, tweak=uneven_scale, steps=7),
    case("clip.big_tensor", max_norm=0.5, steps=3, shapes={"big": (130, 257), "bias": (257,)}),
]


def draw_inputs(c):
    """f32 parameters N(0, 1) and gradients N(0, grad_std^2) from a per-case seed (CRC32 of the name)."""
    rng = np.random.default_rng(zlib.crc32(c["name"].encode()))
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in c["shapes"].items()}
    grads = [{n: (c["grad_std"] * rng.standard_normal(s)).astype(np.float32) for n, s in c["shapes"].items()}
             for _ in range(c["steps"])]
    if c["tweak"]:
        c["tweak"](grads, rng)
    tensors = {"hyper": np.array([*c["betas"], c["eps"], c["wd"]], np.float64),
               "lr": np.array(c["lr"], np.float64)}
    if c["max_norm"]:
        tensors["max_norm"] = np.array(c["max_norm"], np.float64)
    for n, p in params.items():
        tensors[f"param.{n}"] = p
        tensors[f"decay.{n}"] = np.array(0 if n in NO_DECAY else 1, np.uint8)
    for s, g in enumerate(grads):
        for n, v in g.items():
            tensors[f"grad.{s}.{n}"] = v
    return params, grads, tensors


# ---------------------------------------------------------------------------------------------
# The reference: torch.optim.AdamW.

def total_norm(grads):
    return torch.norm(torch.stack([torch.norm(g) for g in grads]))


def torch_run(c, params, grads, dtype, clip="moe"):
    """clip: "moe" scales by max_norm / norm when norm > max_norm; "torch" calls clip_grad_norm_."""
    names = list(params)
    ps = {n: torch.tensor(params[n], dtype=dtype, requires_grad=True) for n in names}
    groups = [{"params": [ps[n] for n in names if n not in NO_DECAY], "weight_decay": c["wd"]},
              {"params": [ps[n] for n in names if n in NO_DECAY], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=c["lr"][0], betas=c["betas"],
                            eps=c["eps"], foreach=False)
    out = {"norm": np.zeros(c["steps"])}
    for s in range(c["steps"]):
        for n in names:
            ps[n].grad = torch.tensor(grads[s][n], dtype=dtype)
        plist = [ps[n] for n in names]
        if c["max_norm"] and clip == "torch":
            norm = torch.nn.utils.clip_grad_norm_(plist, c["max_norm"])
        else:
            norm = total_norm([p.grad for p in plist])
            if c["max_norm"] and float(norm) > c["max_norm"]:
                for p in plist:
                    p.grad.mul_(c["max_norm"] / norm)
        out["norm"][s] = float(norm)
        for n in names:
            if c["max_norm"]:
                out[f"clipped.{s}.{n}"] = ps[n].grad.clone()
        for g in opt.param_groups:
            g["lr"] = c["lr"][s]
        opt.step()
        for n in names:
            out[f"param.{s}.{n}"] = ps[n].detach().clone()
    for n in names:
        st = opt.state[ps[n]]
        out[f"adamw.m.{n}"] = st["exp_avg"].clone()
        out[f"adamw.v.{n}"] = st["exp_avg_sq"].clone()
        out["adamw.step"] = int(st["step"])
    return {k: (v.numpy().astype(np.float64) if torch.is_tensor(v) else v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Comparing.

def rel_error(a, b):
    """max|a - b| / max|b| over the tensor (scale-aware); NaN or inf in a gives inf."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if not np.all(np.isfinite(a)):
        return math.inf
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def step_of(name):
    return int(name.split(".")[1]) if name.startswith(("param.", "clipped.")) else None


def compare(c, got, ref, ref32, ref_torch_clip, verbose):
    fails, worst = [], (0.0, "")

    def check(name, err, tol):
        nonlocal worst
        if not err <= tol:
            fails.append(f"'{name}': relative error {err:.3g} > tolerance {tol:.3g}")
        elif tol > 0 and err / tol > worst[0]:
            worst = (err / tol, name)

    if int(np.asarray(got.get("adamw.step", -1))) != c["steps"]:
        fails.append(f"'adamw.step' is {got.get('adamw.step')}, expected {c['steps']}")
    check("norm", rel_error(got["norm"], ref["norm"]), NORM_TOL)
    for name, want in ref.items():
        if name in ("norm", "adamw.step"):
            continue
        if name not in got:
            fails.append(f"missing output '{name}'")
            continue
        if name.startswith("clipped."):
            check(name, rel_error(got[name], want), CLIP_TOL)
            continue
        s = step_of(name)
        steps_done = c["steps"] if s is None else s + 1
        tol = max(STEP_TOL * steps_done, F32_VS_TORCH32 * rel_error(ref32[name], want))
        check(name, rel_error(got[name], want), tol)
    if ref_torch_clip is not None:  # torch.nn.utils.clip_grad_norm_ on the same gradients
        check("norm vs clip_grad_norm_", rel_error(got["norm"], ref_torch_clip["norm"]), NORM_TOL)
        for name, want in ref_torch_clip.items():
            if name.startswith("clipped."):
                norm = ref_torch_clip["norm"][step_of(name)]
                tol = CLIP_TOL + (TORCH_CLIP_EPS / norm if norm > c["max_norm"] else 0.0)
                check(f"{name} vs clip_grad_norm_", rel_error(got[name], want), tol)
    if verbose and worst[1]:
        print(f"      worst: '{worst[1]}' at {worst[0]:.2f} x its tolerance")
    return fails


def run_tool(tool, tensors, workdir, tag, extra):
    in_path = os.path.join(workdir, f"{tag}.in.safetensors")
    out_path = os.path.join(workdir, f"{tag}.out.safetensors")
    write_safetensors(in_path, tensors, {"case": tag})
    cmd = [tool, "--inputs", in_path, "--out", out_path] + extra
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc, out_path, cmd


def run_case(c, tool, workdir, verbose):
    params, grads, tensors = draw_inputs(c)
    outs = []
    for tag, extra in [("t3", ["--threads", "3"]), ("t1", ["--threads", "1"]),
                       ("resume", ["--threads", "2", "--resume-at", str(c["steps"] // 2)])]:
        proc, out_path, cmd = run_tool(tool, tensors, workdir, f"{c['name']}.{tag}", extra)
        if proc.returncode != 0:
            return [f"tool failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}"]
        outs.append((tag, read_safetensors(out_path)[0]))
    fails = []
    got = outs[0][1]
    for tag, other in outs[1:]:
        if sorted(other) != sorted(got):
            fails.append(f"--{tag} run writes other tensors: {sorted(set(other) ^ set(got))}")
            continue
        for n in got:
            if got[n].tobytes() != other[n].tobytes():
                fails.append(f"'{n}' is not bit-identical between the t3 and {tag} runs")
    ref = torch_run(c, params, grads, torch.float64)
    ref32 = torch_run(c, params, grads, torch.float32)
    ref_torch_clip = torch_run(c, params, grads, torch.float64, clip="torch") if c["max_norm"] else None
    if verbose:
        print(f"      norms {np.round(ref['norm'], 4).tolist()}")
    return fails + compare(c, got, ref, ref32, ref_torch_clip, verbose)


# Bad input: exit code 2 and one line on stderr naming the problem.
def bad_grad_shape(t):
    t["grad.1.norm"] = np.zeros(9, np.float32)


def bad_grad_dtype(t):
    t["grad.0.embed"] = t["grad.0.embed"].astype(np.float64)


def bad_beta(t):
    t["hyper"][0] = 1.0


BAD_CASES = [("bad.grad_shape", bad_grad_shape, ["'norm'", "(8,)", "(9,)"]),
             ("bad.grad_dtype", bad_grad_dtype, ["'embed'", "f32"]),
             ("bad.beta1", bad_beta, ["beta1"])]


def run_bad_case(name, tweak, expect, tool, workdir):
    _, _, tensors = draw_inputs(case(name, steps=2))
    tweak(tensors)
    proc, _, _ = run_tool(tool, tensors, workdir, name, [])
    return check_one_line_error(proc, expect)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", help="path of the optim_oracle_run executable")
    ap.add_argument("--filter", default=".", help="regular expression on case names (re.search)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", help="keep the input/output files of every case in this folder")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    pattern = re.compile(args.filter)
    cases = [c for c in CASES if pattern.search(c["name"])]
    bad = [b for b in BAD_CASES if pattern.search(b[0])]
    if args.list:
        for name in [c["name"] for c in cases] + [b[0] for b in bad]:
            print(name)
        return 0
    if not args.tool or not os.access(args.tool, os.X_OK):
        sys.exit(f"test_optim_oracle.py: FAILED: --tool {args.tool!r} is not an executable")
    if not cases and not bad:
        sys.exit(f"test_optim_oracle.py: FAILED: no case matches --filter {args.filter!r}")
    torch.set_num_threads(1)

    n_fail = 0
    with tempfile.TemporaryDirectory(prefix="moe_optim_oracle_") as tmp:
        workdir = args.keep or tmp
        os.makedirs(workdir, exist_ok=True)
        for c in cases:
            print(c["name"], flush=True)
            try:
                fails = run_case(c, args.tool, workdir, args.verbose)
            except Exception as exc:  # a broken output file or oracle error is a failure too
                fails = [f"{type(exc).__name__}: {exc}"]
            for line in fails:
                print(f"  FAIL {line}")
            n_fail += bool(fails)
        for name, tweak, expect in bad:
            print(f"{name} [bad input]", flush=True)
            fails = run_bad_case(name, tweak, expect, args.tool, workdir)
            for line in fails:
                print(f"  FAIL {line}")
            n_fail += bool(fails)
    total = len(cases) + len(bad)
    print(f"{total - n_fail}/{total} optimizer oracle checks passed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
