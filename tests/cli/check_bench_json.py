#!/usr/bin/env python3
"""Runs `moe bench layer ... --json` and checks that it prints one valid JSON object with the
documented keys and consistent values.

    check_bench_json.py MOE_BINARY [bench layer options ...]
"""
import json
import math
import subprocess
import sys

REQUIRED = {
    "fwd_ms": float, "fwd_bwd_ms": float, "gflops_fwd": float, "gflops_fwd_bwd": float,
    "peak_rss_mb": float, "flops_fwd": float, "flops_fwd_bwd": float,
    "tokens": int, "d_model": int, "d_ff": int, "experts": int, "top_k": int,
    "shared_experts": int, "threads": int, "backend": str, "router": str, "activation": str,
    "capacity_factor": float, "imbalance": float, "dropped": int, "tokens_per_expert": list,
}


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
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line of JSON, got {len(lines)}"
    r = json.loads(lines[0])
    assert isinstance(r, dict), "not a JSON object"

    for key, kind in REQUIRED.items():
        assert key in r, f"missing key {key}"
        v = r[key]
        if kind is float:
            assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{key} = {v!r} is not a number"
            assert math.isfinite(v) and v >= 0, f"{key} = {v} is not finite and >= 0"
        else:
            assert isinstance(v, kind), f"{key} = {v!r} is not {kind.__name__}"

    # The shape echoes the command line.
    for key, flag, default in [("tokens", "--tokens", 512), ("d_model", "--d-model", 256),
                               ("d_ff", "--d-ff", 512), ("experts", "--experts", 8),
                               ("top_k", "--top-k", 2), ("shared_experts", "--shared-experts", 0)]:
        assert r[key] == option(args, flag, default), f"{key} = {r[key]}, expected {option(args, flag, default)}"
    assert r["backend"] == option(args, "--backend", "cpu")
    if "--threads" in args:
        assert r["threads"] == option(args, "--threads", 0), f"threads = {r['threads']}"

    # Times and rates.
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0, "times must be positive"
    assert r["flops_fwd"] > 0 and r["gflops_fwd"] > 0 and r["gflops_fwd_bwd"] > 0
    assert math.isclose(r["flops_fwd_bwd"], 3 * r["flops_fwd"], rel_tol=1e-9)
    assert math.isclose(r["gflops_fwd"], r["flops_fwd"] / (r["fwd_ms"] * 1e6), rel_tol=1e-3)
    assert r["peak_rss_mb"] > 0

    # Routing statistics: one count per expert; every assignment is computed or dropped.
    T, E, k = r["tokens"], r["experts"], r["top_k"]
    tpe = r["tokens_per_expert"]
    assert len(tpe) == E, f"tokens_per_expert has {len(tpe)} entries, expected {E}"
    assert all(isinstance(n, int) and n >= 0 for n in tpe)
    assert sum(tpe) + r["dropped"] == T * k, f"sum {sum(tpe)} + dropped {r['dropped']} != T*k = {T * k}"
    if r["capacity_factor"] == 0:
        assert r["dropped"] == 0, "dropless run dropped assignments"
    assert r["imbalance"] >= 1.0 - 1e-9, f"imbalance {r['imbalance']} < 1"
    print("PASS")


if __name__ == "__main__":
    main()
