#!/usr/bin/python3
"""Driver of the PyTorch oracle: runs moe_oracle_run on each case and compares with torch_moe.py.

    /usr/bin/python3 test_oracle.py --tool build/tests/oracle/moe_oracle_run [--filter REGEX] [--list]
                                    [--modes f64-ref,f32-cpu] [--keep DIR] [-v]

Each case is run in every mode: f64 with the reference backend and f32 with the CPU backend. Integer
outputs (selected experts, tokens, kept flags, capacity, counts) must match exactly; floating outputs
within the tolerances of `tolerance()` below. README.md explains the principles.
"""
import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

try:
    import numpy as np
    import torch
except ImportError as exc:  # fail loudly: the oracle is a required test (python3-torch, python3-numpy)
    sys.exit(f"test_oracle.py: FAILED: cannot import {exc.name} with {sys.executable}: install python3-torch "
             "and python3-numpy (Debian packages) - the oracle tests cannot run without them")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_moe  # noqa: E402

# ---------------------------------------------------------------------------------------------
# safetensors by hand (json + struct + numpy), strict as the Hugging Face reader: offsets must tile
# the data buffer from 0 without gaps, so the C++ writer is checked against that rule too.

NP_TO_ST = {np.dtype(k): v for k, v in [("float64", "F64"), ("float32", "F32"), ("float16", "F16"),
                                         ("int64", "I64"), ("int32", "I32"), ("int8", "I8"), ("uint8", "U8")]}
ST_TO_NP = {v: k for k, v in NP_TO_ST.items()}


def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": NP_TO_ST[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    out, end = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, c = e["data_offsets"]
        assert b == end, f"{path}: tensor {name} starts at {b}, previous ended at {end} (gap or overlap)"
        end = c
        if e["dtype"] == "BF16":
            arr = (np.frombuffer(data[b:c], "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(data[b:c], ST_TO_NP[e["dtype"]].newbyteorder("<"))
        out[name] = arr.reshape(e["shape"])
    assert end == len(data), f"{path}: {len(data) - end} bytes after the last tensor"
    return out, meta


# ---------------------------------------------------------------------------------------------
# Tolerances.

U32 = 2.0 ** -24  # unit roundoff of float32
F64_TOL = 1e-10
F32_STAGES = 8
F32_VS_TORCH32 = 4.0
SCALE_FLOOR = 1e-3


def tolerance(mode, cfg, t):
    """Scale-aware relative tolerance: pass when max|a - b| <= tol * max(max|b|, SCALE_FLOOR).

    f64: C++ and torch evaluate the same formulas in double; only summation order differs, so
    errors are a few hundred ulps at most (~1e-13) and 1e-10 leaves a wide margin.
    f32 vs the float64 oracle: each compared value is a chain of a few reductions (router GEMM over d,
    softmax/normalisation sums over E or k, gate/up GEMM over d, down GEMM over F, combine over k,
    weight gradients over the T tokens of an expert), each contributing a relative error of about
    sqrt(K) * 2^-24 for rounding errors of random sign (probabilistic bound, K = the reduction length).
    tol = F32_STAGES * sqrt(K) * 2^-24 with K the longest reduction; F32_STAGES = 8 covers about five
    chained stages and the f32 rounding of intermediates between them (observed: <= ~1.3 sqrt(K) 2^-24).
    That bound assumes a well-conditioned result; where a value is a small difference of large terms
    (say <dy, shared(x)> cancelling) its relative error is larger. So, per output, the f32 tolerance is
    also at least F32_VS_TORCH32 = 4 times the error of the same oracle evaluated in float32 (the
    "no more than a few times a same-precision version" rule), which measures that conditioning.
    SCALE_FLOOR: inputs are O(1) by construction, so a reference whose max is below 1e-3 is (near-)
    cancellation around zero (k = 1 with normalize: the router gradient is exactly 0) and is compared
    on the 1e-3 scale rather than on its own rounding noise.
    """
    c = torch_moe.full_config(cfg)
    if mode.startswith("f64"):
        return F64_TOL
    fs = c["n_shared_experts"] * (c["d_ff_shared"] or c["d_ff"])
    k_longest = max(c["d_model"], c["d_ff"], fs, t, c["n_experts"], c["router"]["top_k"])
    return F32_STAGES * math.sqrt(k_longest) * U32


EXACT = ["token", "expert", "kept", "capacity", "routed_per_expert", "tokens_per_expert", "dropped"]
FLOAT = ["y", "dx", "weight", "logits", "scores", "aux_loss", "seq_aux_loss", "z_loss", "entropy_loss", "imbalance"]


def rel_error(a, b):
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), SCALE_FLOOR) if b.size else 0.0


