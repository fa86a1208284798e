#!/usr/bin/env python3
"""Load test of a running `moe serve` (or any OpenAI-compatible server): a fixed number of
requests at each concurrency level, then throughput and latency percentiles per level.

    build/moe serve --model RUN_DIR --port 8080 &
    bench/load_test.py --url http://127.0.0.1:8080 --requests 64 --concurrency 1,4,16 --max-tokens 64

For each level: requests/s, generated tokens/s (from the responses' usage), latency p50/p90/p99
and, with --stream (the default), time to first token p50/p90/p99. Bounded: every level sends
exactly --requests requests and every request has a timeout, so it always ends. Standard library
only. Not a test: it prints figures, it checks nothing but that the requests succeed.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse

PROMPTS = ["The ", "Once upon a time", "Science is", "Q: What is love?\nA:", "In the beginning", "A man walks into",
           "The meaning of life", "Why is the sky blue?"]


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(url, args, i):
    """(latency_s, ttft_s or None, completion_tokens) of request i."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=args.timeout)
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens, "temperature": args.temperature,
            "seed": i, "ignore_eos": args.ignore_eos}
    if args.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = "Bearer " + args.api_key
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    ttft, tokens = None, 0
    if args.stream:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            ev = json.loads(line[6:])
            if ev.get("choices") and ev["choices"][0].get("text") and ttft is None:
                ttft = time.perf_counter() - t0
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    else:
        tokens = json.loads(r.read())["usage"]["completion_tokens"]
    conn.close()
    return time.perf_counter() - t0, ttft, tokens


def run_level(url, args, concurrency):
    results, errors = [], []
    lock = threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= args.requests:
                    return
                next_i[0] += 1
            try:
                res = one_request(url, args, i)
                with lock:
                    results.append(res)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = [r[0] for r in results]
    ttft = [r[1] for r in results if r[1] is not None]
    tokens = sum(r[2] for r in results)
    return {"concurrency": concurrency, "ok": len(results), "errors": len(errors), "first_error": errors[:1],
            "wall_s": wall, "req_per_s": len(results) / wall, "tokens_per_s": tokens / wall,
            "latency_p50": percentile(lat, 0.5), "latency_p90": percentile(lat, 0.9), "latency_p99": percentile(lat, 0.99),
            "ttft_p50": percentile(ttft, 0.5), "ttft_p90": percentile(ttft, 0.9), "ttft_p99": percentile(ttft, 0.99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--ignore-eos", action="store_true", help="always generate max-tokens tokens")
    ap.add_argument("--no-stream", dest="stream", action="store_false", help="whole responses (no TTFT)")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--json", action="store_true", help="one JSON line per level instead of the table")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.requests < 1 or not levels or min(levels) < 1:
        ap.error("--requests and every --concurrency level must be >= 1")
    if not args.json:
        print(f"{'conc':>4} {'ok':>5} {'err':>4} {'req/s':>8} {'tok/s':>9} {'lat p50':>8} {'p90':>8} {'p99':>8}"
              f" {'ttft p50':>9} {'p90':>8} {'p99':>8}   (seconds)")
    failed = False
    for c in levels:
        r = run_level(args.url, args, c)
        failed |= r["errors"] > 0
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{c:>4} {r['ok']:>5} {r['errors']:>4} {r['req_per_s']:>8.2f} {r['tokens_per_s']:>9.1f}"
                  f" {r['latency_p50']:>8.3f} {r['latency_p90']:>8.3f} {r['latency_p99']:>8.3f}"
                  f" {r['ttft_p50']:>9.3f} {r['ttft_p90']:>8.3f} {r['ttft_p99']:>8.3f}")
            if r["first_error"]:
                print("     first error:", r["first_error"][0])
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
