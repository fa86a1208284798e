#!/usr/bin/env python3
"""moe.cpp against llama.cpp on the same checkpoint, format by format, alternated runs.

    python3 bench/compare_llamacpp.py --model models/mixtral-1b [--llama-bin DIR] [--threads 2]
        [--prompt-tokens 128] [--new-tokens 32] [--rounds 3] [--formats f32,bf16,q8_0,q4_0]
        [--concurrency 1,16] [--work DIR] [--json]

The checkpoint (a Hugging Face directory of f32 weights) is written as GGUF by `moe export --gguf`
(f32), which llama.cpp's own `llama-quantize` turns into bf16, q8_0 and q4_0; the engine runs the same
weights in its matching formats:

    f32   the checkpoint                             f32 GGUF
    bf16  --bf16                                     bf16 (llama-quantize)
    q8_0  `moe quantize --bits 8 --group-size 32`,   q8_0: int8 weights, one scale per 32, int8
          --expert-format w8a8 --linear-format w8a8  activations per 32 in its dot products
    q4_0  `moe quantize --bits 4 --group-size 32`,   q4_0: 4-bit weights, one scale per 32, q8_0
          --expert-format w4a8 --linear-format w4a8  activations
          (the embedding and the norms stay f32 here; llama.cpp keeps the norms f32 and quantizes the
          embedding table, of which a token reads one row)

Each round runs, per format, `llama-bench` (prompt processing of P tokens, then P + G with G
generated, `-r 1`) and `moe bench generate --concurrency 1` with the same P, G and threads, one after
the other, and with --concurrency levels above 1 `llama-batched-bench -npl C` against
`moe bench generate --concurrency C`. Medians over the rounds; ratios are moe.cpp / llama.cpp (above 1:
moe.cpp is faster). The peak resident set of a llama.cpp run comes from /usr/bin/time; moe.cpp's is
the one `bench generate` reports (its VmHWM before the read-bandwidth probe, whose buffer would count
otherwise). moe.cpp's
`bench generate` also prints the weight bytes a token reads and the machine's read bandwidth, measured
in the same process, which are reported next to the rates.

llama.cpp's tools: --llama-bin, else the folder that ../shared/peers/llama-cpp.sh prints (it builds them
once from the llama-cpp-python source package).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FORMATS = {
    "f32": {"ours": [], "quant_bits": 0},
    "bf16": {"ours": ["--bf16"], "quant_bits": 0},
    "q8_0": {"ours": ["--bf16", "--expert-format", "w8a8", "--linear-format", "w8a8"], "quant_bits": 8},
    "q4_0": {"ours": ["--bf16", "--expert-format", "w4a8", "--linear-format", "w4a8"], "quant_bits": 4},
}


def run(cmd, env=None):
    """Runs cmd under /usr/bin/time; returns (stdout, peak RSS in MiB)."""
    full = ["/usr/bin/time", "-f", "MAXRSS %M"] + cmd
    p = subprocess.run(full, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"compare_llamacpp: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    m = re.findall(r"MAXRSS (\d+)", p.stderr)
    return p.stdout, (int(m[-1]) / 1024.0 if m else float("nan"))


def llama_bin(args):
    if args.llama_bin:
        return args.llama_bin
    script = os.path.join(ROOT, "..", "shared", "peers", "llama-cpp.sh")
    out = subprocess.run(["bash", script], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def prepare(args, moe, lbin):
    """GGUF files per format, and the engine's checkpoint per format."""
    os.makedirs(args.work, exist_ok=True)
    f32 = os.path.join(args.work, "model-f32.gguf")
    if not os.path.exists(f32):
        run([moe, "export", "--model", args.model, "--gguf", f32, "--type", "f32"])
    files, ours = {}, {}
    for f in args.formats:
        if f == "f32":
            files[f] = f32
        else:
            files[f] = os.path.join(args.work, f"model-{f}.gguf")
            if not os.path.exists(files[f]):
                run([os.path.join(lbin, "llama-quantize"), f32, files[f], f])
        bits = FORMATS[f]["quant_bits"]
        if bits:
            d = os.path.join(args.work, f"moe-int{bits}")
            if not os.path.exists(os.path.join(d, "config.json")):
                run([moe, "quantize", "--model", args.model, "--out", d, "--bits", str(bits), "--group-size", "32",
                     "--overwrite"])
            ours[f] = d
        else:
            ours[f] = args.model
    return files, ours


def llama_single(lbin, gguf, args):
    out, rss = run([os.path.join(lbin, "llama-bench"), "-m", gguf, "-p", str(args.prompt_tokens), "-n",
                    str(args.new_tokens), "-t", str(args.threads), "-r", "1", "-o", "json"])
    rows = json.loads(out)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    return pp, tg, rss


def llama_batched(lbin, gguf, args, c):
    out, _ = run([os.path.join(lbin, "llama-batched-bench"), "-m", gguf, "-npp", str(args.prompt_tokens), "-ntg",
                  str(args.new_tokens), "-npl", str(c), "-t", str(args.threads), "-c",
                  str(c * (args.prompt_tokens + args.new_tokens) + 64), "--output-format", "jsonl"])
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)["speed_tg"]
    sys.exit("compare_llamacpp: no result line from llama-batched-bench")


