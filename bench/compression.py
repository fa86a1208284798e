#!/usr/bin/env python3
"""Every compression method of moe.cpp on one model, side by side (docs/COMPRESSION.md).

Makes each compressed variant of --base with the `moe` tool (skipped when its folder already holds a
checkpoint), runs `moe eval --compare BASE` on each over the same held-out tokens, and writes

  * a Markdown table: checkpoint size, routed-expert bytes, perplexity, KL(base || model) and top-1
    agreement with the base, and whether the variant is on the Pareto front of (size, KL);
  * an SVG plot of checkpoint size against KL with the Pareto front drawn (no plotting library);
  * the raw figures as JSON.

    python3 bench/compression.py --moe build/moe --base runs/t16 --work /tmp/compress \\
        --calibration /tmp/calib.txt --data runs/t16/data/val.bin \\
        --student distilled=runs/student_kd --student student=runs/student_nokd \\
        --md /tmp/compress/table.md --svg docs/img/compression.svg --json /tmp/compress/results.json

A variant is a list of steps; each step is one `moe` command that reads the previous step's folder
(the base for the first) and writes its own. --only NAME[,NAME] runs a subset.
"""
import argparse
import json
import os
import struct
import subprocess
import sys


def variants(keep_half, keep_quarter):
    """name -> list of (subcommand, extra args). {in} and {out} are filled in per step."""
    q8 = ("quantize", ["--bits", "8"])
    q4 = ("quantize", ["--bits", "4"])
    prune = lambda k: ("prune", ["--keep", str(k), "--calibration", "{calib}"])
    # merge's best flags on the models measured in docs/MERGING.md; "merge K defaults" for its defaults
    merge = lambda k: ("merge", ["--keep", str(k), "--calibration", "{calib}", "--shares", "usage-sim",
                                 "--router", "average"])
    merge_defaults = lambda k: ("merge", ["--keep", str(k), "--calibration", "{calib}"])
    merge_refit = lambda k: ("merge", ["--keep", str(k), "--calibration", "{calib}", "--shares", "usage-sim",
                                       "--router", "average", "--refit-down", "0.1"])
    low_rank = lambda r, *extra: ("compress", ["--ratio", str(r), *extra])
    h, q = keep_half, keep_quarter
    return {
        "int8": [q8],
        "int4": [q4],
        f"prune {h}": [prune(h)],
        f"prune {q}": [prune(q)],
        f"merge {h}": [merge(h)],
        f"merge {q}": [merge(q)],
        f"merge {h} defaults": [merge_defaults(h)],
        f"merge {h} refit": [merge_refit(h)],
        f"merge {q} refit": [merge_refit(q)],
        "low-rank 0.5": [low_rank(0.5)],
        "low-rank 0.25": [low_rank(0.25)],
        "low-rank 0.5 shared base": [low_rank(0.5, "--shared-base")],
        "low-rank 0.25 shared base": [low_rank(0.25, "--shared-base")],
        "low-rank 0.5 calibrated": [low_rank(0.5, "--calibration", "{calib}")],
        "low-rank 0.25 calibrated": [low_rank(0.25, "--calibration", "{calib}")],
        f"prune {h} + int8": [prune(h), q8],
        f"merge {h} + int8": [merge(h), q8],
        f"merge {h} + int4": [merge(h), q4],
        f"merge {h} refit + int4": [merge_refit(h), q4],
        f"prune {h} + int4": [prune(h), q4],
    }


def model_folder(d):
    """The folder holding config.json: d itself, or a training run's checkpoint/."""
    if not os.path.exists(os.path.join(d, "config.json")) and os.path.exists(os.path.join(d, "checkpoint", "config.json")):
        return os.path.join(d, "checkpoint")
    return d


def slug(name):
    return "".join(c if c.isalnum() else "_" for c in name)