def compare(ref, got, tol_of):
    """A list of failure lines and the worst (error / tol, tensor) over the floating outputs;
    tol_of(name) is the relative tolerance of output `name`."""
    fails, worst = [], (0.0, "")
    for name in EXACT:
        a = np.asarray(got.get(name)) if name in got else None
        b = ref[name].numpy()
        if a is None:
            fails.append(f"missing output '{name}'")
        elif a.shape != b.shape or not np.array_equal(a.astype(np.int64), b.astype(np.int64)):
            same_shape = a.shape == b.shape
            diff = np.nonzero(a.astype(np.int64).reshape(-1) != b.reshape(-1))[0] if same_shape else []
            detail = f" first differences at {list(diff[:8])}" if len(diff) else ""
            fails.append(f"'{name}' differs:{detail}"
                         f"\n      C++   {a.reshape(-1)[:24].tolist()} shape {a.shape}"
                         f"\n      torch {b.reshape(-1)[:24].tolist()} shape {b.shape}")
    grads = [n for n in ref if n.startswith("d_")]
    for name in FLOAT + grads:
        if name not in got:
            fails.append(f"missing output '{name}'")
            continue
        a = np.asarray(got[name], dtype=np.float64)
        b = ref[name].detach().numpy().astype(np.float64)
        if a.shape != b.shape:
            fails.append(f"'{name}': shape {a.shape}, expected {b.shape}")
            continue
        if not np.all(np.isfinite(a)):  # NaN never passes
            fails.append(f"'{name}': non-finite values at {np.argwhere(~np.isfinite(a))[:4].tolist()}")
            continue
        if a.size == 0:
            continue
        scale = max(float(np.max(np.abs(b))), SCALE_FLOOR)
        err = np.abs(a - b)
        rel = rel_error(a, b)
        tol = tol_of(name)
        if rel / tol > worst[0]:
            worst = (rel / tol, name)
        if rel > tol:
            i = int(np.argmax(err))
            fails.append(f"'{name}': max|C++ - torch| = {err.reshape(-1)[i]:.3e} at flat index {i} "
                         f"(C++ {a.reshape(-1)[i]!r}, torch {b.reshape(-1)[i]!r}), scale {scale:.3e}, "
                         f"relative {rel:.3e} > tol {tol:.3e}")
    for name in got:  # gradients the layer returns but the oracle has no parameter for must be zero
        if name.startswith("d_") and name not in ref and np.any(np.asarray(got[name]) != 0):
            fails.append(f"unexpected non-zero output '{name}'")
    return fails, worst


# ---------------------------------------------------------------------------------------------
# Cases. Base layer: d = 16, F = 24, E = 8, k = 2, T = 37 (odd), SwiGLU, softmax, dropless.

def case(name, t=37, router=None, balance=None, tweak=None, **layer):
    cfg = {"d_model": 16, "d_ff": 24, "n_experts": 8}
    cfg.update(layer)
    cfg["router"] = router or {}
    if balance:
        cfg["balance"] = balance
    return {"name": name, "cfg": cfg, "T": t, "tweak": tweak}


def zero_router(p, x, ids):  # every logit 0: all scores tie exactly, in f32 as in f64
    p["router_w"].zero_()


def bias_on(e, value):
    def tweak(p, x, ids):
        p["router_bias"][e] = value
    return tweak


def dominant_row(p, x, ids):  # expert 2's router row aligned with a large positive feature of x
    x[:, 0] = x[:, 0].abs() + 3.0
    p["router_w"][2, 0] = 8.0


def repeated_ids(p, x, ids):
    ids[::3] = 42


