#!/usr/bin/env python3
"""Expert-parallel serving on this machine: one process against `mpirun -np N ... --expert-parallel N`,
and `moe plan --serve` predictions against the measurements.

  python3 bench/ep_serving.py --model models/mixtral-1b [--formats f32,bf16] [--ranks 2,4]
      [--concurrency 1,16] [--rounds 3] [--prompt-tokens 128] [--new-tokens 32]

Per round and format: `moe bench generate --json` in one process (all threads), then under mpirun
with each rank count (threads per rank: the cores over the ranks); medians of the rounds. Then
`moe plan --serve --calibrate` with the one-process JSON of the median round, and the ratio of each
prediction to the measurement. Prints a Markdown table; --json-out FILE keeps everything, and --from-json FILE makes the table
(and the plan) again from those measurements without running them.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MOE = os.path.join(HERE, "..", "build", "moe")


def mpirun(n):
    cmd = [shutil.which("mpirun") or "mpirun", "--oversubscribe", "-np", str(n)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def bench(a, fmt, n):
    cmd = [MOE, "bench", "generate", "--model", a.model, "--json", "--concurrency", a.concurrency,
           "--prompt-tokens", str(a.prompt_tokens), "--new-tokens", str(a.new_tokens),
           "--bandwidth-mib", "512"]
    if fmt == "bf16":
        cmd.append("--bf16")
    if n > 1:
        cmd = mpirun(n) + cmd + ["--expert-parallel", str(n)]
    env = dict(os.environ, OMPI_MCA_btl_vader_single_copy_mechanism="none")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    line = [l for l in p.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def level(j, c):
    return next(l for l in j["levels"] if l["concurrency"] == c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--formats", default="f32,bf16")
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--json-out")
    ap.add_argument("--from-json", help="the --json-out of an earlier run: its measurements, the plan again")
    a = ap.parse_args()
    earlier = None
    if a.from_json:
        with open(a.from_json) as f:
            earlier = json.load(f)
    ranks = [int(x) for x in a.ranks.split(",")]
    concs = [int(x) for x in a.concurrency.split(",")]
    out = {"model": a.model, "rounds": a.rounds, "formats": {}}
    rows = []
    for fmt in a.formats.split(","):
        runs = {n: [] for n in [1] + ranks}
        if earlier:
            runs = {int(n): js for n, js in earlier["formats"][fmt]["runs"].items()}
        for r in range(0 if earlier else a.rounds):
            for n in [1] + ranks:  # alternated: one process, then each rank count
                runs[n].append(bench(a, fmt, n))
                print(f"# {fmt} round {r + 1} ranks {n}: " + ", ".join(
                    f"c{c} {level(runs[n][-1], c)['decode_tokens_per_s']:.2f} tok/s" for c in concs),
                    file=sys.stderr)
        med = {n: {c: statistics.median(level(j, c)["decode_tokens_per_s"] for j in runs[n]) for c in concs}
               for n in runs}
        # The one-process round closest to the median calibrates the plan.
        calib = min(runs[1], key=lambda j: abs(level(j, concs[0])["decode_tokens_per_s"] - med[1][concs[0]]))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(calib, f)
            calib_path = f.name
        plan = subprocess.run([MOE, "plan", "--serve", "--model", a.model, "--format", fmt, "--json",
                               "--ranks", ",".join(str(n) for n in [1] + ranks), "--concurrency", a.concurrency,
                               "--context", str(a.prompt_tokens + a.new_tokens // 2), "--calibrate", calib_path],
                              capture_output=True, text=True, check=True)
        os.unlink(calib_path)
        pred = {(p["ranks"], p["concurrency"]): p for p in json.loads(plan.stdout)["predictions"]}
        rss = {n: statistics.median(max(j.get("rank_peak_rss_mib", [j.get("peak_rss_mib", 0)])) for j in runs[n])
               for n in runs}
        for n in [1] + ranks:
            for c in concs:
                p = pred[(n, c)]
                rows.append((fmt, n, c, med[n][c], med[n][c] / med[1][c], p["tokens_per_s"],
                             p["tokens_per_s"] / med[n][c], rss[n], p["memory_per_rank_mib"]))
        out["formats"][fmt] = {"runs": {str(n): runs[n] for n in runs}, "plan": json.loads(plan.stdout)}
    print("| format | ranks | concurrency | decode tok/s (median) | vs 1 process | plan --serve tok/s | "
          "plan / measured | peak RSS per rank MiB (largest) | plan MiB per rank |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, n, c, m, rel, p, pr, rss, pm in rows:
        print(f"| {fmt} | {n} | {c} | {m:.2f} | {rel:.2f} | {p:.2f} | {pr:.2f} | {rss:.0f} | {pm:.0f} |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
