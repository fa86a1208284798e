#!/usr/bin/env python3
"""`moe train` under mpirun with expert parallelism, against one process.

  train_ep_test.py MOE_BINARY CASE      CASE: match | resume | fault | errors

match:  the same run with 1 process, 2 ranks (EP 2), 4 ranks (EP 4), 4 ranks (EP 2 x DP 2), 4 ranks
        (EP 4, two-stage all-to-all as 2 nodes x 2) and 2 ranks with 3 overlap chunks: the
        loss sequences agree to 2e-4 relative (each rank's balancing losses cover its own tokens, and
        the gradient sums over ranks are taken in another order); without balancing losses to 1e-6
        (summation order only); the checkpoint is a sharded Hugging Face checkpoint that `moe eval` loads in one
        process.
resume: an EP 2 run halted at step 4, resumed with 1 process and with 4 ranks (EP 4), continues
        the loss sequence of the uninterrupted EP 2 run (same tolerance).
fault:  the last of 2 ranks crashes (exits) at step 6, or stops answering there: the job ends within
        the timeout with an error naming the cause, the checkpoint of step 4 is whole, and resuming it
        gives the loss sequence of an uninterrupted run.
errors: bad layouts give one clear line and a non-zero exit, and do not hang.
Exits 77 (skipped) without mpirun or the fortunes package.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

FORTUNES = "/usr/share/games/fortunes"
TINY = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--experts", "4", "--top-k", "2",
        "--expert-width", "32", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "8", "--threads", "1",
        "--warmup", "2", "--lr", "3e-3", "--eval-batches", "2", "--log-every", "4", "--quiet"]
TOL = 2e-4


def mpirun(n):
    cmd = [shutil.which("mpirun"), "--oversubscribe", "-np", str(n)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def run(cmd, rc=0, timeout=600):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if rc is not None and p.returncode != rc:
        print("command:", " ".join(cmd))
        print("stdout:", p.stdout[-4000:])
        print("stderr:", p.stderr[-4000:])
        raise SystemExit(f"FAIL: exit code {p.returncode}, expected {rc}")
    return p


def check(cond, msg):
    if not cond:
        raise SystemExit("FAIL: " + msg)


def losses(run_dir):
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            try:
                j = json.loads(line)
            except json.JSONDecodeError:
                continue
            if j.get("type") == "step":
                out[j["step"]] = j["loss"]
    return out


def same_losses(a, b, what):
    check(sorted(a) == sorted(b), f"{what}: steps {sorted(a)} vs {sorted(b)}")
    worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in a)
    print(f"{what}: {len(a)} steps, max relative loss difference {worst:.2e}")
    check(worst <= TOL, f"{what}: losses differ by {worst:.2e} (> {TOL}):\n" +
          "\n".join(f"  step {s}: {a[s]!r} vs {b[s]!r}" for s in sorted(a)))


def train(moe, out, data, ranks=1, ep=1, extra=()):
    pre = mpirun(ranks) if ranks > 1 else []
    par = ["--expert-parallel", str(ep)] if ranks > 1 else []
    return run(pre + [moe, "train", "--out", out, "--data", data, *TINY, *par, *extra])


def case_match(moe, tmp, data):
    common = ["--steps", "8", "--eval-every", "4", "--checkpoint-every", "4"]
    single = os.path.join(tmp, "single")
    train(moe, single, data, extra=common)
    ref = losses(single)
    for ranks, ep, extra in ((2, 2, []), (4, 4, []), (4, 2, []), (4, 4, ["--hierarchical-a2a", "--ranks-per-node", "2"]),
                             (2, 2, ["--ep-chunks", "3"])):
        out = os.path.join(tmp, f"r{ranks}ep{ep}" + ("h" if "--hierarchical-a2a" in extra else "") +
                           ("c" if "--ep-chunks" in extra else ""))
        train(moe, out, data, ranks, ep, common + extra)
        same_losses(losses(out), ref, f"{ranks} ranks, expert-parallel {ep} {' '.join(extra)}")
        ck = os.path.join(out, "checkpoint")
        index = json.load(open(os.path.join(ck, "model.safetensors.index.json")))
        files = sorted(set(index["weight_map"].values()))
        check(files == [f"model-{i + 1:05d}-of-{ep:05d}.safetensors" for i in range(ep)], f"shards {files}")
        for i in range(ep):
            check(os.path.exists(os.path.join(ck, f"optimizer-{i + 1:05d}-of-{ep:05d}.safetensors")), "optimizer shard")
        check(not os.path.exists(os.path.join(out, "checkpoint.tmp")), "checkpoint.tmp left behind")
    # Without the balancing losses (which each rank takes over its own tokens) only the order of the
    # gradient sums differs: the losses agree to rounding.
    no_bal = common + ["--aux-coef", "0", "--z-coef", "0"]
    train(moe, os.path.join(tmp, "single_nb"), data, extra=no_bal)
    train(moe, os.path.join(tmp, "ep_nb"), data, 2, 2, no_bal)
    a, b = losses(os.path.join(tmp, "ep_nb")), losses(os.path.join(tmp, "single_nb"))
    worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in b)
    print(f"without balancing losses: max relative loss difference {worst:.2e}")
    check(sorted(a) == sorted(b) and worst <= 1e-6, f"without balancing losses the losses differ by {worst:.2e}")
    # The sharded checkpoint loads in one process and gives the loss of the single-process one.
    e1 = json.loads(run([moe, "eval", "--model", os.path.join(tmp, "r2ep2", "checkpoint"), "--data", data,
                         "--json", "--seq-len", "32"]).stdout)
    e0 = json.loads(run([moe, "eval", "--model", os.path.join(single, "checkpoint"), "--data", data,
                         "--json", "--seq-len", "32"]).stdout)
    print(f"eval loss: one process {e0['loss']:.6f}, expert-parallel 2 {e1['loss']:.6f}")
    check(abs(e1["loss"] - e0["loss"]) <= 1e-3 * abs(e0["loss"]), f"eval {e1} vs {e0}")


def case_resume(moe, tmp, data):
    common = ["--steps", "8", "--eval-every", "0", "--checkpoint-every", "4"]
    full = os.path.join(tmp, "full")
    train(moe, full, data, 2, 2, common)
    ref = losses(full)
    for ranks, ep in ((1, 1), (4, 4)):
        out = os.path.join(tmp, f"halted{ranks}")
        train(moe, out, data, 2, 2, common + ["--halt-after", "4"])
        check(max(losses(out)) == 4, "halted run")
        pre = mpirun(ranks) if ranks > 1 else []
        par = ["--expert-parallel", str(ep)] if ranks > 1 else []
        run(pre + [moe, "train", "--resume", out, "--threads", "1", "--quiet", *par])
        same_losses(losses(out), ref, f"EP 2 run resumed with {ranks} rank(s)")


def case_fault(moe, tmp, data):
    import time
    common = ["--steps", "8", "--eval-every", "0", "--checkpoint-every", "4", "--comm-timeout", "5"]
    full = os.path.join(tmp, "full")
    train(moe, full, data, 2, 2, common)
    ref = losses(full)
    for mode, pattern in (("exit", None), ("hang", "timed out after")):
        out = os.path.join(tmp, mode)
        t0 = time.time()
        pre = mpirun(2)
        p = run(pre + [moe, "train", "--out", out, "--data", data, *TINY, "--expert-parallel", "2", *common,
                       f"--fault-{mode}-step", "5"], rc=None, timeout=120)
        took = time.time() - t0
        print(f"fault {mode}: exit code {p.returncode} after {took:.1f} s; stderr: {p.stderr.strip()[-300:]!r}")
        check(p.returncode != 0, f"{mode}: the job exited 0")
        check(took < 60, f"{mode}: the job took {took:.0f} s to end")
        if pattern:
            check(pattern in p.stderr and "moe: error: rank 0: " in p.stderr, f"{mode}: stderr {p.stderr[-2000:]}")
        state = json.load(open(os.path.join(out, "checkpoint", "trainer_state.json")))
        check(state["step"] == 4, f"{mode}: checkpoint at step {state['step']}")
        run(mpirun(2) + [moe, "train", "--resume", out, "--threads", "1", "--quiet", "--expert-parallel", "2"])
        same_losses(losses(out), ref, f"resumed after a rank {'crashed' if mode == 'exit' else 'hung'}")


def case_errors(moe, tmp, data):
    out = os.path.join(tmp, "bad")
    p = run([moe, "train", "--out", out, "--data", data, *TINY, "--expert-parallel", "2"], rc=2)
    check("mpirun" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr)
    p = run(mpirun(2) + [moe, "train", "--out", out, "--data", data, *TINY, "--expert-parallel", "3"], rc=None)
    check(p.returncode != 0 and "must divide the number of processes" in p.stderr, p.stderr)
    three = [("3" if TINY[i - 1] == "--experts" else a) for i, a in enumerate(TINY)]
    p = run(mpirun(2) + [moe, "train", "--out", out, "--data", data, *three, "--expert-parallel", "2"], rc=None)
    check(p.returncode != 0 and "cannot be split evenly" in p.stderr, p.stderr)
    six = [("6" if TINY[i - 1] == "--batch-size" else a) for i, a in enumerate(TINY)]
    p = run(mpirun(4) + [moe, "train", "--out", out, "--data", data, *six, "--expert-parallel", "2"], rc=None)
    check(p.returncode != 0 and "multiple of the number of ranks" in p.stderr, p.stderr)


def main():
    moe, case = sys.argv[1], sys.argv[2]
    if not shutil.which("mpirun"):
        print("skipped: mpirun is not installed")
        return 77
    if not os.path.isdir(FORTUNES):
        print("skipped: the fortunes package is not installed")
        return 77
    tmp = tempfile.mkdtemp(prefix="moe_train_ep_")
    data = os.path.join(tmp, "corpus.txt")
    with open(data, "w") as f:
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