def small_ids(p, x, ids):
    ids.copy_(torch.arange(ids.numel(), dtype=torch.int32) % 6)


ALL_LOSSES = {"aux_coef": 0.5, "seq_aux_coef": 0.3, "seq_len": 8, "z_coef": 0.2}
DSV3 = {"score": "sigmoid", "normalize": True, "scaling": 2.5, "use_bias": True, "n_groups": 4,
        "topk_groups": 2, "group_score": "sum_top2", "top_k": 4}

CASES = [
    # Router variants.
    case("router.softmax"),
    case("router.softmax_norm_scale", router={"normalize": True, "scaling": 2.5}),
    case("router.softmax_k3_norm", router={"top_k": 3, "normalize": True}),
    case("router.topk_then_softmax", router={"order": "topk_then_softmax", "top_k": 3}),
    case("router.topk_then_softmax_bias_scale", router={"order": "topk_then_softmax", "use_bias": True,
                                                        "scaling": 1.7}),
    case("router.sigmoid", router={"score": "sigmoid"}),
    case("router.sigmoid_norm_scale_bias", router={"score": "sigmoid", "normalize": True, "scaling": 2.5,
                                                   "use_bias": True}),
    case("router.bias", router={"use_bias": True}),
    case("router.groups_max", n_experts=16, router={"n_groups": 4, "topk_groups": 2, "group_score": "max",
                                                    "top_k": 3}),
    case("router.groups_sum_top2_dsv3", n_experts=16, router=DSV3),
    case("router.groups_one_expert_each", router={"n_groups": 8, "topk_groups": 3,
                                                  "group_score": "sum_top2"}),
    case("router.groups_topk_then_softmax", n_experts=16, router={"n_groups": 8, "topk_groups": 3,
                                                                  "group_score": "max", "top_k": 3,
                                                                  "order": "topk_then_softmax"}),
    case("router.expert_choice", router={"routing": "expert_choice"}),
    case("router.expert_choice_cf_sigmoid", router={"routing": "expert_choice", "capacity_factor": 1.5,
                                                    "score": "sigmoid", "scaling": 2.0}),
    case("router.expert_choice_capacity_T", t=5, n_experts=4, router={"routing": "expert_choice",
                                                                      "capacity_factor": 3.0}),
    case("router.hash", router={"routing": "hash", "top_k": 3, "hash_seed": 1234}, tweak=repeated_ids),
    case("router.hash_k_eq_E", n_experts=4, router={"routing": "hash", "top_k": 4, "hash_seed": 99,
                                                    "normalize": True}, tweak=small_ids),
    case("router.hash_topk_then_softmax", router={"routing": "hash", "order": "topk_then_softmax"}),
    case("router.balanced", router={"routing": "balanced"}),
    case("router.balanced_k3_norm", router={"routing": "balanced", "top_k": 3, "sinkhorn_iters": 3,
                                            "normalize": True}),
    case("router.balanced_no_iters", router={"routing": "balanced", "sinkhorn_iters": 0}),
    # Options that do not apply must be ignored: groups and bias outside token choice (the spec's
    # selection for hash is the hash, for balanced the Sinkhorn logits, for expert choice the scores).
    case("router.balanced_groups_bias_ignored", router={"routing": "balanced", "n_groups": 4,
                                                        "topk_groups": 2, "use_bias": True},
         tweak=bias_on(2, 5.0)),
    case("router.hash_groups_bias_ignored", router={"routing": "hash", "n_groups": 4, "topk_groups": 1,
                                                    "use_bias": True}, tweak=bias_on(2, 5.0)),
    case("router.expert_choice_bias_ignored", router={"routing": "expert_choice", "use_bias": True},
         tweak=bias_on(2, 5.0)),
    case("router.ties", tweak=zero_router),
    case("router.ties_groups", router={"n_groups": 4, "topk_groups": 2, "top_k": 3}, tweak=zero_router),
    # Capacity.
    # Adaptive-k (top-p) routing and the router entropy loss.
    case("router.top_p_norm", router={"top_k": 4, "top_p": 0.5, "normalize": True}),
    case("router.top_p_plain_min_k", router={"top_k": 3, "top_p": 0.4, "min_k": 2}),
    case("router.top_p_topk_then_softmax", router={"order": "topk_then_softmax", "top_k": 4, "top_p": 0.6}),
    case("router.top_p_losses", t=40, router={"top_k": 4, "top_p": 0.5, "normalize": True},
         balance=dict(ALL_LOSSES, entropy_coef=0.2)),
    case("balance.entropy", balance={"entropy_coef": 0.3}),
    case("capacity.top_p", router={"top_k": 3, "top_p": 0.45, "capacity_factor": 0.8, "normalize": True}),
    case("capacity.position", router={"capacity_factor": 1.0}),
    case("capacity.probs", router={"capacity_factor": 1.0, "drop_policy": "probs"}),
    case("capacity.position_low_k3", router={"capacity_factor": 0.5, "top_k": 3}),
    case("capacity.probs_sigmoid_norm", router={"capacity_factor": 0.75, "drop_policy": "probs",
                                                "score": "sigmoid", "normalize": True}),
    case("capacity.hash_position", router={"routing": "hash", "capacity_factor": 0.8}),
    case("capacity.balanced_probs", router={"routing": "balanced", "capacity_factor": 1.0,
                                            "drop_policy": "probs"}),
    case("capacity.one_expert_position", router={"use_bias": True, "capacity_factor": 1.25},
         tweak=bias_on(3, 10.0)),
    case("capacity.one_expert_probs", router={"use_bias": True, "capacity_factor": 1.25,
                                              "drop_policy": "probs"}, tweak=bias_on(3, 10.0)),
    case("capacity.large_factor", router={"capacity_factor": 100.0}),
    case("capacity.ties_position", router={"capacity_factor": 1.0}, tweak=zero_router),
    case("capacity.ties_probs", router={"capacity_factor": 1.0, "drop_policy": "probs"}, tweak=zero_router),
    # Edge cases.
    case("edge.one_token", t=1),
    case("edge.one_token_k_eq_E", t=1, n_experts=4, router={"top_k": 4}),
    case("edge.empty_experts", t=5, n_experts=32, router={"top_k": 1}),
    case("edge.one_expert_bias_k1", router={"use_bias": True, "top_k": 1}, tweak=bias_on(5, 10.0)),
    case("edge.one_expert_router_row", router={"top_k": 1, "order": "topk_then_softmax"}, tweak=dominant_row),
    case("edge.k1", router={"top_k": 1}),
    case("edge.k_eq_E_norm", n_experts=6, router={"top_k": 6, "normalize": True}),
    case("edge.k_eq_E_sigmoid", n_experts=4, router={"top_k": 4, "score": "sigmoid"}),
    case("edge.E128_dsv3", t=64, d_ff=8, n_experts=128, router=dict(DSV3, n_groups=8, top_k=8)),
    case("edge.E128_capacity", t=64, d_ff=8, n_experts=128, router={"capacity_factor": 1.0}),
    case("edge.one_expert", n_experts=1, router={"top_k": 1, "capacity_factor": 0.5}),
    case("edge.no_tokens", t=0, router={"capacity_factor": 1.0}, balance={"aux_coef": 0.1, "z_coef": 0.1}),
    # Expert FFNs and shared experts.
    case("experts.gelu", activation="gelu"),
    case("experts.relu", activation="relu"),
    case("experts.silu", activation="silu"),
    case("experts.shared", n_shared_experts=2, d_ff_shared=12),
    case("experts.shared_gate", n_shared_experts=1, shared_gate=True),
    case("experts.shared_gelu_gate", activation="gelu", n_shared_experts=2, d_ff_shared=12, shared_gate=True),
    case("experts.shared_relu", activation="relu", n_shared_experts=3, d_ff_shared=8),
    # Balancing losses (seq_len divides T).
    case("losses.all_softmax", t=40, balance=ALL_LOSSES),
    case("losses.all_sigmoid", t=40, router={"score": "sigmoid", "normalize": True}, balance=ALL_LOSSES),
    case("losses.one_sequence", balance=dict(ALL_LOSSES, seq_len=0)),
    case("losses.with_capacity", t=40, router={"capacity_factor": 0.75}, balance=ALL_LOSSES),
    case("losses.expert_choice", t=40, router={"routing": "expert_choice"}, balance=ALL_LOSSES),
    case("losses.hash", t=40, router={"routing": "hash"}, balance=ALL_LOSSES),
    case("losses.dsv3_shared", t=40, n_experts=16, router=DSV3, balance=ALL_LOSSES, n_shared_experts=1,
         shared_gate=True),
]


