#!/usr/bin/env python3
"""End-to-end tests of `moe train`, `moe eval` and `moe generate` on a tiny model.

  train_cli_test.py MOE_BINARY CASE

CASE is one of: smoke, resume, kill, nan, errors. Each runs the real binary in a temporary
directory on a small slice of the fortunes corpus (exits 77 = skipped when it is not installed).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

FORTUNES = "/usr/share/games/fortunes"
TINY = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--experts", "4", "--top-k", "2",
        "--expert-width", "32", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "8", "--threads", "2",
        "--warmup", "5", "--lr", "3e-3", "--eval-batches", "2", "--log-every", "5"]


def run(cmd, check_rc=0, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check_rc is not None and p.returncode != check_rc:
        print("command:", " ".join(cmd))
        print("stdout:", p.stdout[-4000:])
        print("stderr:", p.stderr[-4000:])
        raise SystemExit(f"FAIL: exit code {p.returncode}, expected {check_rc}")
    return p


def metrics(run_dir):
    """Step losses by step (the later line for a step wins, as after a resume)."""
    losses, skips, evals = {}, [], []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if j["type"] == "step":
                losses[j["step"]] = j["loss"]
            elif j["type"] == "skip":
                skips.append(j)
            elif j["type"] == "eval":
                evals.append(j)
    return losses, skips, evals


def check(cond, msg):
    if not cond:
        raise SystemExit("FAIL: " + msg)


def main():
    moe, case = sys.argv[1], sys.argv[2]
    if not os.path.isdir(FORTUNES):
        print("skipped: the fortunes package is not installed")
        return 77
    tmp = tempfile.mkdtemp(prefix="moe_train_test_")
    data = os.path.join(tmp, "corpus.txt")
    with open(data, "w") as f:  # ~160 KB of English
        for name in ("literature", "people", "science"):
            with open(os.path.join(FORTUNES, name), errors="replace") as g:
                f.write(g.read())
    try:
        globals()["case_" + case](moe, tmp, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")
    return 0


def train(moe, out, data, *extra, rc=0):
    return run([moe, "train", "--out", out, "--data", data, *TINY, *extra], check_rc=rc)


def case_smoke(moe, tmp, data):
    out = os.path.join(tmp, "run")
    p = train(moe, out, data, "--steps", "60", "--eval-every", "30", "--checkpoint-every", "30")
    check("loss" in p.stdout and "tok/s" in p.stdout and "imbalance" in p.stdout, "progress line:\n" + p.stdout)
    losses, skips, evals = metrics(out)
    check(sorted(losses) == list(range(1, 61)), f"steps logged: {sorted(losses)}")
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(56, 61)) / 5
    print(f"loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    check(last < first - 0.5, f"loss did not fall: {first:.3f} -> {last:.3f}")
    check(len(evals) == 2 and not skips, f"evals {evals}, skips {skips}")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "trainer_state.json"):
        check(os.path.exists(os.path.join(out, "checkpoint", f)), "checkpoint file " + f)
    cfg = json.load(open(os.path.join(out, "checkpoint", "config.json")))
    check(cfg["model_type"] == "qwen3_moe" and cfg["num_experts"] == 4, str(cfg))
    # eval: on the run directory, from text and from token ids.
    e = json.loads(run([moe, "eval", "--model", out, "--data", data, "--json", "--seq-len", "32"]).stdout)
    check(e["tokens"] > 1000 and 0 < e["loss"] < 7 and abs(e["ppl"] - 2.718281828 ** e["loss"]) < 1e-6 * e["ppl"],
          str(e))
    e2 = json.loads(run([moe, "eval", "--model", os.path.join(out, "checkpoint"), "--tokens", "5,9,11,40,2,7",
                         "--json"]).stdout)
    check(e2["tokens"] == 5, str(e2))
    # eval on the run's validation shard; top-p routing at inference lowers the mean k below top-k = 2.
    val = os.path.join(out, "data", "val.bin")
    e3 = json.loads(run([moe, "eval", "--model", out, "--data", val, "--json", "--seq-len", "32"]).stdout)
    check(e3["tokens"] > 100 and e3["mean_k"] == 2.0 and len(e3["mean_k_per_layer"]) == 2, str(e3))
    e4 = json.loads(run([moe, "eval", "--model", out, "--data", val, "--json", "--seq-len", "32",
                         "--router-top-p", "0.3"]).stdout)
    check(1.0 <= e4["mean_k"] < 2.0 and e4["tokens"] == e3["tokens"], str(e4))
    cut = os.path.join(tmp, "cut.bin")  # a truncated shard: one clear line, exit 2
    with open(val, "rb") as f, open(cut, "wb") as g:
        g.write(f.read(100))
    p = run([moe, "eval", "--model", out, "--data", cut], check_rc=2)
    check(p.stderr.startswith("moe: error: ") and "truncated" in p.stderr and p.stderr.count("\n") == 1, p.stderr)
    # generate: greedy is deterministic; sampling with a seed too.
    g = [json.loads(run([moe, "generate", "--model", out, "--prompt", "The ", "--max-tokens", "12",
                         "--temperature", "0", "--json"]).stdout) for _ in range(2)]
    check(g[0]["text"] == g[1]["text"] and len(g[0]["tokens"]) >= 1, str(g))
    s = [run([moe, "generate", "--model", out, "--prompt", "A", "--max-tokens", "8", "--temperature", "0.8",
              "--top-p", "0.9", "--seed", "3"]).stdout for _ in range(2)]
    check(s[0] == s[1] and s[0].startswith("A"), str(s))


def case_top_p(moe, tmp, data):
    """Training with adaptive-k routing: the progress line and the metrics report the mean k."""
    out = os.path.join(tmp, "run")
    tiny = TINY[:TINY.index("--top-k")] + TINY[TINY.index("--top-k") + 2:]
    # p = 0.52: the young router is near-uniform over 4 experts, so 2 of them hold about half the mass
    # and the count per token varies between 2 and 3 (at 0.5 it would stay 2 and the report show no plot).
    p = run([moe, "train", "--out", out, "--data", data, *tiny, "--top-k", "3", "--steps", "20",
             "--router-top-p", "0.52", "--entropy-coef", "0.01"])
    check("mean k" in p.stdout, "progress line:\n" + p.stdout)
    ks = [j["mean_k"] for j in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if j["type"] == "step"]
    check(len(ks) == 20 and all(len(k) == 2 and all(1.0 <= v <= 3.0 for v in k) for k in ks), str(ks[:3]))
    html = os.path.join(tmp, "report.html")
    run([moe, "report", out, "--out", html])
    check("plot-mean-k" in open(html).read(), "no mean-k plot in the report")
    cfg = json.load(open(os.path.join(out, "checkpoint", "config.json")))
    check(cfg["moe_cpp"]["router"]["top_p"] == 0.52 and cfg["moe_cpp"]["balance"]["entropy_coef"] == 0.01,
          str(cfg.get("moe_cpp")))
    p = run([moe, "train", "--out", os.path.join(tmp, "bad"), "--data", data, "--router-top-p", "0.5",
             "--score", "sigmoid"], check_rc=2)
    check(p.stderr.startswith("moe: error: ") and "softmax" in p.stderr, p.stderr)


def case_resume(moe, tmp, data):
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    common = ["--steps", "24", "--checkpoint-every", "8", "--eval-every", "12"]
    train(moe, a, data, *common)
    train(moe, b, data, *common, "--halt-after", "11")  # stops at step 11 with a checkpoint
    lb, _, _ = metrics(b)
    check(max(lb) == 11, f"halted run logged up to {max(lb)}")
    run([moe, "train", "--resume", b, "--threads", "2"])
    la, _, _ = metrics(a)
    lb, _, _ = metrics(b)
    check(la == lb, "resumed loss sequence differs:\n" + "\n".join(
        f"{s}: {la.get(s)} vs {lb.get(s)}" for s in sorted(set(la) | set(lb)) if la.get(s) != lb.get(s)))
    # The final weights are identical too.
    wa = open(os.path.join(a, "checkpoint", "model.safetensors"), "rb").read()
    wb = open(os.path.join(b, "checkpoint", "model.safetensors"), "rb").read()
    check(wa == wb, "final weights differ after resume")


def case_kill(moe, tmp, data):
    """SIGKILL in the middle of training; the last checkpoint is whole and resuming gives the same run."""
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    common = ["--steps", "30", "--checkpoint-every", "3", "--eval-every", "0", "--bf16"]  # bf16 compute too
    train(moe, a, data, *common)
    p = subprocess.Popen([moe, "train", "--out", b, "--data", data, *TINY, *common], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    state = os.path.join(b, "checkpoint", "trainer_state.json")
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        try:
            if json.load(open(state))["step"] >= 9:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    run([moe, "train", "--resume", b, "--threads", "2"])
    la, _, _ = metrics(a)
    lb, _, _ = metrics(b)
    check(la == lb, "loss sequence after kill + resume differs")
    opts = json.load(open(os.path.join(b, "train_options.json")))
    check(opts["bf16"] is True, "train_options.json keeps --bf16")


def case_nan(moe, tmp, data):
    out = os.path.join(tmp, "run")
    p = train(moe, out, data, "--steps", "12", "--fault-nan-step", "4")
    losses, skips, _ = metrics(out)
    check(len(skips) == 1 and skips[0]["step"] == 4 and skips[0]["reason"] == "non-finite gradient", str(skips))
    check("skipped" in p.stdout, p.stdout)
    check(all(v == v for v in losses.values()) and len(losses) == 11, str(losses))  # 12 steps, one skipped


def case_upcycle(moe, tmp, data):
    """A dense model (every layer dense) -> moe upcycle -> moe train --init continues from it."""
    dense, up, cont = os.path.join(tmp, "dense"), os.path.join(tmp, "up"), os.path.join(tmp, "cont")
    train(moe, dense, data, "--steps", "20", "--dense-layers", "0,1", "--dense-width", "64")
    cfg = json.load(open(os.path.join(dense, "checkpoint", "config.json")))
    check(cfg["mlp_only_layers"] == [0, 1], str(cfg))
    tokens = "5,9,11,40,2,7,100,3"
    e_dense = json.loads(run([moe, "eval", "--model", dense, "--tokens", tokens, "--json"]).stdout)
    u = json.loads(run([moe, "upcycle", "--model", os.path.join(dense, "checkpoint"), "--out", up, "--experts", "4",
                        "--top-k", "2", "--json"]).stdout)
    check(u["converted_layers"] == 2 and u["experts"] == 4 and u["expert_width"] == 64, str(u))
    e_up = json.loads(run([moe, "eval", "--model", up, "--tokens", tokens, "--json"]).stdout)
    check(abs(e_up["loss"] - e_dense["loss"]) < 1e-4, f"upcycled model differs: {e_dense} vs {e_up}")
    run([moe, "train", "--init", up, "--out", cont, "--data", data, "--steps", "10", "--seq-len", "32",
         "--batch-size", "8", "--threads", "2", "--eval-batches", "2"])
    losses, _, _ = metrics(cont)
    dense_losses, _, _ = metrics(dense)
    # It starts from the trained weights: its first loss is near the dense run's last, not its first.
    check(len(losses) == 10 and losses[1] < dense_losses[1] - 0.3, f"continued: {losses}, dense: {dense_losses}")
    cfg = json.load(open(os.path.join(cont, "checkpoint", "config.json")))
    check(cfg["num_experts"] == 4 and cfg["mlp_only_layers"] == [], str(cfg))
    run([moe, "upcycle", "--model", os.path.join(tmp, "nope"), "--out", up], check_rc=2)


def case_errors(moe, tmp, data):
    out = os.path.join(tmp, "run")

    def err(cmd, pattern):
        p = run(cmd, check_rc=2)
        check(p.stderr.startswith("moe: error: ") and pattern in p.stderr, f"{cmd}: {p.stderr}")

    err([moe, "train", "--out", out, "--data", os.path.join(tmp, "missing.txt")], "missing.txt")
    err([moe, "train", "--out", out, "--data", data, "--seq-len", "1"], "--seq-len")
    err([moe, "train", "--out", out, "--data", data, "--arch", "llama"], "llama")
    err([moe, "train", "--out", out, "--data", data, "--top-k", "9"], "num_experts_per_tok")
    err([moe, "train", "--resume", tmp], "not a run directory")
    err([moe, "eval", "--model", os.path.join(tmp, "nope"), "--tokens", "1,2"], "does not exist")
    err([moe, "generate", "--model", tmp, "--prompt", "x"], "neither a model directory")
    train(moe, out, data, "--steps", "3")
    err([moe, "train", "--out", out, "--data", data], "already holds a run")
    err([moe, "eval", "--model", out, "--tokens", "1,99999"], "outside the vocabulary")
    err([moe, "eval", "--model", out], "exactly one of")
    err([moe, "generate", "--model", out, "--prompt", "x", "--top-p", "0"], "--top-p")
    # A truncated checkpoint: a clear error, and nothing else is touched.
    st = os.path.join(out, "checkpoint", "model.safetensors")
    size = os.path.getsize(st)
    with open(st, "r+b") as f:
        f.truncate(size - 100)
    err([moe, "eval", "--model", out, "--tokens", "1,2,3"], "model.safetensors")
    err([moe, "train", "--resume", out, "--steps", "5"], "model.safetensors")


if __name__ == "__main__":
    sys.exit(main())
