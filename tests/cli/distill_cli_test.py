#!/usr/bin/env python3
"""End-to-end tests of `moe distill` (knowledge distillation) on tiny models.

  distill_cli_test.py MOE_BINARY CASE

CASE is one of: smoke, resume, errors. The teacher is a tiny `moe train` run on a slice of the fortunes
corpus (exits 77 = skipped when the corpus is not installed); students are a smaller MoE (a `moe init`
config.json), a dense model (model flags) and an existing checkpoint (--student).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

FORTUNES = "/usr/share/games/fortunes"
SIZES = ["--seq-len", "32", "--batch-size", "8", "--threads", "2", "--warmup", "5", "--lr", "3e-3",
         "--eval-batches", "2", "--log-every", "5"]
TEACHER = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--experts", "4", "--top-k", "2",
           "--expert-width", "32", "--vocab-size", "512"]


def run(cmd, check_rc=0):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check_rc is not None and p.returncode != check_rc:
        print("command:", " ".join(cmd))
        print("stdout:", p.stdout[-4000:])
        print("stderr:", p.stderr[-4000:])
        raise SystemExit(f"FAIL: exit code {p.returncode}, expected {check_rc}")
    return p


def check(cond, msg):
    if not cond:
        raise SystemExit("FAIL: " + msg)


def steps(run_dir):
    """Step records by step (the later line for a step wins, as after a resume)."""
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        try:
            j = json.loads(line)
        except json.JSONDecodeError:
            continue
        if j.get("type") == "step":
            out[j["step"]] = j
    return out


def make_teacher(moe, tmp, data):
    t = os.path.join(tmp, "teacher")
    run([moe, "train", "--out", t, "--data", data, *TEACHER, *SIZES, "--steps", "30"])
    vocab = json.load(open(os.path.join(t, "checkpoint", "config.json")))["vocab_size"]
    return t, vocab


def small_moe_config(moe, tmp, vocab):
    """A `moe init` model: 2 narrower experts, top-1; its config.json is the student's."""
    s = os.path.join(tmp, "small")
    run([moe, "init", "--out", s, "--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
         "--experts", "2", "--top-k", "1", "--expert-width", "16", "--vocab", str(vocab)])
    return s


def distill(moe, teacher, out, data, *extra, rc=0):
    return run([moe, "distill", "--teacher", teacher, "--data", data, "--out", out, *SIZES, *extra], check_rc=rc)


