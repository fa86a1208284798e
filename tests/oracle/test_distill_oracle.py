#!/usr/bin/env python3
"""PyTorch oracle of the distillation loss (moe/model/distill_loss.h, docs/DISTILLATION.md).

    /usr/bin/python3 test_distill_oracle.py --tool build/tests/oracle/distill_oracle_run [--filter REGEX]

Per counted row (target >= 0):  loss = (1 - A)·CE(z, target) + A·T²·KL(softmax(t/T) ‖ softmax(z/T)).
The reference is torch: F.cross_entropy, F.kl_div on F.log_softmax of both sides, and autograd for the
logits gradient (times the grad scale). Each case runs in f64 (tolerance 1e-10: the same formulas, only
the summation order differs) and f32 (16·sqrt(V)·2^-24 of the largest value, or 4x the error of the same
torch formulas run in float32 where that is larger); f32 outputs must also be bit-identical with 3
threads and 1. With A = 0 the loss and gradient must be bit-identical to nn::cross_entropy (the path
without a teacher). Bad inputs must be one clear error line (exit code 2).
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
    import torch.nn.functional as F
except ImportError as exc:
    sys.exit(f"test_distill_oracle.py: FAILED: cannot import {exc.name} with {sys.executable}: install "
             "python3-torch and python3-numpy (Debian packages) - the oracle tests cannot run without them")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_oracle import check_one_line_error, read_safetensors, write_safetensors  # noqa: E402

F64_TOL = 1e-10
U32 = 2.0 ** -24
F32_STAGES = 16
F32_VS_TORCH32 = 4.0
SCALE_FLOOR = 1e-30


def reference(logits, teacher, targets, A, T, grad_scale):
    """ce_sum, kd_sum (T²·KL summed over counted rows), count, dlogits."""
    z = logits.clone().requires_grad_()
    counted = targets >= 0
    ce = F.cross_entropy(z[counted], targets[counted].long(), reduction="sum")
    log_q = F.log_softmax(z[counted] / T, dim=-1)        # the student at temperature T
    log_p = F.log_softmax(teacher[counted] / T, dim=-1)  # the teacher
    kd = T * T * F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    (grad_scale * ((1 - A) * ce + A * kd)).backward()
    return {"ce_sum": ce.reshape(()), "kd_sum": kd.reshape(()), "count": counted.sum().to(torch.int64),
            "dlogits": z.grad}


def case(name, n, V, A, T, ignore_every=3, grad_scale=1.0):
    return {"name": name, "n": n, "V": V, "A": A, "T": T, "ignore_every": ignore_every, "grad_scale": grad_scale}


CASES = [
    case("plain_ce.a0", 16, 50, 0.0, 2.0),
    case("half.t2", 16, 50, 0.5, 2.0, grad_scale=0.125),
    case("kd_only.a1", 16, 50, 1.0, 2.0),
    case("cold.t05", 12, 37, 0.3, 0.5),
    case("hot.t4", 12, 37, 0.7, 4.0, ignore_every=2),
    case("no_ignored", 5, 7, 0.5, 1.0, ignore_every=0),
    case("vocab.a0", 8, 5000, 0.0, 2.0, grad_scale=1 / 64),
    case("vocab.half", 8, 5000, 0.5, 2.0, grad_scale=1 / 64),
]


def make_inputs(c, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (c["n"], c["V"]))
    teacher = 0.6 * logits + rng.normal(0.0, 2.0, (c["n"], c["V"]))  # correlated, as a teacher would be
    targets = rng.integers(0, c["V"], c["n"]).astype(np.int32)
    if c["ignore_every"]:
        targets[:: c["ignore_every"]] = -1
    return {"logits": logits, "teacher": teacher, "targets": targets}


def run_tool(tool, c, inputs, workdir, dtype, tag, threads):
    in_path, out_path = (os.path.join(workdir, f"{tag}.{ext}") for ext in ("in.safetensors", "out.safetensors"))
    write_safetensors(in_path, inputs, {"case": tag})
    cmd = [tool, "--inputs", in_path, "--out", out_path, "--kd-weight", repr(c["A"]), "--temperature",
           repr(c["T"]), "--grad-scale", repr(c["grad_scale"]), "--dtype", dtype, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc, out_path, cmd


def rel_error(a, b):
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), SCALE_FLOOR) if b.size else 0.0


def run_case(c, dtype, tool, workdir):
    inputs = make_inputs(c, zlib.crc32(c["name"].encode()))
    if dtype == "f32":
        inputs = {k: a.astype(np.float32) if a.dtype.kind == "f" else a for k, a in inputs.items()}
    tag = f"{c['name']}.{dtype}"
    proc, out_path, cmd = run_tool(tool, c, inputs, workdir, dtype, tag, threads=3)
    if proc.returncode != 0:
        return [f"tool exited {proc.returncode}: {proc.stderr.strip()}\n      command: {' '.join(cmd)}"]
    got, _ = read_safetensors(out_path)
    fails = []
    if dtype == "f32":
        proc1, out1, _ = run_tool(tool, c, inputs, workdir, dtype, tag + ".t1", threads=1)
        if proc1.returncode != 0:
            return [f"tool exited {proc1.returncode} with --threads 1: {proc1.stderr.strip()}"]
        got1, _ = read_safetensors(out1)
        for k in sorted(got):
            if k not in got1 or got[k].tobytes() != got1[k].tobytes():
                fails.append(f"'{k}' is not bit-identical with --threads 3 and --threads 1")
    if c["A"] == 0:  # the path without a teacher, bit for bit
        if got["dlogits"].tobytes() != got["plain_dlogits"].tobytes():
            fails.append("A = 0: dlogits differ from nn::cross_entropy's")
        if float(got["ce_sum"]) != float(got["plain_loss_sum"]):
            fails.append(f"A = 0: ce_sum {float(got['ce_sum'])!r} != cross_entropy {float(got['plain_loss_sum'])!r}")

    def evaluate(tdtype):
        t = {k: torch.from_numpy(np.array(a)).to(tdtype) if a.dtype.kind == "f" else torch.from_numpy(np.array(a))
             for k, a in inputs.items()}
        return reference(t["logits"], t["teacher"], t["targets"], c["A"], c["T"], c["grad_scale"])

    ref = evaluate(torch.float64)
    ref32 = evaluate(torch.float32) if dtype == "f32" else None
    base_tol = F64_TOL if dtype == "f64" else F32_STAGES * math.sqrt(c["V"]) * U32
    for name, r in ref.items():
        b = r.detach().numpy()
        a = np.asarray(got[name])
        if b.dtype.kind in "iu":
            if not np.array_equal(a, b):
                fails.append(f"'{name}' = {a.tolist()}, expected {b.tolist()}")
            continue
        a = a.astype(np.float64)
        if a.shape != b.shape:
            fails.append(f"'{name}': shape {a.shape}, expected {b.shape}")
            continue
        if not np.all(np.isfinite(a)):
            fails.append(f"'{name}': non-finite values")
            continue
        tol = base_tol
        if ref32 is not None:
            tol = max(tol, F32_VS_TORCH32 * rel_error(ref32[name].detach().double().numpy(), b))
        err = rel_error(a, b)
        if err > tol:
            fails.append(f"'{name}': relative error {err:.3e} > tol {tol:.3e}")
    if c["A"] == 0 and float(np.asarray(got["kd_sum"])) <= 0:
        fails.append("A = 0: the KD term is still measured and must be > 0 here")
    return fails


def bad_cases():
    base = case("bad", 4, 6, 0.5, 2.0, ignore_every=0)

    def wide_teacher(inp):
        inp["teacher"] = np.zeros((4, 7))

    def big_target(inp):
        inp["targets"][1] = 6

    return [
        ("bad.kd_weight", dict(base, A=1.5), None, ["KD weight", "[0, 1]", "1.5"]),
        ("bad.temperature", dict(base, T=0.0), None, ["temperature", "> 0"]),
        ("bad.teacher_shape", base, wide_teacher, ["teacher", "(4, 7)", "(4, 6)"]),
        ("bad.target", base, big_target, ["targets[1] = 6", "V = 6"]),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", help="path of the distill_oracle_run executable")
    ap.add_argument("--filter", default=".")
    ap.add_argument("--modes", default="f64,f32")
    args = ap.parse_args()
    if not args.tool or not os.access(args.tool, os.X_OK):
        sys.exit(f"test_distill_oracle.py: FAILED: --tool {args.tool!r} is not an executable")
    pattern = re.compile(args.filter)
    cases = [c for c in CASES if pattern.search(c["name"])]
    bad = [b for b in bad_cases() if pattern.search(b[0])]
    if not cases and not bad:
        sys.exit(f"test_distill_oracle.py: FAILED: no case matches --filter {args.filter!r}")
    torch.set_num_threads(1)
    modes = args.modes.split(",")
    n_fail = 0
    with tempfile.TemporaryDirectory(prefix="moe_distill_oracle_") as workdir:
        for c in cases:
            for dtype in modes:
                print(f"{c['name']} (A={c['A']}, T={c['T']}) [{dtype}]", flush=True)
                try:
                    fails = run_case(c, dtype, args.tool, workdir)
                except Exception as exc:
                    fails = [f"{type(exc).__name__}: {exc}"]
                for line in fails:
                    print(f"  FAIL {line}")
                n_fail += bool(fails)
        for name, c, tweak, expect in bad:
            print(f"{name} [bad input]", flush=True)
            inputs = make_inputs(c, 1)
            if tweak:
                tweak(inputs)
            proc, _, _ = run_tool(args.tool, c, inputs, workdir, "f64", name, threads=1)
            fails = check_one_line_error(proc, expect)
            for line in fails:
                print(f"  FAIL {line}")
            n_fail += bool(fails)
    total = len(cases) * len(modes) + len(bad)
    print(f"{total - n_fail}/{total} distill oracle checks passed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