def fuzz_cases(n, seed):
    """n random valid combinations of the options above (interactions), from a fixed seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        n_exp = int(rng.choice([2, 4, 6, 8, 12, 16, 32, 64]))
        t = int(rng.choice([1, 2, 7, 16, 37, 40, 64, 96]))
        routing = str(rng.choice(["token_choice"] * 3 + ["expert_choice", "hash", "balanced"]))
        r = {"routing": routing, "score": str(rng.choice(["softmax", "sigmoid"])),
             "top_k": int(rng.integers(1, 5)),
             "normalize": bool(rng.integers(2)), "scaling": float(rng.choice([1.0, 2.5])),
             "use_bias": bool(rng.integers(2)), "drop_policy": str(rng.choice(["position", "probs"])),
             "capacity_factor": float(rng.choice([0.0, 0.0, 0.5, 1.0, 1.25])),
             "hash_seed": int(rng.integers(1 << 40)),
             "sinkhorn_iters": int(rng.integers(0, 9))}
        r["top_k"] = min(r["top_k"], n_exp)
        if r["score"] == "softmax" and rng.integers(2):
            r["order"] = "topk_then_softmax"
        if routing == "token_choice" and rng.integers(2):
            groups = [g for g in (2, 3, 4) if n_exp % g == 0]
            r["n_groups"] = int(rng.choice(groups))
            r["topk_groups"] = int(rng.integers(1, r["n_groups"] + 1))
            r["group_score"] = str(rng.choice(["max", "sum_top2"]))
            r["top_k"] = min(r["top_k"], r["topk_groups"] * (n_exp // r["n_groups"]))
        seq = int(rng.choice([d for d in range(1, t + 1) if t % d == 0]))
        bal = {"aux_coef": float(rng.choice([0.0, 0.4])), "seq_aux_coef": float(rng.choice([0.0, 0.3])),
               "seq_len": seq, "z_coef": float(rng.choice([0.0, 0.2]))}
        shared = int(rng.choice([0, 0, 1, 2]))
        layer = {"activation": str(rng.choice(["swiglu", "gelu", "relu", "silu"])),
                 "n_shared_experts": shared,
                 "d_ff_shared": int(rng.choice([0, 8])), "shared_gate": bool(shared and rng.integers(2)),
                 "d_model": int(rng.choice([8, 16])), "d_ff": int(rng.choice([8, 24]))}
        out.append(case(f"fuzz.{i:02d}", t=t, router=r, balance=bal, n_experts=n_exp, **layer))
    return out


CASES += fuzz_cases(80, 2024)


def bad(name, cfg, expect, tweak=None, inputs_cfg=None, t=6):
    return {"name": name, "cfg": cfg, "inputs_cfg": inputs_cfg or cfg, "expect": expect, "tweak": tweak,
            "T": t}


def drop(name):
    def tweak(tensors):
        del tensors[name]
    return tweak


def set_at(name, index, value):
    def tweak(tensors):
        tensors[name][index] = value
    return tweak


def widen(name):
    def tweak(tensors):
        tensors[name] = np.concatenate([tensors[name], tensors[name][:, :1]], axis=1)
    return tweak


BASE = {"d_model": 16, "d_ff": 24, "n_experts": 8}
BAD_CASES = [
    bad("bad.k_greater_than_E", dict(BASE, router={"top_k": 9}), ["top_k"], inputs_cfg=BASE),
    bad("bad.x_wrong_shape", BASE, ["'x'", "(6, 17)"], tweak=widen("x")),
    bad("bad.dy_wrong_shape", BASE, ["dy", "(6, 17)"], tweak=widen("dy")),
    bad("bad.missing_w_up", BASE, ["w_up"], tweak=drop("w_up")),
    bad("bad.hash_without_token_ids", dict(BASE, router={"routing": "hash"}), ["token_ids"],
        tweak=drop("token_ids")),
    bad("bad.hash_negative_token_id", dict(BASE, router={"routing": "hash"}), ["token_ids", "-3"],
        tweak=set_at("token_ids", (2,), -3)),
    bad("bad.x_not_finite", BASE, ["'x'"], tweak=set_at("x", (1, 4), float("nan"))),
]


# ---------------------------------------------------------------------------------------------
# Running one case.

MODES = {"f64-ref": ("f64", "ref"), "f32-cpu": ("f32", "cpu")}
MARGIN = {"f64": 1e-9, "f32": 1e-5}  # smallest relative gap at a selection decision (see README.md)


def to_f32_values(t):
    return t.to(torch.float32).to(torch.float64) if t.is_floating_point() else t


def draw_inputs(case, dtype):
    """Inputs whose selection decisions are well-posed at `dtype`: redraw while a decision's relative
    margin is below MARGIN[dtype] (exact ties are exempt: see torch_moe.rel_gap)."""
    base_seed = zlib.crc32(case["name"].encode())
    for attempt in range(25):
        p, x, dy, ids = torch_moe.random_inputs(case["cfg"], case["T"], base_seed + 7919 * attempt)
        if case.get("tweak"):
            case["tweak"](p, x, ids)
        if dtype == "f32":
            p = {n: to_f32_values(v) for n, v in p.items()}
            x, dy = to_f32_values(x), to_f32_values(dy)
        ref = torch_moe.forward_backward(case["cfg"], p, x, dy, ids)
        if ref["margin"] >= MARGIN[dtype]:
            return p, x, dy, ids, ref, attempt
    raise RuntimeError(f"{case['name']}: no well-posed inputs in 25 draws")


def run_tool(tool, cfg, tensors, workdir, dtype, backend, tag, threads=None):
    cfg_path = os.path.join(workdir, f"{tag}.json")
    in_path = os.path.join(workdir, f"{tag}.in.safetensors")
    out_path = os.path.join(workdir, f"{tag}.out.safetensors")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)
    write_safetensors(in_path, tensors, {"case": tag})
    cmd = [tool, "--config", cfg_path, "--inputs", in_path, "--out", out_path, "--dtype", dtype,
           "--backend", backend]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return proc, out_path, cmd


def input_tensors(p, x, dy, ids, dtype):
    npdt = np.float32 if dtype == "f32" else np.float64
    out = {n: v.numpy().astype(npdt) for n, v in p.items()}
    out.update(x=x.numpy().astype(npdt), dy=dy.numpy().astype(npdt), token_ids=ids.numpy().astype(np.int32))
    return out


def tool_failure(proc, cmd):
    return f"tool exited {proc.returncode}: {proc.stderr.strip()}\n      command: {' '.join(cmd)}"


def run_case(case, mode, tool, workdir, verbose):
    dtype, backend = MODES[mode]
    tag = f"{case['name']}.{mode}"
    p, x, dy, ids, ref, attempt = draw_inputs(case, dtype)
    tensors = input_tensors(p, x, dy, ids, dtype)
    proc, out_path, cmd = run_tool(tool, case["cfg"], tensors, workdir, dtype, backend, tag, threads=3)
    if proc.returncode != 0:
        return [tool_failure(proc, cmd)], (0, "")
    got, _ = read_safetensors(out_path)
    fails = []
    if backend == "cpu":  # determinism: bit-identical outputs with 1 and 3 threads
        proc1, out1, cmd1 = run_tool(tool, case["cfg"], tensors, workdir, dtype, backend, tag + ".t1",
                                     threads=1)
        if proc1.returncode != 0:
            return [tool_failure(proc1, cmd1)], (0, "")
        got1, _ = read_safetensors(out1)
        for n in sorted(set(got) | set(got1)):
            if n not in got or n not in got1 or got[n].tobytes() != got1[n].tobytes():
                fails.append(f"'{n}' is not bit-identical with --threads 3 and --threads 1")
    tol = tolerance(mode, case["cfg"], case["T"])
    tols = {}
    if dtype == "f32":  # conditioning: the error of the same oracle in float32
        ref32 = torch_moe.forward_backward(case["cfg"], p, x, dy, ids, dtype=torch.float32)
        if all(torch.equal(ref32[n], ref[n]) for n in ("token", "expert", "kept")):
            for n in ref:
                if n in FLOAT or n.startswith("d_"):
                    e32 = rel_error(ref32[n].detach().double().numpy(), ref[n].detach().numpy())
                    tols[n] = max(tol, F32_VS_TORCH32 * e32)
    more, worst = compare(ref, got, lambda n: tols.get(n, tol))
    fails += more
    if verbose:
        raised = ", ".join(f"{n} {v / tol:.1f}x" for n, v in tols.items() if v > tol)
        print(f"      tol {tol:.2e}, worst {worst[0]:.2e} x tol in '{worst[1]}', redraws {attempt}, "
              f"margin {ref['margin']:.2e}, capacity {int(ref['capacity'])}, dropped {int(ref['dropped'])}"
              + (f"; tol raised by conditioning: {raised}" if raised else ""))
    return fails, worst


def check_one_line_error(proc, expect):
    """Failures unless the tool exited 2 with exactly one stderr line that mentions every string of expect."""
    lines = proc.stderr.strip().splitlines()
    fails = []
    if proc.returncode != 2:
        fails.append(f"expected exit code 2, got {proc.returncode} (stderr: {proc.stderr.strip()!r})")
    if len(lines) != 1:
        fails.append(f"expected one line on stderr, got {len(lines)}: {proc.stderr!r}")
    fails += [f"stderr does not mention {s!r}: {proc.stderr.strip()!r}" for s in expect if s not in proc.stderr]
    if not fails:
        print(f"      message: {lines[0]}")
    return fails


def run_bad_case(case, tool, workdir):
    """The tool must exit 2 with one stderr line containing every string of case['expect']."""
    p, x, dy, ids = torch_moe.random_inputs(case["inputs_cfg"], case["T"], 1)
    tensors = input_tensors(p, x, dy, ids, "f64")
    if case.get("tweak"):
        case["tweak"](tensors)
    proc, _, _ = run_tool(tool, case["cfg"], tensors, workdir, "f64", "ref", case["name"])
    return check_one_line_error(proc, case["expect"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", help="path of the moe_oracle_run executable")
    ap.add_argument("--filter", default=".", help="regular expression on case names (re.search)")
    ap.add_argument("--modes", default="f64-ref,f32-cpu")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", help="keep the config/input/output files of every case in this folder")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    pattern = re.compile(args.filter)
    cases = [c for c in CASES if pattern.search(c["name"])]
    bad = [c for c in BAD_CASES if pattern.search(c["name"])]
    if args.list:
        for c in cases + bad:
            print(c["name"])
        return 0
    if not args.tool or not os.access(args.tool, os.X_OK):
        sys.exit(f"test_oracle.py: FAILED: --tool {args.tool!r} is not an executable")
    if not cases and not bad:
        sys.exit(f"test_oracle.py: FAILED: no case matches --filter {args.filter!r}")
    torch.set_num_threads(1)

    n_fail = 0
    with tempfile.TemporaryDirectory(prefix="moe_oracle_") as tmp:
        workdir = args.keep or tmp
        os.makedirs(workdir, exist_ok=True)
        for case in cases:
            for mode in args.modes.split(","):
                print(f"{case['name']} [{mode}]", flush=True)
                try:
                    fails, _ = run_case(case, mode, args.tool, workdir, args.verbose)
                except Exception as exc:  # a broken output file or oracle error is a failure too
                    fails = [f"{type(exc).__name__}: {exc}"]
                for line in fails:
                    print(f"  FAIL {line}")
                n_fail += bool(fails)
        for case in bad:
            print(f"{case['name']} [bad input]", flush=True)
            fails = run_bad_case(case, args.tool, workdir)
            for line in fails:
                print(f"  FAIL {line}")
            n_fail += bool(fails)
    total = len(cases) * len(args.modes.split(",")) + len(bad)
    print(f"{total - n_fail}/{total} oracle checks passed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
