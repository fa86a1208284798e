#!/usr/bin/env python3
"""Training loss curves of several `moe train` runs side by side, as one SVG (no plotting library).

Reads each run's metrics.jsonl (records of type "step" and "eval", each with "step" and "loss"), draws the
training loss (a moving average over --smooth steps, thin) and the validation loss (points, thick) of
every run on shared axes, and prints each run's last validation loss and its difference from the
first run's.

    python3 bench/plot_loss_curves.py --out docs/img/bf16_vs_f32_loss.svg f32=runs/f32 bf16=runs/bf16
"""
import argparse
import json
import os
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def read_run(path):
    steps, vals = [], []
    with open(os.path.join(path, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") == "eval" and "loss" in r:
                vals.append((r["step"], r["loss"]))
            elif r.get("type") == "step" and "loss" in r:
                steps.append((r["step"], r["loss"]))
    if not steps:
        raise SystemExit(f"{path}: no step records in metrics.jsonl")
    return steps, vals


def smooth(points, n):
    out, acc = [], []
    for s, v in points:
        acc.append(v)
        if len(acc) > n:
            acc.pop(0)
        out.append((s, sum(acc) / len(acc)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--smooth", type=int, default=20)
    p.add_argument("--title", default="training loss")
    a = p.parse_args()
    runs = []
    for spec in a.runs:
        label, _, path = spec.partition("=")
        if not path:
            p.error(f"'{spec}' is not LABEL=RUN_DIR")
        steps, vals = read_run(path)
        runs.append((label, smooth(steps, a.smooth), vals))
    xs = [s for _, st, _ in runs for s, _ in st]
    ys = [v for _, st, va in runs for _, v in st + va]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    W, H, L, R, T, B = 720, 420, 60, 20, 40, 50

    def px(x):
        return L + (x - x0) / max(x1 - x0, 1e-9) * (W - L - R)

    def py(y):
        return T + (y1 - y) / max(y1 - y0, 1e-9) * (H - T - B)

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{a.title}</text>',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
           f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">step</text>',
           f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">loss</text>']
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        svg.append(f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        svg.append(f'<line x1="{L}" y1="{py(y):.1f}" x2="{W - R}" y2="{py(y):.1f}" stroke="#eee"/>')
        x = x0 + (x1 - x0) * i / 5
        svg.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{x:.0f}</text>')
    for k, (label, st, va) in enumerate(runs):
        c = COLORS[k % len(COLORS)]
        pts = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in st)
        svg.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1" opacity="0.8"/>')
        for s, v in va:
            svg.append(f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="3.5" fill="{c}"/>')
        last = f"{va[-1][1]:.4f}" if va else "-"
        svg.append(f'<text x="{W - R}" y="{T + 18 * (k + 1)}" text-anchor="end" fill="{c}">{label}: train (moving average of '
                   f'{a.smooth}), val {last} (dots)</text>')
    svg.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(svg) + "\n")
    base = runs[0][2][-1][1] if runs[0][2] else None
    for label, _, va in runs:
        if va:
            d = f" ({100 * (va[-1][1] - base) / base:+.2f}% against {runs[0][0]})" if base else ""
            print(f"{label}: final val loss {va[-1][1]:.5f} at step {va[-1][0]}{d}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
