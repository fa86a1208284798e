#!/usr/bin/env python3
"""Runs `moe bench layer ... --json` and checks the dense-GEMM ceiling and memory keys:
dense_gflops, fwd_vs_dense, fwd_bwd_vs_dense (null with --dense-reps 0), act_peak_mb,
fwd_peak_mb, fwd_bwd_peak_mb and grads_mb (the bytes of dx and every parameter gradient, in MiB).

    check_bench_dense.py MOE_BINARY [bench layer options ...]
"""
import json
import math
import subprocess
import sys


def option(args, name, default):
    return type(default)(args[args.index(name) + 1]) if name in args else default


def main():
    moe, args = sys.argv[1], sys.argv[2:]
    cmd = [moe, "bench", "layer", *args, "--json"]
    print("command:", " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print("stdout:", p.stdout)
    print("stderr:", p.stderr)
    assert p.returncode == 0, f"exit code {p.returncode}"
    r = json.loads(p.stdout)

    # Dense ceiling.
    if option(args, "--dense-reps", 3) == 0:
        for key in ("dense_gflops", "fwd_vs_dense", "fwd_bwd_vs_dense"):
            assert r[key] is None, f"{key} = {r[key]!r}, expected null with --dense-reps 0"
    else:
        assert r["dense_backend"] == "cpu"
        assert r["dense_gflops"] > 0 and math.isfinite(r["dense_gflops"])
        assert r["dense_gflops_median"] <= r["dense_gflops"] * (1 + 1e-3), "median faster than best"
        mats = 3 if r["activation"] == "swiglu" else 2
        # Same FLOPs as the layer's forward (rows rounded to a whole number).
        per_row = 2.0 * r["dense_n"] * r["dense_k"] * mats
        assert abs(r["dense_flops"] - r["flops_fwd"]) <= per_row / 2 + 1, \
            f"dense_flops {r['dense_flops']} != flops_fwd {r['flops_fwd']}"
        assert math.isclose(r["dense_gflops"], r["dense_flops"] / (r["dense_ms_best"] * 1e6), rel_tol=2e-3)
        assert math.isclose(r["fwd_vs_dense"], r["gflops_fwd"] / r["dense_gflops"], rel_tol=2e-3, abs_tol=1e-4)
        assert math.isclose(r["fwd_bwd_vs_dense"], r["gflops_fwd_bwd"] / r["dense_gflops"], rel_tol=2e-3,
                            abs_tol=1e-4)

    # Memory: gradients are dx (T, d) plus every parameter's (router_bias has none).
    T, d, F, E, S = r["tokens"], r["d_model"], r["d_ff"], r["experts"], r["shared_experts"]
    mats = 3 if r["activation"] == "swiglu" else 2
    grads = 4 * (T * d + E * d + mats * E * F * d + mats * S * F * d) / 2**20
    assert math.isclose(r["grads_mb"], grads, abs_tol=0.06), f"grads_mb {r['grads_mb']} != {grads:.2f}"
    assert isinstance(r["peak_reset"], bool) and isinstance(r["mmap_threshold_fixed"], bool)
    for key in ("act_peak_mb", "fwd_peak_mb", "fwd_bwd_peak_mb", "rss_before_mb"):
        assert r[key] >= 0 and math.isfinite(r[key]), f"{key} = {r[key]}"
    assert r["fwd_peak_mb"] <= r["fwd_bwd_peak_mb"] + 0.05
    assert r["fwd_peak_mb"] - 0.05 <= r["act_peak_mb"] <= r["fwd_bwd_peak_mb"] + 0.05
    assert r["weights"] == "f32"
    print("PASS")


if __name__ == "__main__":
    main()
