#!/usr/bin/env python3
"""Side-by-side: `moe bench layer --json` against the PyTorch MoE block (bench/torch_moe_block.py).

Builds nothing. For each shape, one at a time, it runs the engine and then PyTorch (so that a
noisy machine hits both sides of a row alike), with the same shape, thread count and seed, and
prints one table:

  shape | engine fwd, fwd+bwd GFLOP/s | torch fwd, fwd+bwd GFLOP/s | speed-up of fwd+bwd (engine vs
  torch) | activation memory of fwd+bwd, engine and torch, and their ratio | engine vs its dense
  GEMM rate (fwd, fwd+bwd) | the dense rates | CPU use of each run

followed by the goals of the issue "MoE layer at the speed of a dense GEMM on CPU" and whether this
run meets them. Missing a goal is not an error: the exit code is 0 unless a run fails or prints
something that is not the expected JSON (1), or the command line is wrong (2).

    bench/compare_torch.py                      # build/moe, the three issue shapes, 2 threads
    bench/compare_torch.py --quick              # small shapes, 1 iteration (the CTest smoke test)
    bench/compare_torch.py --moe build-bench/moe --shapes mixtral-small --json-out runs.json
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TORCH_SCRIPT = os.path.join(HERE, "torch_moe_block.py")
MMAP_THRESHOLD = "131072"  # the 128 KiB `moe bench layer` fixes with mallopt

SHAPES = {
    # name: (tokens, d_model, d_ff, experts, top_k, shared_experts) -- the same table as
    # torch_moe_block.py and docs/PERFORMANCE.md
    "mixtral-small": (2048, 1024, 3584, 8, 2, 0),
    "fine-grained": (2048, 1024, 512, 64, 8, 0),
    "fine-grained-shared": (2048, 1024, 512, 64, 8, 1),
    "quick-mixtral": (256, 128, 256, 8, 2, 0),
    "quick-fine": (256, 128, 64, 16, 4, 0),
    "quick-fine-shared": (256, 128, 64, 16, 4, 1),
}
FULL = ["mixtral-small", "fine-grained", "fine-grained-shared"]
QUICK = ["quick-mixtral", "quick-fine", "quick-fine-shared"]

# Goals of the issue (the speed-up goal depends on the shape family).
GOAL_VS_DENSE = 0.85
GOAL_SPEEDUP = {"mixtral": 4.0, "fine": 40.0}
GOAL_MEM_RATIO = 0.5
GOAL_BF16 = 1.6
SKIP_CODE = 77  # CTest SKIP_RETURN_CODE with --skip-without-torch


class RunError(Exception):
    pass


def family(shape):
    return "mixtral" if "mixtral" in shape else "fine"


def stat_busy_seconds():
    """CPU-seconds all CPUs have been busy since boot (/proc/stat; None when unreadable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_json(cmd, env, timeout):
    """Runs cmd, returns (list of JSON objects on stdout, CPU use = (user+sys)/wall of cmd,
    CPU use of everything else on the machine during the run, in CPUs; None when unknown)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = stat_busy_seconds()
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RunError(f"timed out after {timeout} s: {' '.join(cmd)}") from e
    except OSError as e:
        raise RunError(f"cannot run {cmd[0]}: {e}") from e
    wall = time.monotonic() - t0
    busy1 = stat_busy_seconds()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = max(0.0, (busy1 - busy0 - cpu) / wall)
    if p.returncode != 0:
        raise RunError(f"exit code {p.returncode}: {' '.join(cmd)}\n{p.stderr.strip()}")
    objs = []
    for line in p.stdout.splitlines():
        if line.strip():
            try:
                objs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RunError(f"not JSON from {' '.join(cmd)}: {line[:200]!r}") from e
    if not objs:
        raise RunError(f"no output from {' '.join(cmd)}\n{p.stderr.strip()}")
    return objs, (cpu / wall if wall > 0 else 0.0), others


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (from /proc/stat; None when unreadable)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v), idle
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def wait_idle(max_wait, threshold=0.10):
    """Waits until the machine is idle (< threshold of all CPUs busy over 2 s), at most max_wait
    seconds. Returns (busy fraction of the last sample, seconds waited)."""
    t0 = time.monotonic()
    while True:
        busy = cpu_busy(2.0)
        if busy is None or busy < threshold or time.monotonic() - t0 >= max_wait:
            return busy, time.monotonic() - t0


def need(obj, keys, who):
    for k in keys:
        if k not in obj:
            raise RunError(f"{who}: key {k!r} missing from its JSON")


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--moe", default=os.path.join(REPO, "build", "moe"), help="the moe binary (default build/moe)")
    p.add_argument("--python", "--torch-python", dest="python", default="/usr/bin/python3",
                   help="python with torch (default Debian's; a PyTorch 2.x venv: ../shared/peers/torch2.sh)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", default=None, help=f"comma list of {', '.join(SHAPES)} (default: {','.join(FULL)})")
    p.add_argument("--quick", action="store_true",
                   help=f"small shapes ({','.join(QUICK)}), 1 iteration, 1 dense rep: a smoke test")
    p.add_argument("--warmup", type=int, default=1, help="engine warm-up runs (default 1)")
    p.add_argument("--iters", type=int, default=5, help="engine timed runs, median reported (default 5)")
    p.add_argument("--torch-warmup", type=int, default=0,
                   help="torch warm-up runs (default 0: its memory pass already ran forward+backward twice)")
    p.add_argument("--torch-iters", type=int, default=1,
                   help="torch timed runs (default 1: a forward+backward takes about a minute on mixtral-small)")
    p.add_argument("--dense-reps", type=int, default=3, help="reps of each side's dense GEMM rate (default 3)")
    p.add_argument("--torch-blas-dir", default=None, metavar="DIR",
                   help="put DIR (a ':' list) first on the torch run's LD_LIBRARY_PATH, so torch loads the "
                        "libblas.so.3 there (e.g. /usr/lib/x86_64-linux-gnu/blas:/usr/lib/x86_64-linux-gnu/lapack: "
                        "Debian's reference BLAS and LAPACK instead of the system alternatives); the BLAS "
                        "torch loaded is printed either way")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--json-out", default=None, help="also write every run's JSON here")
    p.add_argument("--wait-idle", type=int, default=0, metavar="SECONDS",
                   help="before each run, wait (at most SECONDS) until under 10%% of the CPUs are busy "
                        "over 2 s; the busy fraction found is reported (default 0: do not wait)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/PERFORMANCE.md)")
    p.add_argument("--skip-without-torch", action="store_true",
                   help=f"exit {SKIP_CODE} (CTest: skipped) when --python cannot import torch")
    a = p.parse_args()

    if a.quick:
        shapes = QUICK
        a.warmup, a.iters, a.torch_warmup, a.torch_iters, a.dense_reps = 0, 1, 0, 1, 1
    else:
        shapes = FULL
    if a.shapes:
        shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        p.error(f"unknown shape(s) {', '.join(bad)}; known: {', '.join(SHAPES)}")
    if a.threads < 1 or a.iters < 1 or a.torch_iters < 1 or a.warmup < 0 or a.torch_warmup < 0 or a.dense_reps < 1:
        p.error("need --threads, --iters, --torch-iters, --dense-reps >= 1 and warm-ups >= 0")
    if not (os.path.isfile(a.moe) and os.access(a.moe, os.X_OK)):
        p.error(f"no moe binary at {a.moe} (this script builds nothing: build it first, e.g. scripts/build.sh)")
    try:
        subprocess.run([a.python, "-c", "import torch"], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        if a.skip_without_torch:
            print(f"{a.python} cannot import torch: skipped")
            return SKIP_CODE
        p.error(f"{a.python} cannot import torch (Debian: apt-get install python3-torch)")

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    torch_env = dict(env, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    if a.torch_blas_dir:
        for d in a.torch_blas_dir.split(os.pathsep):
            if not os.path.isdir(d):
                p.error(f"--torch-blas-dir: no directory {d}")
        torch_env["LD_LIBRARY_PATH"] = os.pathsep.join(
            x for x in [a.torch_blas_dir, torch_env.get("LD_LIBRARY_PATH", "")] if x)
    print(f"compare_torch: {a.moe} vs {a.python} torch, {a.threads} threads, seed {a.seed}; "
          f"engine warmup {a.warmup} iters {a.iters}, torch warmup {a.torch_warmup} iters {a.torch_iters}",
          flush=True)

    rows, runs = [], []
    try:
        for name in shapes:
            T, d, F, E, k, S = SHAPES[name]
            shape_args = ["--tokens", str(T), "--d-model", str(d), "--d-ff", str(F), "--experts", str(E),
                          "--top-k", str(k), "--shared-experts", str(S), "--threads", str(a.threads),
                          "--seed", str(a.seed)]
            load = os.getloadavg()[0]
            eng_busy, eng_waited = wait_idle(a.wait_idle) if a.wait_idle > 0 else (None, 0.0)
            print(f"  {name}: engine ...", end="", flush=True)
            eng_cmd = [a.moe, "bench", "layer", *shape_args, "--warmup", str(a.warmup),
                       "--iters", str(a.iters), "--dense-reps", str(a.dense_reps), "--json"]
            eng_objs, eng_cpu, eng_others = run_json(eng_cmd, env, a.timeout)
            eng = eng_objs[0]
            print(" engine bf16 ...", end="", flush=True)
            bf16_cmd = [a.moe, "bench", "layer", *shape_args, "--warmup", str(a.warmup), "--iters", str(a.iters),
                        "--dense-reps", "0", "--weights", "bf16", "--json"]
            bf16 = run_json(bf16_cmd, env, a.timeout)[0][0]
            tor_busy, tor_waited = wait_idle(a.wait_idle) if a.wait_idle > 0 else (None, 0.0)
            print(" torch ...", end="", flush=True)
            torch_cmd = [a.python, TORCH_SCRIPT, *shape_args, "--dense-reps", str(a.dense_reps),
                         "--warmup", str(a.torch_warmup),
                         "--iters", str(a.torch_iters)]
            tor_objs, tor_cpu, tor_others = run_json(torch_cmd, torch_env, a.timeout)
            tor = tor_objs[0]
            print(f" done (torch's BLAS: {tor.get('blas') or 'unknown'})", flush=True)
            need(eng, ["gflops_fwd", "gflops_fwd_bwd", "fwd_bwd_ms", "act_peak_mb", "dense_gflops",
                       "fwd_vs_dense", "fwd_bwd_vs_dense"], "moe bench layer")
            need(tor, ["gflops_fwd", "gflops_fwd_bwd", "fwd_bwd_ms", "act_peak_mb"], "torch_moe_block.py")
            rows.append({"shape": name, "engine": eng, "torch": tor, "bf16": bf16, "load_before": load,
                         "engine_cpu": eng_cpu, "torch_cpu": tor_cpu, "busy_before": (eng_busy, tor_busy),
                         "waited": eng_waited + tor_waited, "others": (eng_others, tor_others)})
            runs.append({"shape": name, "engine_cmd": eng_cmd, "torch_cmd": torch_cmd, "engine": eng,
                         "engine_bf16_cmd": bf16_cmd, "engine_bf16": bf16,
                         "torch": tor, "load_before": load, "engine_cpu_use": eng_cpu,
                         "torch_cpu_use": tor_cpu, "busy_before_engine": eng_busy,
                         "busy_before_torch": tor_busy, "others_cpu_engine": eng_others,
                         "others_cpu_torch": tor_others})
    except RunError as e:
        print(f"\ncompare_torch: error: {e}", file=sys.stderr)
        return 1

    # ---- the table ----
    head = ["shape", "eng fwd", "eng f+b", "torch fwd", "torch f+b", "speed-up f+b", "act MiB eng",
            "act MiB torch", "eng/torch mem", "eng fwd/dense", "eng f+b/dense", "dense eng", "dense torch"]
    table = []
    for r in rows:
        e, t = r["engine"], r["torch"]
        speedup = t["fwd_bwd_ms"] / e["fwd_bwd_ms"] if e["fwd_bwd_ms"] > 0 else None
        mem_ratio = e["act_peak_mb"] / t["act_peak_mb"] if t["act_peak_mb"] > 0 else None
        r["speedup"], r["mem_ratio"] = speedup, mem_ratio
        table.append([r["shape"], fmt(e["gflops_fwd"]), fmt(e["gflops_fwd_bwd"]), fmt(t["gflops_fwd"], ".2f"),
                      fmt(t["gflops_fwd_bwd"], ".2f"), fmt(speedup, ".1f") + "x", fmt(e["act_peak_mb"]),
                      fmt(t["act_peak_mb"]), fmt(mem_ratio, ".2f"), fmt(e["fwd_vs_dense"], ".2f"),
                      fmt(e["fwd_bwd_vs_dense"], ".2f"), fmt(e["dense_gflops"]),
                      fmt(t.get("dense_gflops"), ".2f")])
    print()
    if a.markdown:
        head += ["CPU use eng / torch", "others eng / torch"]
        for row, r in zip(table, rows):
            row += [f"{r['engine_cpu']:.2f} / {r['torch_cpu']:.2f}",
                    f"{fmt(r['others'][0], '.2f')} / {fmt(r['others'][1], '.2f')}"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))))
        for row in table:
            print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print("\nGFLOP/s of the expert matmuls (fwd+bwd = 3x fwd FLOPs), medians; dense = best rep of the "
          "same side's dense GEMM\n(engine: kernels::gemm cpu; torch: torch.mm). act = peak of one "
          "fwd+bwd beyond params, inputs and gradients (MiB).")
    for r in rows:
        busy = ""
        if r["busy_before"][0] is not None:
            busy = (f" CPUs busy before the runs (2 s sample): engine {100 * r['busy_before'][0]:.0f}%, "
                    f"torch {100 * (r['busy_before'][1] or 0):.0f}% (waited {r['waited']:.0f} s);")
        print(f"  {r['shape']}: load before {r['load_before']:.2f};{busy} engine peak_reset "
              f"{r['engine'].get('peak_reset')}, torch peak_reset {r['torch'].get('peak_reset')}; "
              f"CPU use (user+sys)/wall: engine {r['engine_cpu']:.2f}, torch {r['torch_cpu']:.2f} "
              f"(of {a.threads} threads); other processes during the runs: engine "
              f"{fmt(r['others'][0], '.2f')}, torch {fmt(r['others'][1], '.2f')} CPUs")

    # ---- the goals ----
    print("\ngoals (the issue's figures are for the full shapes; quick shapes only exercise the tools):")
    for r in rows:
        e, t = r["engine"], r["torch"]
        # The machine's dense ceiling: the faster of the engine's kernels::gemm and torch.mm.
        dense = max(e["dense_gflops"], t.get("dense_gflops") or 0.0)
        vs = (e["gflops_fwd"] / dense, e["gflops_fwd_bwd"] / dense)
        g1 = min(vs) >= GOAL_VS_DENSE
        goal = GOAL_SPEEDUP[family(r["shape"])]
        g2 = r["speedup"] is not None and r["speedup"] >= goal
        g3 = r["mem_ratio"] is not None and r["mem_ratio"] <= GOAL_MEM_RATIO
        g4 = r["bf16"]["bf16_vs_f32_fwd"] >= GOAL_BF16
        print(f"  {r['shape']}: (1) fwd, fwd+bwd >= {GOAL_VS_DENSE:.2f} x best dense ({dense:.1f} GFLOP/s): "
              f"{'met' if g1 else 'missed'} ({vs[0]:.2f}, {vs[1]:.2f}); "
              f"(2) speed-up >= {goal:.0f}x: {'met' if g2 else 'missed'} ({fmt(r['speedup'], '.1f')}x); "
              f"(3) act memory <= {GOAL_MEM_RATIO} x torch: {'met' if g3 else 'missed'} "
              f"({fmt(r['mem_ratio'], '.2f')}); (4) bf16-weight forward >= {GOAL_BF16}x the f32 forward "
              f"(same run): {'met' if g4 else 'missed'} ({r['bf16']['bf16_vs_f32_fwd']:.2f}x, "
              f"{r['bf16']['gflops_fwd']:.1f} GFLOP/s)")

    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"threads": a.threads, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
