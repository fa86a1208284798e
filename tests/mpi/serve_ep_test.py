#!/usr/bin/env python3
"""Expert-parallel inference (`--expert-parallel N` under mpirun) against one process.

  serve_ep_test.py MOE_BINARY CASE      CASE: generate | serve | fault | errors

Each case trains one tiny model (4 experts, top-2) on a slice of the fortunes corpus.
generate: `moe generate --json` under `mpirun -np 2` (EP 2) and `-np 4` (EP 4) gives exactly the
          tokens of one process: f32, --bf16, an int8 and an int4 checkpoint (`moe quantize`, also
          with --expert-format w8a8 / w4a8), offloaded experts (--resident-experts 3) and sampling
          (--temperature 0.8 --seed 7); `moe eval --json` gives exactly the loss of one process.
serve:    `moe serve` in one process and under `mpirun -np 2 ... --expert-parallel 2` answer the
          same greedy completions (sent concurrently, and one streamed) with the same texts; the
          one process exits 0 on SIGTERM, and so does the job on SIGTERM to rank 0; on SIGTERM to
          mpirun (which ends the job itself) it ends in time.
fault:    rank 1 of a serving job stops (SIGSTOP): the request in flight gets 503 "expert
          parallelism failed" after --comm-timeout, and the job ends by itself with a non-zero
          exit; rank 1 is killed (SIGKILL): the job ends in time and no request hangs; under
          `mpirun --enable-recovery` the next request gets that 503 and the job ends.
errors:   --expert-parallel without mpirun, a size other than the number of processes, a size
          that does not divide the experts, a GGUF file and a low-rank checkpoint give a clear
          error and a non-zero exit, and do not hang.
Exits 77 (skipped) without mpirun or the fortunes package. Standard library only.
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

FORTUNES = "/usr/share/games/fortunes"
# 400 steps (about 2 s): enough for greedy texts that are not one repeated token.
TINY = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--experts", "4", "--top-k", "2",
        "--expert-width", "32", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "8", "--threads", "1",
        "--warmup", "2", "--lr", "3e-3", "--eval-batches", "1", "--log-every", "50", "--quiet", "--steps", "400"]
GUARD_S = 120  # a hung job fails the test instead of hanging it (not a timing check)
PROMPTS = ["The ", "A man", "Science is", "Q: ", "Why", "It was", "In the", "Love"]


def mpirun(n):
    cmd = [shutil.which("mpirun"), "--oversubscribe", "-np", str(n)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def run(cmd, rc=0, timeout=GUARD_S):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)  # mpirun and its ranks
        proc.communicate()
        raise SystemExit(f"FAIL: still running after {timeout} s (killed): {' '.join(cmd)}")
    p = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if rc is not None and p.returncode != rc:
        print("command:", " ".join(cmd))
        print("stdout:", p.stdout[-4000:])
        print("stderr:", p.stderr[-4000:])
        raise SystemExit(f"FAIL: exit code {p.returncode}, expected {rc}")
    return p


def check(cond, msg):
    if not cond:
        raise SystemExit("FAIL: " + msg)


def kill_session(sid):
    """SIGKILLs the live processes of session sid (a command started with start_new_session: mpirun and
    its ranks, which Open MPI puts in process groups of their own); returns their pids."""
    killed = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid or fields[0] == "Z":
                continue
            os.kill(int(d), signal.SIGKILL)
            killed.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return killed


def ep(n):
    """The command prefix and the flags of an n-rank expert-parallel run (n = 1: one process)."""
    return (mpirun(n), ["--expert-parallel", str(n)]) if n > 1 else ([], [])


# ---------------------------------------------------------------------------------------------- generate

def generate(moe, model, n, *extra, prompt="Science is"):
    pre, par = ep(n)
    p = run(pre + [moe, "generate", "--model", model, "--prompt", prompt, "--max-tokens", "24", "--json",
                   "--threads", "1", *extra, *par])
    j = json.loads(p.stdout)
    check(len(j["tokens"]) >= 1, f"no tokens: {j}")
    if n > 1:
        check(j.get("expert_parallel") == n, f"expert_parallel in {j}")
    return j


def case_generate(moe, tmp, data, model):
    q8, q4 = os.path.join(tmp, "q8"), os.path.join(tmp, "q4")
    for out, bits in ((q8, "8"), (q4, "4")):
        run([moe, "quantize", "--model", model, "--out", out, "--bits", bits, "--group-size", "32"])
        if not os.path.exists(os.path.join(out, "tokenizer.json")):
            shutil.copy(os.path.join(model, "checkpoint", "tokenizer.json"), out)
    greedy = ["--temperature", "0"]
    configs = [  # name, model, prompt, flags, expert-parallel sizes
        ("f32", model, "Science is", greedy, (2, 4)),
        ("f32, another prompt", model, "The man", greedy, (2, 4)),
        ("bf16", model, "Science is", greedy + ["--bf16"], (2, 4)),
        ("int8", q8, "Science is", greedy, (2, 4)),
        ("int8 w8a8", q8, "Science is", greedy + ["--expert-format", "w8a8"], (2, 4)),
        ("int4", q4, "Science is", greedy, (2, 4)),
        ("int4 w4a8", q4, "Science is", greedy + ["--expert-format", "w4a8"], (2, 4)),
        ("offloaded (3 resident)", model, "Science is", greedy + ["--resident-experts", "3"], (2, 4)),
        ("sampling", model, "Science is", ["--temperature", "0.8", "--seed", "7"], (2,)),
    ]
    distinct = set()
    for name, m, prompt, flags, sizes in configs:
        ref = generate(moe, m, 1, *flags, prompt=prompt)
        distinct.add(tuple(ref["tokens"]))
        for n in sizes:
            j = generate(moe, m, n, *flags, prompt=prompt)
            check(j["tokens"] == ref["tokens"], f"{name}, EP {n}: tokens {j['tokens']} != one process {ref['tokens']}")
            check(j["text"] == ref["text"], f"{name}, EP {n}: text {j['text']!r} != {ref['text']!r}")
            if "--resident-experts" in flags:
                check(isinstance(j.get("experts"), dict) and isinstance(ref.get("experts"), dict),
                      f"{name}: no experts object: {j}")
        print(f"{name}: EP {', '.join(map(str, sizes))} = one process: {len(ref['tokens'])} tokens {ref['text']!r}")
    check(len(distinct) >= 2 and all(len(set(t)) >= 3 for t in distinct),
          f"the tiny model's outputs are too uniform for this test: {distinct}")
    # With EP 2 a budget of 3 offloads (each rank holds 4 of the 8 routed experts): the store moved experts.
    j = generate(moe, model, 2, "--temperature", "0", "--resident-experts", "3")
    check(j["experts"]["capacity"] == 3 and j["experts"]["loads"] > 0, f"EP 2 offloading: {j['experts']}")

    # eval: the loss of one process exactly.
    ev = os.path.join(tmp, "eval.txt")
    with open(os.path.join(FORTUNES, "people"), errors="replace") as f, open(ev, "w") as g:
        g.write(f.read()[:3000])
    losses = {}
    for n in (1, 2):
        pre, par = ep(n)
        losses[n] = json.loads(run(pre + [moe, "eval", "--model", model, "--data", ev, "--json", "--seq-len", "32",
                                          "--threads", "1", *par]).stdout)
    print(f"eval: one process {losses[1]['loss']!r}, EP 2 {losses[2]['loss']!r} ({losses[1]['tokens']} tokens)")
    check(losses[2]["loss"] == losses[1]["loss"], f"eval loss {losses[2]} != {losses[1]}")
    check(losses[2]["tokens"] == losses[1]["tokens"], "eval tokens")


# ------------------------------------------------------------------------------------------------- serve

class Server:
    """`moe serve --port 0` in one process (n = 1) or under mpirun with --expert-parallel n."""

    def __init__(self, moe, model, n=1, *extra, recovery=False):
        pre, par = ep(n)
        if recovery:  # mpirun keeps the job when a rank dies: the server reports it
            pre = pre[:1] + ["--enable-recovery"] + pre[1:]
        self.n = n
        self.p = subprocess.Popen(pre + [moe, "serve", "--model", model, "--port", "0", "--threads", "1", *extra, *par],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.err = []
        threading.Thread(target=lambda: self.err.append(self.p.stderr.read()), daemon=True).start()
        got = []
        reader = threading.Thread(target=lambda: got.append(self.p.stdout.readline()), daemon=True)
        reader.start()
        reader.join(GUARD_S)
        line = got[0] if got else ""
        if not line.startswith("listening on http://"):
            self.kill()
            raise SystemExit(f"FAIL: first line {line!r}; stderr: {self.stderr()[-2000:]}")
        threading.Thread(target=self.p.stdout.read, daemon=True).start()  # drain the rest
        hostport = line.strip()[len("listening on http://"):]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)

    def stderr(self, wait=5):
        deadline = time.time() + wait
        while not self.err and time.time() < deadline:
            time.sleep(0.05)
        return self.err[0] if self.err else ""

    def kill(self):
        """Ends the job (mpirun and every rank) when it still runs."""
        if self.p.poll() is None:
            kill_session(self.p.pid)
        self.p.wait(GUARD_S)

    def ranks(self):
        """{rank: pid} of the `moe` processes that mpirun started (read from /proc)."""
        out, todo = {}, [self.p.pid]
        while todo:
            parent = todo.pop()
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    if ppid != parent:
                        continue
                    todo.append(int(d))
                    with open(f"/proc/{d}/environ", "rb") as f:
                        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                except (OSError, ValueError, IndexError):
                    continue
                rank = env.get(b"OMPI_COMM_WORLD_RANK")
                if rank is not None:
                    out[int(rank)] = int(d)
        return out

    def leftovers(self):
        """After the job ended by itself: the pids of its processes still there (killed now)."""
        check(self.p.poll() is not None, "the job still runs")
        deadline = time.time() + 5  # mpirun may still be reaping them
        while True:
            left = kill_session(self.p.pid)
            if not left or time.time() > deadline:
                return left
            time.sleep(0.2)

    def conn(self, timeout=GUARD_S):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, timeout=GUARD_S):
        c = self.conn(timeout)
        h = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        text = r.read().decode("utf-8")
        c.close()
        try:
            return r.status, json.loads(text)
        except json.JSONDecodeError:
            return r.status, text

    def completion(self, prompt, max_tokens):
        status, j = self.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens,
                                                             "temperature": 0})
        check(status == 200, f"completion status {status}: {j}")
        return j["choices"][0]["text"]

    def stream(self, prompt, max_tokens):
        c = self.conn()
        c.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                  body=json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}))
        r = c.getresponse()
        if r.status != 200:
            raise SystemExit(f"FAIL: stream status {r.status}: {r.read()[:500]!r}")
        text, done = "", False
        for raw in r:
            line = raw.decode("utf-8").rstrip("\n")
            if not line or line.startswith(":"):
                continue
            if line == "data: [DONE]":
                done = True
                break
            check(line.startswith("data: "), f"SSE line {line!r}")
            e = json.loads(line[6:])
            if e["choices"]:
                text += e["choices"][0]["text"]
        c.close()
        check(done, "stream ended without data: [DONE]")
        return text

    def concurrent(self, jobs):
        out, errors = [None] * len(jobs), []

        def one(i):
            try:
                out[i] = self.completion(*jobs[i])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GUARD_S)
        check(not errors and None not in out, "concurrent errors: " + "; ".join(errors))
        return out

    def wait(self, timeout):
        """The exit code, or None when the job still runs after timeout seconds."""
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def stop(s, pid, what):
    """SIGTERM to pid (the server or mpirun): (exit code or None when still running after 30 s, seconds, stderr)."""
    t0 = time.time()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    rc = s.wait(30)
    took = time.time() - t0
    s.kill()
    err = s.stderr()
    print(f"{what}: SIGTERM -> exit code {rc} after {took:.2f} s, "
          f"{'with' if 'moe serve: stopped' in err else 'without'} 'moe serve: stopped' on stderr")
    if rc is not None:
        left = s.leftovers()
        check(not left, f"{what}: processes {left} still ran after the job ended")
    return rc, took, err


def case_serve(moe, tmp, data, model):
    jobs = [(PROMPTS[i], 8 + 4 * i) for i in range(len(PROMPTS))]
    results = {}
    for n in (1, 2):
        s = Server(moe, model, n)
        try:
            status, j = s.request("GET", "/health")
            check(status == 200, f"/health {status} {j}")
            t0 = time.time()
            texts = s.concurrent(jobs)
            took = time.time() - t0
            streamed = s.stream("The ", 20)
            check(streamed == s.completion("The ", 20), f"{n} rank(s): streamed text != non-streamed")
            texts.append(streamed)
            texts.append(s.completion("It was", 32))
            results[n] = texts
            print(f"{n} rank(s): {len(jobs)} concurrent completions in {took:.2f} s")
        finally:
            rc, took, err = stop(s, s.p.pid, "one process" if n == 1 else "mpirun -np 2")
        if n == 1:
            check(rc == 0 and "moe serve: stopped" in err, f"one process: exit code {rc} after SIGTERM; {err[-2000:]}")
        else:
            # mpirun ends the job on SIGTERM (Open MPI: exit code 1, whatever the ranks do): only that it ends.
            check(rc is not None, f"mpirun still runs 30 s after SIGTERM; stderr: {err[-2000:]}")
    for i, (a, b) in enumerate(zip(results[1], results[2])):
        check(a == b, f"request {i}: EP 2 {b!r} != one process {a!r}")
    check(len({t for t in results[1] if t}) >= 3, f"texts too uniform: {results[1]}")
    print(f"serve: {len(results[1])} texts equal, e.g. {results[1][2]!r}")

    # SIGTERM to rank 0 itself (the server): the job ends.
    s = Server(moe, model, 2)
    try:
        s.completion("The ", 4)
        ranks = s.ranks()
        check(sorted(ranks) == [0, 1], f"ranks found in /proc: {ranks}")
    finally:
        rc, took, err = stop(s, s.ranks().get(0, s.p.pid), "rank 0 of mpirun -np 2")
    check(rc is not None, f"the job still runs 30 s after SIGTERM to rank 0; stderr: {err[-2000:]}")
    # Rank 0 takes the signal in its watcher (blocked in every other thread, MPI's included), stops the
    # server and then the other ranks: the job ends cleanly.
    check(rc == 0 and "moe serve: stopped" in err, f"SIGTERM to rank 0: exit code {rc}; stderr: {err[-2000:]}")


# ------------------------------------------------------------------------------------------------- fault

def case_fault(moe, tmp, data, model):
    timeout = 3
    # Rank 1 stops answering: the collective of rank 0 times out after --comm-timeout.
    s = Server(moe, model, 2, "--comm-timeout", str(timeout))
    ranks = {}
    try:
        check(s.completion("The ", 4) is not None, "a request before the fault")
        ranks.update(s.ranks())
        check(sorted(ranks) == [0, 1], f"ranks found in /proc: {ranks}")
        os.kill(ranks[1], signal.SIGSTOP)
        t0 = time.time()
        status, j = s.request("POST", "/v1/completions", {"prompt": "A man", "max_tokens": 16, "temperature": 0},
                              timeout=60)
        took = time.time() - t0
        print(f"rank 1 stopped: status {status} after {took:.2f} s: {j}")
        check(status == 503, f"status {status}, expected 503: {j}")
        check(isinstance(j, dict) and "expert parallelism failed" in j["error"]["message"], f"error body {j}")
        check(timeout * 0.8 <= took < 20, f"the 503 came after {took:.1f} s (--comm-timeout {timeout})")
        # Right after: /health answers 503 or the server is already gone.
        try:
            status, j = s.request("GET", "/health", timeout=10)
            print(f"/health after the failure: {status} {j}")
            check(status == 503, f"/health after the failure: {status} {j}")
        except (OSError, http.client.HTTPException) as e:
            print(f"/health after the failure: {e!r}")
        rc = s.wait(30)
        took = time.time() - t0
        err = s.stderr()
        print(f"job ended: exit code {rc} {took:.1f} s after the request; stderr tail: {err.strip()[-400:]!r}")
        check(rc is not None, "the job still runs 30 s after the failure")
        check(rc != 0, f"the job exited 0 after the failure; stderr: {err[-2000:]}")
        check("expert parallelism failed" in err, f"rank 0 did not report the failure; stderr: {err[-2000:]}")
    finally:
        s.kill()
    left = s.leftovers()
    check(not left, f"processes {left} of the job (ranks {ranks}) still ran after it ended")

    # Rank 1 dies: mpirun ends the job; a request sent right after gets 503 or a connection error.
    s = Server(moe, model, 2, "--comm-timeout", str(timeout))
    ranks = {}
    try:
        check(s.completion("The ", 4) is not None, "a request before the fault")
        ranks.update(s.ranks())
        check(sorted(ranks) == [0, 1], f"ranks found in /proc: {ranks}")
        t0 = time.time()
        os.kill(ranks[1], signal.SIGKILL)
        try:
            status, j = s.request("POST", "/v1/completions", {"prompt": "A man", "max_tokens": 16, "temperature": 0},
                                  timeout=30)
            outcome = f"status {status}: {j}"
            check(status == 503, f"a request after rank 1 died: {outcome}")
        except (OSError, http.client.HTTPException) as e:  # the job is gone (or going): refused, reset, closed
            outcome = repr(e)
            check(not isinstance(e, TimeoutError) and "timed out" not in str(e), f"the request hung: {outcome}")
        print(f"rank 1 killed: the request got {outcome} after {time.time() - t0:.2f} s")
        rc = s.wait(30)
        took = time.time() - t0
        err = s.stderr()
        print(f"job ended: exit code {rc} after {took:.1f} s; stderr tail: {err.strip()[-300:]!r}")
        check(rc is not None, "the job still runs 30 s after rank 1 died")
        check(rc != 0, "the job exited 0 after rank 1 died")
    finally:
        s.kill()
    left = s.leftovers()
    check(not left, f"processes {left} of the job (ranks {ranks}) still ran after it ended")

    # Rank 1 dies under `mpirun --enable-recovery` (the job is not ended for it): the next request
    # gets 503 "expert parallelism failed" after --comm-timeout, and the server ends the job.
    s = Server(moe, model, 2, "--comm-timeout", str(timeout), recovery=True)
    ranks = {}
    try:
        check(s.completion("The ", 4) is not None, "a request before the fault")
        ranks.update(s.ranks())
        check(sorted(ranks) == [0, 1], f"ranks found in /proc: {ranks}")
        os.kill(ranks[1], signal.SIGKILL)
        time.sleep(0.5)
        t0 = time.time()
        status, j = s.request("POST", "/v1/completions", {"prompt": "A man", "max_tokens": 16, "temperature": 0},
                              timeout=60)
        took = time.time() - t0
        print(f"rank 1 killed (recovery on): status {status} after {took:.2f} s: {j}")
        check(status == 503, f"a request after rank 1 died: status {status}: {j}")
        check(isinstance(j, dict) and "expert parallelism failed" in j["error"]["message"], f"error body {j}")
        check(took < timeout + 15, f"the 503 took {took:.1f} s with --comm-timeout {timeout}")
        rc = s.wait(30)
        err = s.stderr()
        # (mpirun --enable-recovery exits 0 after rank 0's MPI_Abort(1): Open MPI 4's status, not ours.)
        check(rc is not None, f"the job still runs 30 s after rank 1 died; stderr: {err[-2000:]}")
        check("expert parallelism failed" in err, f"rank 0 did not report the failure; stderr: {err[-2000:]}")
    finally:
        s.kill()
    left = s.leftovers()
    check(not left, f"processes {left} of the job (ranks {ranks}) still ran after it ended")


# ------------------------------------------------------------------------------------------------ errors

def case_errors(moe, tmp, data, model):
    gen = ["generate", "--model", model, "--prompt", "Science", "--max-tokens", "4", "--threads", "1"]
    t0 = time.time()
    p = run([moe, *gen, "--expert-parallel", "2"], rc=2, timeout=30)
    check("--expert-parallel" in p.stderr and len(p.stderr.strip().splitlines()) == 1, "without mpirun: " + p.stderr)
    print("without mpirun:", p.stderr.strip())

    def fails(n, what, *flags, model_args=gen, contains):
        p = run(mpirun(n) + [moe, *model_args, *flags], rc=None, timeout=60)
        line = next((ln for ln in p.stderr.splitlines() if "moe: error" in ln), p.stderr.strip()[-300:])
        print(f"{what}: exit code {p.returncode}: {line}")
        check(p.returncode != 0, f"{what}: exit code 0")
        check(contains in p.stderr.lower(), f"{what}: {contains!r} not in stderr: {p.stderr[-2000:]}")

    fails(2, "2 processes, --expert-parallel 4", "--expert-parallel", "4",
          contains="must equal the number of processes")
    fails(3, "generate, 3 ranks, 4 experts", "--expert-parallel", "3", contains="divide the number of experts")
    fails(3, "eval, 3 ranks, 4 experts", "--expert-parallel", "3", contains="divide the number of experts",
          model_args=["eval", "--model", model, "--data", data, "--seq-len", "32", "--threads", "1"])
    gguf = os.path.join(tmp, "tiny.gguf")
    run([moe, "export", "--model", model, "--gguf", gguf])
    fails(2, "GGUF", "--expert-parallel", "2", contains="gguf",
          model_args=["generate", "--model", gguf, "--prompt", "Science", "--max-tokens", "4", "--threads", "1"])
    lr = os.path.join(tmp, "lowrank")
    run([moe, "compress", "--model", model, "--out", lr, "--rank", "4", "--threads", "1"])
    fails(2, "low-rank", "--expert-parallel", "2", contains="low-rank",
          model_args=["generate", "--model", lr, "--prompt", "Science", "--max-tokens", "4", "--threads", "1"])
    print(f"errors: {time.time() - t0:.1f} s")


def main():
    moe, case = sys.argv[1], sys.argv[2]
    if not shutil.which("mpirun"):
        print("skipped: mpirun is not installed")
        return 77
    if not os.path.isdir(FORTUNES):
        print("skipped: the fortunes package is not installed")
        return 77
    tmp = tempfile.mkdtemp(prefix="moe_serve_ep_")
    data = os.path.join(tmp, "corpus.txt")
    with open(data, "w") as f:
        for name in ("literature", "science"):
            with open(os.path.join(FORTUNES, name), errors="replace") as g:
                f.write(g.read())
    try:
        model = os.path.join(tmp, "tiny")
        t0 = time.time()
        run([moe, "train", "--out", model, "--data", data, *TINY])
        print(f"trained the tiny model in {time.time() - t0:.1f} s")
        globals()["case_" + case](moe, tmp, data, model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
