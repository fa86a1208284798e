#!/usr/bin/env python3
"""PyTorch oracle for group-wise quantized weights (moe/kernels/ops_quant.h).

For each case a weight matrix w (N, K) and activations a (M, K) are drawn, quant_oracle_run quantizes w
with moe::kernels::quantize_matrix and runs gemm_qw on the Ref and Cpu backends; this script quantizes
the same w with the documented formulas written in PyTorch and checks:
  - qweight, scales and mins bit for bit (scale: the smallest f16 >= max|w| / 127 (int8) or
    (max - min) / 15 (int4); min: the largest f16 <= the group's minimum; q = round half to even of
    (w - min) / scale in float64, clamped to [-127, 127] or [0, 15]; int4 packed two per byte, even k in
    the low nibble);
  - deq (dequantize_matrix) equal to torch's float32 q * scale + min;
  - c_ref within one float32 rounding of torch's float64 a @ deq^T (|d| <= 2^-24 |c| + 1e-12 S);
  - c_cpu within the kernel's bound (K / 8 + 8) * 2^-24 * S, S = sum_k |a_k deq_k| (tests/cpp/test_quant.cpp);
and that bad inputs exit 2 with one line naming the problem.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import zlib

try:
    import numpy as np
    import torch
except ImportError as exc:  # pragma: no cover
    sys.exit(f"test_quant_oracle.py: FAILED: cannot import {exc.name} with {sys.executable}: install python3-torch "
             "and python3-numpy (Debian) and run with /usr/bin/python3")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_oracle import check_one_line_error, read_safetensors, write_safetensors  # noqa: E402

U32 = 2.0 ** -24


def f16_outward(x, up):
    """The smallest float16 >= x (up) or the largest <= x, elementwise, for a float64 array."""
    h = x.astype(np.float32).astype(np.float16)
    wrong = h.astype(np.float64) < x if up else h.astype(np.float64) > x
    return np.where(wrong, np.nextafter(h, np.float16(np.inf if up else -np.inf)), h)


def quantize(w, bits, group):
    """(qweight, scales, mins) of w (N, K) float32 by the formulas of ops_quant.h, in torch (float64)."""
    N, K = w.shape
    g = torch.from_numpy(w).double().reshape(N, K // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    if bits == 8:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = f16_outward((amax / 127).numpy(), True)
        scale = np.where(amax.numpy() > 0, scale, np.float16(0))
        s = torch.from_numpy(scale.astype(np.float64)).unsqueeze(-1)
        q = torch.where(s > 0, torch.round(g / torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(g))
        q = q.clamp(-127, 127).reshape(N, K).to(torch.int8).numpy()
        return q, scale, None
    mins = f16_outward(lo.numpy(), False)
    m = torch.from_numpy(mins.astype(np.float64))
    scale = np.where((hi > m).numpy(), f16_outward(((hi - m) / 15).numpy(), True), np.float16(0))
    s = torch.from_numpy(scale.astype(np.float64)).unsqueeze(-1)
    q = torch.where(s > 0, torch.round((g - m.unsqueeze(-1)) / torch.where(s > 0, s, torch.ones_like(s))),
                    torch.zeros_like(g))
    q = q.clamp(0, 15).reshape(N, K).to(torch.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).numpy()
    return packed, scale, mins


def dequantize(qw, scales, mins, bits, group):
    """float32 dequantised weights, as torch computes q * scale (+ min)."""
    if bits == 8:
        q = torch.from_numpy(qw.astype(np.int8)).float()
    else:
        b = torch.from_numpy(qw.astype(np.uint8)).long()
        q = torch.stack([b & 15, b >> 4], -1).reshape(b.shape[0], -1).float()
    s = torch.from_numpy(scales.astype(np.float32)).repeat_interleave(group, 1)
    w = q * s
    if bits == 4:
        w = w + torch.from_numpy(mins.astype(np.float32)).repeat_interleave(group, 1)
    return w


def draw(name, N, K, M, kind):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    mag = 10.0 ** rng.uniform(-3, 2, size=(N, 1))
    w = (rng.standard_normal((N, K)) * mag + rng.uniform(-1, 1, size=(N, 1)) * mag).astype(np.float32)
    if kind == "edges":
        w[0, :32] = 0.0                               # an all-zero group
        w[1 % N, :32] = 0.3                           # a constant group not exact in f16
        w[2 % N, :] = rng.standard_normal(K) * 1e-6   # subnormal f16 scales
        w[3 % N, 5] = 4000.0                          # an outlier
        w[4 % N, :32] = np.linspace(-1, 1, 32)        # group ends on f16 values
    a = rng.standard_normal((M, K)).astype(np.float32)
    return w, a


CASES = [  # name, bits, group, N, K, M, kind
    ("int8.g32", 8, 32, 21, 128, 3, "plain"),
    ("int8.g64.edges", 8, 64, 9, 192, 5, "edges"),
    ("int8.g128", 8, 128, 33, 384, 17, "plain"),
    ("int4.g32", 4, 32, 21, 128, 3, "plain"),
    ("int4.g64.edges", 4, 64, 9, 192, 5, "edges"),
    ("int4.g128", 4, 128, 33, 384, 17, "plain"),
    ("int4.g64.m1", 4, 64, 50, 256, 1, "plain"),
    ("int8.g64.m70", 8, 64, 40, 256, 70, "edges"),
]

BAD = [  # name, bits, group, tweak, expected words
    ("bad.bits", 3, 64, None, ["bits must be 4 or 8", "3"]),
    ("bad.group", 4, 48, None, ["multiple of 32", "48"]),
    ("bad.nan", 8, 64, "nan", ["non-finite", "(2, 7)"]),
]


def run_tool(tool, w, a, bits, group, workdir, tag):
    inp, out = os.path.join(workdir, f"{tag}.in.safetensors"), os.path.join(workdir, f"{tag}.out.safetensors")
    write_safetensors(inp, {"w": w, "a": a})
    proc = subprocess.run([tool, "--inputs", inp, "--out", out, "--bits", str(bits), "--group", str(group),
                           "--threads", "2"], capture_output=True, text=True)
    return proc, out


def check_case(tool, case, workdir, verbose):
    name, bits, group, N, K, M, kind = case
    w, a = draw(name, N, K, M, kind)
    proc, out = run_tool(tool, w, a, bits, group, workdir, name)
    if proc.returncode != 0:
        return [f"tool failed ({proc.returncode}): {proc.stderr.strip()}"]
    got, _ = read_safetensors(out)
    fails = []
    qw, scales, mins = quantize(w, bits, group)
    if got["qweight"].dtype != qw.dtype or not np.array_equal(got["qweight"], qw):
        bad = np.argwhere(got["qweight"] != qw)
        fails.append(f"qweight differs at {len(bad)} places, first {bad[:3].tolist()}")
    if not np.array_equal(got["scales"].view(np.uint16), scales.view(np.uint16)):
        fails.append(f"scales differ: {np.argwhere(got['scales'].view(np.uint16) != scales.view(np.uint16))[:3].tolist()}")
    if bits == 4 and not np.array_equal(got["mins"].view(np.uint16), mins.view(np.uint16)):
        fails.append("mins differ")
    if bits == 8 and "mins" in got:
        fails.append("int8 output has mins")
    deq = dequantize(qw, scales, mins, bits, group)
    if not np.array_equal(got["deq"], deq.numpy()):
        fails.append(f"deq differs: max |d| {np.abs(got['deq'] - deq.numpy()).max()}")
    # Every weight within half a step (+ one f32 rounding) of its dequantised value.
    step = torch.from_numpy(scales.astype(np.float64)).repeat_interleave(group, 1)
    err = (torch.from_numpy(w).double() - deq.double()).abs()
    if (err > 0.5 * step + U32 * deq.double().abs()).any():
        fails.append(f"round trip beyond half a step: worst {(err / step.clamp_min(1e-300)).max().item():.3f} steps")
    A, D = torch.from_numpy(a).double(), deq.double()
    exact = A @ D.T
    S = A.abs() @ D.abs().T
    for key, tol in (("c_ref", U32 * exact.abs() + 1e-12 * S), ("c_cpu", (K / 8 + 8) * U32 * S)):
        c = torch.from_numpy(got[key].astype(np.float64))
        if not torch.isfinite(c).all():
            fails.append(f"{key} has non-finite values")
            continue
        d = (c - exact).abs()
        if (d > tol).any():
            fails.append(f"{key}: max |d| {d.max().item():.3g} over the bound at {int((d > tol).sum())} places")
        elif verbose:
            print(f"      {key}: max |d| / bound = {(d / tol.clamp_min(1e-300)).max().item():.3g}")
    return fails


def check_bad(tool, bad, workdir):
    name, bits, group, tweak, expect = bad
    w, a = draw(name, 4, 128, 2, "plain")
    if tweak == "nan":
        w[2, 7] = np.nan
    proc, _ = run_tool(tool, w, a, bits, group, workdir, name)
    return check_one_line_error(proc, expect)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", required=True, help="path to quant_oracle_run")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as workdir:
        for case in CASES:
            fails = check_case(args.tool, case, workdir, args.verbose)
            print(f"{'ok  ' if not fails else 'FAIL'} {case[0]}")
            for f in fails:
                print(f"      {f}")
            failed += bool(fails)
        for bad in BAD:
            fails = check_bad(args.tool, bad, workdir)
            print(f"{'ok  ' if not fails else 'FAIL'} {bad[0]}")
            for f in fails:
                print(f"      {f}")
            failed += bool(fails)
    total = len(CASES) + len(BAD)
    print(f"test_quant_oracle: {total - failed}/{total} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