def case_smoke(moe, tmp, data):
    teacher, vocab = make_teacher(moe, tmp, data)
    small = small_moe_config(moe, tmp, vocab)
    # MoE -> smaller MoE, on the teacher run's own token shards.
    a = os.path.join(tmp, "a")
    p = distill(moe, teacher, a, teacher, "--student-config", os.path.join(small, "config.json"), "--steps", "30",
                "--eval-every", "15")
    check("kd " in p.stdout and "teacher " in p.stdout, "progress lines:\n" + p.stdout)
    st = steps(a)
    check(sorted(st) == list(range(1, 31)), f"steps: {sorted(st)}")
    kd = [st[s]["kd_loss"] for s in range(1, 31)]
    check(all(k == k and k >= 0 for k in kd), str(kd))
    first, last = sum(kd[:5]) / 5, sum(kd[-5:]) / 5
    print(f"kd_loss: first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    check(last < first, f"kd_loss did not fall: {first} -> {last}")
    cfg = json.load(open(os.path.join(a, "checkpoint", "config.json")))
    check(cfg["num_experts"] == 2 and cfg["num_experts_per_tok"] == 1 and cfg["vocab_size"] == vocab, str(cfg))
    for f in ("train.bin", "val.bin"):
        check(open(os.path.join(a, "data", f), "rb").read() == open(os.path.join(teacher, "data", f), "rb").read(),
              f"data/{f} is not the teacher run's")
    check(open(os.path.join(a, "tokenizer.json")).read() == open(os.path.join(teacher, "tokenizer.json")).read(),
          "the student's tokenizer is not the teacher's")
    opts = json.load(open(os.path.join(a, "train_options.json")))
    check(opts["kd_weight"] == 0.5 and opts["temperature"] == 2.0 and os.path.isabs(opts["teacher"]), str(opts))
    e = json.loads(run([moe, "eval", "--model", a, "--data", os.path.join(teacher, "data", "val.bin"), "--json",
                        "--seq-len", "32"]).stdout)
    check(e["tokens"] > 100 and 0 < e["loss"] < 7, str(e))
    # MoE -> dense (model flags: every layer dense), on text tokenized with the teacher's tokenizer.
    d = os.path.join(tmp, "dense")
    distill(moe, teacher, d, data, "--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
            "--dense-layers", "0,1", "--dense-width", "64", "--steps", "20", "--kd-weight", "0.7",
            "--temperature", "1.5")
    cfg = json.load(open(os.path.join(d, "checkpoint", "config.json")))
    check(cfg["mlp_only_layers"] == [0, 1] and cfg["vocab_size"] == vocab, str(cfg))
    st = steps(d)
    check(len(st) == 20 and all("kd_loss" in r and r["moe_layers"] == [] for r in st.values()), str(st.get(1)))
    loss = [st[s]["loss"] for s in range(1, 21)]
    check(sum(loss[-5:]) < sum(loss[:5]) - 1.0, f"the dense student's loss did not fall: {loss}")
    # --student DIR: an existing checkpoint (here the `moe init` model) continues.
    c = os.path.join(tmp, "cont")
    distill(moe, teacher, c, teacher, "--student", small, "--steps", "3")
    check(len(steps(c)) == 3, "continued student")
    # --kd-weight 0: the teacher is not run; plain training of the student with the teacher's tokenizer.
    z = os.path.join(tmp, "zero")
    distill(moe, teacher, z, teacher, "--student", small, "--steps", "3", "--kd-weight", "0")
    check(all("kd_loss" not in r for r in steps(z).values()), "kd_loss logged with --kd-weight 0")


def case_resume(moe, tmp, data):
    """An interrupted distillation run resumes (reloading the teacher) to exactly the uninterrupted one."""
    teacher, vocab = make_teacher(moe, tmp, data)
    cfg = os.path.join(small_moe_config(moe, tmp, vocab), "config.json")
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    common = ["--student-config", cfg, "--steps", "12", "--checkpoint-every", "4", "--eval-every", "6"]
    distill(moe, teacher, a, teacher, *common)
    distill(moe, teacher, b, teacher, *common, "--halt-after", "5")
    check(max(steps(b)) == 5, "halted run")
    run([moe, "distill", "--resume", b, "--threads", "2"])
    sa, sb = steps(a), steps(b)
    for s in range(1, 13):
        check(sa[s]["loss"] == sb[s]["loss"] and sa[s]["kd_loss"] == sb[s]["kd_loss"],
              f"step {s}: {sa[s]['loss']}/{sa[s]['kd_loss']} vs {sb[s]['loss']}/{sb[s]['kd_loss']}")
    wa = open(os.path.join(a, "checkpoint", "model.safetensors"), "rb").read()
    wb = open(os.path.join(b, "checkpoint", "model.safetensors"), "rb").read()
    check(wa == wb, "final weights differ after resume")


def case_errors(moe, tmp, data):
    out = os.path.join(tmp, "run")

    def err(cmd, *patterns):
        p = run(cmd, check_rc=2)
        check(p.stderr.startswith("moe: error: ") and p.stderr.count("\n") == 1
              and all(x in p.stderr for x in patterns), f"{cmd}: {p.stderr}")

    # Flags checked at parse time, before any work.
    err([moe, "distill", "--teacher", tmp, "--data", data, "--out", out, "--kd-weight", "1.5"], "--kd-weight")
    err([moe, "distill", "--teacher", tmp, "--data", data, "--out", out, "--kd-weight", "-0.1"], "--kd-weight")
    err([moe, "distill", "--teacher", tmp, "--data", data, "--out", out, "--temperature", "0"], "--temperature")
    err([moe, "distill", "--data", data, "--out", out], "--teacher")
    err([moe, "distill", "--teacher", os.path.join(tmp, "nope"), "--data", data, "--out", out], "nope")
    err([moe, "distill", "--teacher", tmp, "--data", data, "--out", out], "holds no model")
    teacher, vocab = make_teacher(moe, tmp, data)
    err([moe, "distill", "--teacher", teacher, "--out", out], "--data")
    # A student of another vocabulary: both sizes named.
    other = os.path.join(tmp, "other")
    run([moe, "init", "--out", other, "--hidden", "32", "--layers", "1", "--heads", "4", "--kv-heads", "2",
         "--experts", "2", "--top-k", "1", "--vocab", str(vocab + 88)])
    for flags in (["--student-config", os.path.join(other, "config.json")], ["--student", other]):
        err([moe, "distill", "--teacher", teacher, "--data", data, "--out", out, *flags],
            f"vocab_size is {vocab}", f"student's is {vocab + 88}")
    check(not os.path.exists(os.path.join(out, "metrics.jsonl")), "a refused run wrote metrics")
    # Token shards of another tokenizer.
    alien = os.path.join(tmp, "alien")
    run([moe, "train", "--out", alien, "--data", data, *TEACHER[:-2], "--vocab-size", "400", *SIZES, "--steps", "1"])
    err([moe, "distill", "--teacher", teacher, "--data", alien, "--out", out], "another tokenizer")


def main():
    moe, case = sys.argv[1], sys.argv[2]
    if not os.path.isdir(FORTUNES):
        print("skipped: the fortunes package is not installed")
        return 77
    tmp = tempfile.mkdtemp(prefix="moe_distill_test_")
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


if __name__ == "__main__":
    sys.exit(main())