def ours_run(moe, model, extra, args, levels):
    out, rss = run([moe, "bench", "generate", "--model", model, "--concurrency", ",".join(map(str, levels)),
                    "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--threads",
                    str(args.threads), "--json"] + extra)
    return json.loads(out.strip().splitlines()[-1]), rss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face directory of f32 weights")
    ap.add_argument("--moe", default=os.path.join(ROOT, "build", "moe"))
    ap.add_argument("--llama-bin", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--formats", default="f32,bf16,q8_0,q4_0")
    ap.add_argument("--concurrency", default="1", help="levels; above 1 adds llama-batched-bench")
    ap.add_argument("--work", default="", help="where the GGUF files and quantized checkpoints go")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.formats = [f for f in args.formats.split(",") if f]
    for f in args.formats:
        if f not in FORMATS:
            sys.exit(f"compare_llamacpp: unknown format {f} ({', '.join(FORMATS)})")
    levels = sorted({int(c) for c in args.concurrency.split(",")} | {1})
    args.work = args.work or os.path.join(args.model.rstrip("/") + "-llamacpp")
    lbin = llama_bin(args)
    files, ours = prepare(args, args.moe, lbin)
    res = {f: {"llama_pp": [], "llama_tg": [], "llama_rss": [], "moe_pp": [], "moe_tg": [], "moe_rss": [],
               "llama_batched": {c: [] for c in levels if c > 1}, "moe_batched": {c: [] for c in levels if c > 1}}
           for f in args.formats}
    info = {}
    for rnd in range(args.rounds):
        for f in args.formats:
            r = res[f]
            pp, tg, rss = llama_single(lbin, files[f], args)
            r["llama_pp"].append(pp), r["llama_tg"].append(tg), r["llama_rss"].append(rss)
            for c in r["llama_batched"]:
                r["llama_batched"][c].append(llama_batched(lbin, files[f], args, c))
            j, rss = ours_run(args.moe, ours[f], FORMATS[f]["ours"], args, levels)
            lv = {x["concurrency"]: x for x in j["levels"]}
            r["moe_pp"].append(lv[1]["prefill_tokens_per_s"]), r["moe_tg"].append(lv[1]["decode_tokens_per_s"])
            r["moe_rss"].append(j.get("peak_rss_mib", rss))
            for c in r["moe_batched"]:
                r["moe_batched"][c].append(lv[c]["decode_tokens_per_s"])
            info[f] = {k: j.get(k) for k in ("weight_bytes_per_token", "read_bandwidth_gb_per_s")}
            print(f"round {rnd + 1} {f}: llama pp {pp:.1f} tg {tg:.2f} | moe pp {r['moe_pp'][-1]:.1f} "
                  f"tg {r['moe_tg'][-1]:.2f}", file=sys.stderr)
    med = statistics.median
    table = []
    for f in args.formats:
        r = res[f]
        row = {"format": f, "llama_prefill": med(r["llama_pp"]), "moe_prefill": med(r["moe_pp"]),
               "llama_decode": med(r["llama_tg"]), "moe_decode": med(r["moe_tg"]),
               "llama_rss_mib": med(r["llama_rss"]), "moe_rss_mib": med(r["moe_rss"]),
               "moe_weight_bytes_per_token": info[f]["weight_bytes_per_token"],
               "read_bandwidth_gb_per_s": info[f]["read_bandwidth_gb_per_s"]}
        row["prefill_ratio"] = row["moe_prefill"] / row["llama_prefill"]
        row["decode_ratio"] = row["moe_decode"] / row["llama_decode"]
        row["moe_decode_gb_per_s"] = row["moe_decode"] * (row["moe_weight_bytes_per_token"] or 0) / 1e9
        for c in r["llama_batched"]:
            row[f"llama_decode_c{c}"] = med(r["llama_batched"][c])
            row[f"moe_decode_c{c}"] = med(r["moe_batched"][c])
            row[f"decode_ratio_c{c}"] = row[f"moe_decode_c{c}"] / row[f"llama_decode_c{c}"]
        table.append(row)
    if args.json:
        print(json.dumps({"threads": args.threads, "prompt_tokens": args.prompt_tokens,
                          "new_tokens": args.new_tokens, "rounds": args.rounds, "rows": table}))
        return
    print(f"threads {args.threads}, prompt {args.prompt_tokens}, {args.new_tokens} new tokens, medians of "
          f"{args.rounds} alternated rounds; ratio = moe.cpp / llama.cpp")
    extra = [c for c in levels if c > 1]
    head = "| format | prefill moe / llama | ratio | decode moe / llama | ratio | moe GB/s (of read bw) |"
    head += "".join(f" decode c{c} moe / llama | ratio |" for c in extra) + " peak RSS moe / llama MiB |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in table:
        bw = row["read_bandwidth_gb_per_s"] or 0
        line = (f"| {row['format']} | {row['moe_prefill']:.1f} / {row['llama_prefill']:.1f} | "
                f"{row['prefill_ratio']:.2f} | {row['moe_decode']:.1f} / {row['llama_decode']:.1f} | "
                f"{row['decode_ratio']:.2f} | {row['moe_decode_gb_per_s']:.1f} ({bw:.1f}) |")
        for c in extra:
            line += (f" {row[f'moe_decode_c{c}']:.1f} / {row[f'llama_decode_c{c}']:.1f} | "
                     f"{row[f'decode_ratio_c{c}']:.2f} |")
        line += f" {row['moe_rss_mib']:.0f} / {row['llama_rss_mib']:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
