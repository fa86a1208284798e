#!/usr/bin/env python3
"""Side-by-side bf16 MoE forward: `moe bench layer --weights bf16` against PyTorch 2.x's bf16 forms.

Builds nothing. For each shape it alternates --rounds rounds of the engine (which times its bf16
forward and its f32 forward of the same layer in one process) and of bench/torch_bf16_forward.py
under --torch-python (a PyTorch 2.x interpreter: ../shared/peers/torch2.sh makes one), and prints
the medians over the rounds:

  shape | engine bf16 fwd | engine f32 fwd | bf16 / f32 | torch bf16: hf_autocast, sorted,
  grouped_mm | torch's fastest | torch fastest time / engine bf16 time | torch dense bf16 mm rate

(times in ms, rates in GFLOP/s of the expert matmuls), the CPU model and its matrix/vector flags,
and the goals of the CPU matrix-units issue that this CPU can show: with AMX, bf16 forward >= 1.3x
(mixtral-small) and >= 2x (fine-grained) PyTorch's fastest bf16 form; with AVX512-BF16 and no AMX,
bf16 forward >= 1.6x the engine's f32 and >= 1.3x PyTorch's bf16. Exit code 0 unless a run fails (1)
or the command line is wrong (2).

    PY=$(../shared/peers/torch2.sh)
    bench/compare_bf16_torch.py --torch-python $PY --rounds 3 --markdown
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from compare_torch import FULL, SHAPES  # the shapes of `moe bench layer` comparisons (this folder)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TORCH_SCRIPT = os.path.join(HERE, "torch_bf16_forward.py")
FORMS = ["hf_autocast", "sorted", "grouped_mm"]


def cpu_info():
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    keep = [f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni"))]
    return model, ("avx512f" in flags), keep


def run_json(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-500:]}")
    objs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    if not objs:
        raise RuntimeError(f"{' '.join(cmd)} printed no JSON")
    return objs[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--moe", default=os.path.join(REPO, "build", "moe"))
    p.add_argument("--torch-python", required=True, help="python of a PyTorch 2.x environment")
    p.add_argument("--shapes", default=",".join(FULL))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3, help="timed runs per side per round (median)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json-out", default=None)
    p.add_argument("--skip-without-torch", action="store_true",
                   help="exit 77 (CTest's skip) when --torch-python cannot import torch")
    a = p.parse_args()
    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        p.error(f"unknown shape(s) {', '.join(bad)}; known: {', '.join(SHAPES)}")
    if a.rounds < 1 or a.iters < 1 or a.threads < 1:
        p.error("need --rounds, --iters, --threads >= 1")
    if not os.access(a.moe, os.X_OK):
        p.error(f"no moe binary at {a.moe}")
    if a.skip_without_torch and subprocess.run([a.torch_python, "-c", "import torch"], capture_output=True).returncode:
        print(f"{a.torch_python} cannot import torch: skipped")
        return 77
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    model, _, flags = cpu_info()
    print(f"compare_bf16_torch: {a.moe} vs {a.torch_python}; CPU {model}; flags {' '.join(flags) or '-'}; "
          f"{a.threads} threads, {a.rounds} alternating rounds", flush=True)
    rows, runs = [], []
    try:
        for name in shapes:
            T, d, F, E, k, S = SHAPES[name]
            args = ["--tokens", str(T), "--d-model", str(d), "--d-ff", str(F), "--experts", str(E), "--top-k", str(k),
                    "--shared-experts", str(S), "--threads", str(a.threads)]
            eng, tor = [], []
            for r in range(a.rounds):
                print(f"  {name} round {r + 1}: engine ...", end="", flush=True)
                eng.append(run_json([a.moe, "bench", "layer", *args, "--weights", "bf16", "--warmup", "1",
                                     "--iters", str(a.iters), "--dense-reps", "0", "--json"], env))
                print(" torch ...", flush=True)
                tor.append(run_json([a.torch_python, TORCH_SCRIPT, *args, "--warmup", "1", "--iters", str(a.iters),
                                     "--dense-reps", "1" if r == 0 else "0"], env))
            med = statistics.median
            row = {"shape": name, "bf16_ms": med(e["fwd_ms"] for e in eng),
                   "f32_ms": med(e["f32_fwd_ms"] for e in eng), "flops": eng[0]["flops_fwd"],
                   "bf16_vs_f32": med(e["bf16_vs_f32_fwd"] for e in eng), "torch": tor[0]["torch"],
                   "dense_bf16_gflops": tor[0].get("dense_bf16_gflops")}
            for f in FORMS:
                vals = [t[f"{f}_ms"] for t in tor if f"{f}_ms" in t]
                row[f"{f}_ms"] = med(vals) if vals else None
            present = [f for f in FORMS if row[f"{f}_ms"] is not None]
            row["fastest"] = min(present, key=lambda f: row[f"{f}_ms"])
            row["torch_ms"] = row[f"{row['fastest']}_ms"]
            # per-round ratio of torch's fastest time to the engine's bf16 time, median
            row["vs_torch"] = med(min(t[f"{f}_ms"] for f in present if f"{f}_ms" in t) / e["fwd_ms"]
                                  for e, t in zip(eng, tor))
            rows.append(row)
            runs.append({"shape": name, "engine": eng, "torch": tor})
    except RuntimeError as e:
        print(f"compare_bf16_torch: error: {e}", file=sys.stderr)
        return 1

    def gf(r, ms):
        return f"{r['flops'] / (ms * 1e6):.0f}" if ms else "-"

    head = ["shape", "eng bf16 ms (GFLOP/s)", "eng f32 ms", "bf16/f32", "torch hf_autocast", "torch sorted",
            "torch grouped_mm", "torch fastest / eng bf16", "torch dense bf16 mm GFLOP/s"]
    table = []
    for r in rows:
        table.append([r["shape"], f"{r['bf16_ms']:.1f} ({gf(r, r['bf16_ms'])})", f"{r['f32_ms']:.1f}",
                      f"{r['bf16_vs_f32']:.2f}x"] +
                     [f"{r[f + '_ms']:.1f}" if r[f + "_ms"] else "-" for f in FORMS] +
                     [f"{r['vs_torch']:.2f}x ({r['fastest']})", f"{r['dense_bf16_gflops'] or '-'}"])
    print()
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        for row in [head] + table:
            print("  ".join(row))
    amx = any(f.startswith("amx_bf16") for f in flags)
    print(f"\ngoals on this CPU ({'AMX' if amx else 'AVX512-BF16, no AMX' if 'avx512_bf16' in flags else 'no bf16 units'}):")
    for r in rows:
        if amx:
            want = 2.0 if r["shape"].startswith("fine") else 1.3
            print(f"  {r['shape']}: bf16 fwd >= {want}x torch's fastest bf16: "
                  f"{'met' if r['vs_torch'] >= want else 'missed'} ({r['vs_torch']:.2f}x)")
        else:
            print(f"  {r['shape']}: bf16 fwd >= 1.6x engine f32: {'met' if r['bf16_vs_f32'] >= 1.6 else 'missed'} "
                  f"({r['bf16_vs_f32']:.2f}x); >= 1.3x torch bf16: {'met' if r['vs_torch'] >= 1.3 else 'missed'} "
                  f"({r['vs_torch']:.2f}x)")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"cpu": model, "flags": flags, "threads": a.threads, "rows": rows, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