def safetensors_bytes(folder):
    """(all tensor bytes, routed-expert tensor bytes) over the folder's *.safetensors headers."""
    total = experts = 0
    folder = model_folder(folder)
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".safetensors") or f.startswith("optimizer"):  # a run's Adam moments are not the model
            continue
        with open(os.path.join(folder, f), "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b = info["data_offsets"][1] - info["data_offsets"][0]
            total += b
            if ".experts." in name:
                experts += b
    return total, experts


def run(cmd, log):
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(p.stdout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}")
    return p.stdout


def evaluate(a, model, log):
    cmd = [a.moe, "eval", "--model", model, "--data", a.data, "--compare", a.base, "--json",
           "--threads", str(a.threads)]
    out = run(cmd, log)
    return json.loads(out.strip().splitlines()[-1])


def pareto(points):
    """Indices of the points not dominated in (size, kl): no other is <= in both and < in one."""
    front = []
    for i, (s, k) in enumerate(points):
        if not any((s2 <= s and k2 <= k) and (s2 < s or k2 < k) for j, (s2, k2) in enumerate(points) if j != i):
            front.append(i)
    return front


def svg_plot(rows, path):
    W, H, L, R, T, B = 900, 520, 70, 130, 30, 50
    xs = [r["size_mib"] for r in rows]
    ys = [max(r["kl_mean"], 1e-6) for r in rows]
    import math
    x0, x1 = 0, max(xs) * 1.05
    ly = [math.log10(y) for y in ys]
    y0, y1 = math.floor(min(ly)), math.ceil(max(ly) + 0.3)
    if y1 == y0:
        y1 = y0 + 1
    X = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
    Y = lambda y: T + (1 - (math.log10(y) - y0) / (y1 - y0)) * (H - T - B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>']
    step = max(1, round((x1 - x0) / 8))
    v = 0
    while v <= x1:
        out.append(f'<line x1="{X(v):.1f}" y1="{H-B}" x2="{X(v):.1f}" y2="{H-B+4}" stroke="black"/>')
        out.append(f'<text x="{X(v):.1f}" y="{H-B+16}" text-anchor="middle">{v:g}</text>')
        v += step
    for e in range(y0, y1 + 1):
        out.append(f'<line x1="{L-4}" y1="{Y(10**e):.1f}" x2="{W-R}" y2="{Y(10**e):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L-6}" y="{Y(10**e)+4:.1f}" text-anchor="end">1e{e}</text>')
    out.append(f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">checkpoint size (MiB)</text>')
    out.append(f'<text x="16" y="{(T+H-B)/2}" text-anchor="middle" transform="rotate(-90 16 {(T+H-B)/2})">'
               'KL(base || model), nats per token (log)</text>')
    front = sorted((i for i, r in enumerate(rows) if r["pareto"]), key=lambda i: xs[i])
    if len(front) > 1:
        pts = " ".join(f"{X(xs[i]):.1f},{Y(ys[i]):.1f}" for i in front)
        out.append(f'<polyline points="{pts}" fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="5,3"/>')
    placed = []  # label boxes (x0, y0, x1, y1) already drawn: a label moves down until it overlaps none

    def free(b):
        return all(b[2] < o[0] or b[0] > o[2] or b[3] < o[1] or b[1] > o[3] for o in placed)

    for i in sorted(range(len(rows)), key=lambda i: ys[i]):
        r = rows[i]
        color = "#d62728" if r["pareto"] else "#1f77b4"
        cx, cy = X(xs[i]), Y(ys[i])
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{color}"/>')
        w = 6.2 * len(r["name"])
        for dy in [-5 + 12 * (n // 2 + 1) * (1 if n % 2 else -1) + 12 for n in range(16)]:
            box = (cx + 6, cy + dy - 10, cx + 6 + w, cy + dy + 2)
            if free(box):
                break
        placed.append(box)
        if abs(box[3] - 2 - (cy - 5)) > 1:  # a moved label points at its dot
            ly = box[3] - 4
            out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{cx+6:.1f}" y2="{ly:.1f}" stroke="{color}" stroke-width="0.7"/>')
        out.append(f'<text x="{cx+6:.1f}" y="{box[3]-2:.1f}" fill="{color}">{r["name"]}</text>')
    lx = W - R + 12
    out.append(f'<circle cx="{lx}" cy="{T+6}" r="4" fill="#d62728"/><text x="{lx+8}" y="{T+10}">Pareto front</text>')
    out.append(f'<circle cx="{lx}" cy="{T+24}" r="4" fill="#1f77b4"/><text x="{lx+8}" y="{T+28}">dominated</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moe", default="build/moe")
    p.add_argument("--base", required=True, help="the base model folder")
    p.add_argument("--work", required=True, help="folder for the compressed variants")
    p.add_argument("--calibration", required=True, help="calibration text for prune, merge and calibrated low rank")
    p.add_argument("--data", required=True, help="held-out text or token shard for eval --compare")
    p.add_argument("--student", action="append", default=[], help="NAME=DIR of a trained student to compare too")
    p.add_argument("--only", default="", help="comma-separated variant names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--md"), p.add_argument("--svg"), p.add_argument("--json")
    p.add_argument("--reuse", help="results JSON of an earlier run: its figures stand for the variants it has "
                                   "(redraws the table and plot without evaluating again)")
    a = p.parse_args()
    if a.reuse:
        a.reuse = {r["name"]: dict(r, top1_agreement=r["top1"]) for r in json.load(open(a.reuse))}

    cfg = json.load(open(os.path.join(model_folder(a.base), "config.json")))
    E = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    todo = variants(E // 2, E // 4)
    if a.only:
        names = [n.strip() for n in a.only.split(",")]
        todo = {n: todo[n] for n in names if n in todo}
    os.makedirs(a.work, exist_ok=True)
    log = open(os.path.join(a.work, "log.txt"), "a")
    results = []
    base_total, base_experts = safetensors_bytes(a.base)
    models = [("base", a.base)]
    for name, steps in todo.items():
        src = a.base
        for i, (sub, extra) in enumerate(steps):
            out = os.path.join(a.work, slug(name) if i == len(steps) - 1 else slug(name) + f"_step{i}")
            if not os.path.exists(os.path.join(out, "config.json")):
                args = [x.replace("{calib}", a.calibration) for x in extra]
                try:
                    run([a.moe, sub, "--model", src, "--out", out, "--overwrite", *args], log)
                except RuntimeError as e:
                    print(f"{name}: {e}", file=sys.stderr)
                    out = None
                    break
            src = out
        if src is not None:
            models.append((name, src))
    for s in a.student:
        name, _, d = s.partition("=")
        models.append((name, d))
    for name, folder in models:
        try:
            r = evaluate(a, folder, log) if a.reuse is None or name not in a.reuse else a.reuse[name]
        except RuntimeError as e:
            print(f"{name}: {e}", file=sys.stderr)
            continue
        total, experts = safetensors_bytes(folder)
        results.append({"name": name, "folder": folder, "size_mib": total / 2**20, "expert_mib": experts / 2**20,
                        "ppl": r.get("ppl"), "base_ppl": r.get("base_ppl"),
                        "kl_mean": r.get("kl_mean"), "kl_max": r.get("kl_max"),
                        "top1": r.get("top1_agreement"), "tokens": r.get("tokens")})
        print(f"{name}: {results[-1]}", flush=True)
    # The Pareto front of the compressed models (the base, KL 0 at full size, is the reference).
    compressed = [r for r in results if r["name"] != "base"]
    front = pareto([(r["size_mib"], r["kl_mean"]) for r in compressed])
    for r in results:
        r["pareto"] = False
    for i in front:
        compressed[i]["pareto"] = True
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)
    if a.md:
        lines = ["| model | checkpoint MiB | routed experts MiB | perplexity | vs base | KL(base ‖ model) | top-1 agreement | Pareto |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in results:
            d = 100 * (r["ppl"] / r["base_ppl"] - 1)
            lines.append(f"| {r['name']} | {r['size_mib']:.2f} | {r['expert_mib']:.2f} | {r['ppl']:.2f} | {d:+.2f}% | "
                         f"{r['kl_mean']:.4f} | {100*r['top1']:.1f}% | {'yes' if r['pareto'] else ''} |")
        open(a.md, "w").write("\n".join(lines) + "\n")
    if a.svg:  # the base is the reference (KL 0), not a point
        svg_plot([r for r in results if r["name"] != "base"], a.svg)


if __name__ == "__main__":
    main()
