#!/usr/bin/env python3
"""End-to-end test of `moe serve`: real HTTP requests to the real binary on a tiny trained model.

  serve_test.py MOE_BINARY

Trains a tiny model on a slice of the fortunes corpus (exits 77 = skipped when it is not
installed), starts `moe serve --port 0` and checks: /health, /v1/models, completions (text and
token-id prompts), chat, streaming (SSE chunks add up to the non-streamed text), stop strings,
8 concurrent greedy requests equal to the same requests one by one, the 4xx errors (and that the
server keeps serving after each), 429 with Retry-After when the queue is full, cancellation when
a streaming client goes away, /metrics, and a clean exit on SIGTERM. Standard library only.
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
TINY = ["--hidden", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--experts", "4", "--top-k", "2",
        "--expert-width", "32", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "8", "--threads", "2",
        "--warmup", "5", "--lr", "3e-3", "--eval-batches", "1", "--log-every", "10"]
KEY = "s3cret"
AUTH = {"Authorization": "Bearer " + KEY}
GUARD_S = 120  # a hung server fails the test instead of hanging it (not a timing check)


def check(cond, msg):
    if not cond:
        raise SystemExit("FAIL: " + msg)


class Server:
    def __init__(self, moe, model, *extra):
        self.p = subprocess.Popen([moe, "serve", "--model", model, "--port", "0", "--threads", "2", *extra],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()  # "listening on http://HOST:PORT"
        if not line.startswith("listening on http://"):
            self.p.kill()
            raise SystemExit(f"FAIL: first line {line!r}; stderr: {self.p.stderr.read()[-2000:]}")
        hostport = line.strip()[len("listening on http://"):]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=GUARD_S)

    def request(self, method, path, body=None, headers=None, raw=None):
        """(status, headers, parsed JSON or text) of one request on a fresh connection."""
        c = self.conn()
        h = dict(headers or {})
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        text = r.read().decode("utf-8")
        c.close()
        try:
            return r.status, r, json.loads(text)
        except json.JSONDecodeError:
            return r.status, r, text

    def chunked(self, path, pieces):
        """(status, headers, parsed JSON or text) of a POST sent with Transfer-Encoding: chunked."""
        c = self.conn()
        c.request("POST", path, body=iter([p.encode("utf-8") for p in pieces]),
                  headers={**AUTH, "Content-Type": "application/json"}, encode_chunked=True)
        r = c.getresponse()
        text = r.read().decode("utf-8")
        c.close()
        try:
            return r.status, r, json.loads(text)
        except json.JSONDecodeError:
            return r.status, r, text

    def post(self, path, body, key=True):
        return self.request("POST", path, body, AUTH if key else None)

    def stream(self, path, body):
        """The parsed SSE events of a streamed request (until [DONE])."""
        c = self.conn()
        c.request("POST", path, body=json.dumps(body), headers={**AUTH, "Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise SystemExit(f"FAIL: stream status {r.status}: {r.read()[:500]!r}")
        check(r.getheader("Content-Type", "").startswith("text/event-stream"), "content type " + str(r.getheader("Content-Type")))
        events, done = [], False
        for raw in r:
            line = raw.decode("utf-8").rstrip("\n")
            if not line or line.startswith(":"):
                continue
            check(line.startswith("data: "), f"SSE line {line!r}")
            if line == "data: [DONE]":
                done = True
                break
            events.append(json.loads(line[6:]))
        c.close()
        check(done, "stream ended without data: [DONE]")
        return events

    def metrics(self):
        status, _, text = self.request("GET", "/metrics")
        check(status == 200, f"/metrics status {status}")
        values = {}
        for line in text.splitlines():
            check(line != "", "empty line in /metrics")
            if line.startswith("#"):
                check(line.startswith("# HELP ") or line.startswith("# TYPE "), "comment " + line)
                continue
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
        return values

    def wait_metric(self, key, pred, what):
        deadline = time.time() + GUARD_S
        while time.time() < deadline:
            if pred(self.metrics().get(key, -1)):
                return
            time.sleep(0.02)
        raise SystemExit(f"FAIL: waited for {what}; metrics: {self.metrics()}")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(GUARD_S)
        err = self.p.stderr.read()
        check(rc == 0, f"exit code {rc} after SIGTERM; stderr: {err[-2000:]}")
        check("stopped" in err, "stderr: " + err[-2000:])
        return err


def completion(s, prompt, **kw):
    status, _, j = s.post("/v1/completions", {"prompt": prompt, "temperature": 0, **kw})
    check(status == 200, f"completion status {status}: {j}")
    return j


def check_error(status, j, want_status, param=None):
    check(isinstance(j, dict) and "error" in j, f"error body {j!r}")
    e = j["error"]
    check(set(e) >= {"message", "type", "param", "code"} and isinstance(e["message"], str) and e["message"],
          f"error fields {e}")
    check(status == want_status, f"status {status}, expected {want_status}: {e}")
    if param is not None:
        check(e["param"] == param, f"param {e['param']!r}, expected {param!r}")


def basic(s):
    status, _, j = s.request("GET", "/health")
    check(status == 200 and j == {"status": "ok"}, f"/health {status} {j}")
    status, _, j = s.request("GET", "/v1/models", headers=AUTH)
    check(status == 200 and j["data"][0]["id"] == "tiny", f"/v1/models {j}")

    j = completion(s, "The ", max_tokens=12)
    c = j["choices"][0]
    u = j["usage"]
    check(j["object"] == "text_completion" and j["id"].startswith("cmpl-") and j["model"] == "tiny", str(j))
    check(isinstance(c["text"], str) and c["finish_reason"] in ("stop", "length"), str(j))
    check(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and 1 <= u["completion_tokens"] <= 12, str(u))
    check(c["finish_reason"] == "stop" or u["completion_tokens"] == 12, str(j))
    # Greedy is deterministic; a token-id prompt works too.
    check(completion(s, "The ", max_tokens=12)["choices"][0]["text"] == c["text"], "greedy differs between calls")
    t = completion(s, [5, 9, 11, 40], max_tokens=4)
    check(t["usage"]["prompt_tokens"] == 4, str(t))

    status, _, ch = s.post("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": "Hello"}],
                                                    "max_tokens": 10, "temperature": 0})
    check(status == 200 and ch["object"] == "chat.completion", f"chat {status} {ch}")
    msg = ch["choices"][0]["message"]
    check(msg["role"] == "assistant" and isinstance(msg["content"], str), str(ch))
    return c["text"], msg["content"]


def streaming(s, greedy_text, chat_text):
    ev = s.stream("/v1/completions", {"prompt": "The ", "max_tokens": 12, "temperature": 0, "stream": True,
                                      "stream_options": {"include_usage": True}})
    text = "".join(e["choices"][0]["text"] for e in ev if e["choices"])
    check(text == greedy_text, f"streamed {text!r} != {greedy_text!r}")
    finals = [e["choices"][0]["finish_reason"] for e in ev if e["choices"] and e["choices"][0]["finish_reason"]]
    check(len(finals) == 1, f"finish chunks {finals}")
    check(ev[-1]["choices"] == [] and ev[-1]["usage"]["completion_tokens"] >= 1, f"usage chunk {ev[-1]}")
    ev = s.stream("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "Hello"}],
                                           "max_tokens": 10, "temperature": 0, "stream": True})
    check(ev[0]["choices"][0]["delta"].get("role") == "assistant", f"first chunk {ev[0]}")
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in ev)
    check(content == chat_text, f"streamed chat {content!r} != {chat_text!r}")
    check(ev[-1]["choices"][0]["finish_reason"] in ("stop", "length"), str(ev[-1]))


def stop_strings(s):
    full = completion(s, "A", max_tokens=40, stop=None)["choices"][0]["text"]
    if len(full) < 4:
        print(f"note: greedy text {full!r} too short for a stop-string check")
        return
    stop = full[len(full) // 2: len(full) // 2 + 2]
    want = full[:full.find(stop)]
    for stream in (False, True):
        body = {"prompt": "A", "max_tokens": 40, "temperature": 0, "stop": [stop, "\x00never"]}
        if stream:
            ev = s.stream("/v1/completions", {**body, "stream": True})
            got = "".join(e["choices"][0]["text"] for e in ev)
            reason = ev[-1]["choices"][0]["finish_reason"]
        else:
            c = completion(s, "A", max_tokens=40, stop=[stop, "\x00never"])["choices"][0]
            got, reason = c["text"], c["finish_reason"]
        check(got == want and reason == "stop", f"stop {stop!r} (stream={stream}): {got!r}, {reason}; want {want!r}")


def concurrent(s):
    prompts = ["The ", "A man", "Science is", "Q: ", "Why", "It was", "In the", "Love"]
    alone = [completion(s, p, max_tokens=16)["choices"][0]["text"] for p in prompts]
    together = [None] * len(prompts)
    errors = []

    def one(i):
        try:
            together[i] = completion(s, prompts[i], max_tokens=16)["choices"][0]["text"]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD_S)
    check(not errors, "concurrent errors: " + "; ".join(errors))
    check(together == alone, f"concurrent outputs differ:\n{together}\n{alone}")


def errors(s):
    def still_serving():
        completion(s, "ok", max_tokens=2)

    cases = [
        ("malformed JSON", lambda: s.request("POST", "/v1/completions", headers=AUTH, raw="{\"prompt\": "), 400, None),
        ("not an object", lambda: s.request("POST", "/v1/completions", headers=AUTH, raw="[1]"), 400, None),
        ("wrong type", lambda: s.post("/v1/completions", {"prompt": "x", "max_tokens": "ten"}), 400, "max_tokens"),
        ("n > 1", lambda: s.post("/v1/completions", {"prompt": "x", "n": 2}), 400, "n"),
        ("echo", lambda: s.post("/v1/completions", {"prompt": "x", "echo": True}), 400, "echo"),
        ("bad role", lambda: s.post("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}), 400,
         "messages[0].role"),
        ("prompt too long", lambda: s.post("/v1/completions", {"prompt": list(range(5, 5 + 201)), "max_tokens": 1}),
         400, "prompt"),
        ("max_tokens over limit", lambda: s.post("/v1/completions", {"prompt": "x", "max_tokens": 301}), 400,
         "max_tokens"),
        ("token outside vocab", lambda: s.post("/v1/completions", {"prompt": [1, 10 ** 6]}), 400, "prompt"),
        ("body too large", lambda: s.request("POST", "/v1/completions", headers=AUTH,
                                             raw=json.dumps({"prompt": "x" * 5000})), 413, None),
        ("chunked body too large", lambda: s.chunked("/v1/completions", ['{"prompt": "'] + ["x" * 1000] * 6 + ['"}']),
         413, None),
        ("number out of range", lambda: s.request("POST", "/v1/completions", headers=AUTH,
                                                  raw='{"prompt": "x", "temperature": 1e309}'), 400, None),
        ("unknown route", lambda: s.request("GET", "/v2/nothing", headers=AUTH), 404, None),
        ("wrong method", lambda: s.request("GET", "/v1/completions", headers=AUTH), 405, None),
        ("no API key", lambda: s.post("/v1/completions", {"prompt": "x"}, key=False), 401, None),
        ("bad API key", lambda: s.request("POST", "/v1/completions", {"prompt": "x"},
                                          {"Authorization": "Bearer nope"}), 401, None),
    ]
    status, _, j = s.chunked("/v1/completions", ['{"prompt": "o', 'k", "max_tokens": 2}'])
    check(status == 200, f"a small chunked body: status {status}: {j}")
    for name, call, want, param in cases:
        status, r, j = call()
        try:
            check_error(status, j, want, param)
        except SystemExit as e:
            raise SystemExit(f"{name}: {e}")
        if want == 405:
            check(r.getheader("Allow") == "POST", f"Allow header {r.getheader('Allow')}")
        still_serving()


def metrics_after(s):
    m = s.metrics()
    check(m['moe_http_requests_total{endpoint="/v1/completions",status="200"}'] >= 10, "request counter")
    check(m['moe_http_requests_total{endpoint="other",status="404"}'] >= 1, "404 counter")
    check(m["moe_generation_tokens_total"] > 0 and m["moe_request_latency_seconds_count"] > 0, "token counters")
    check(m['moe_request_latency_seconds_bucket{le="+Inf"}'] == m["moe_request_latency_seconds_count"], "histogram")
    for k in ("moe_queue_length", "moe_running_requests", "moe_batch_tokens", "moe_kv_blocks_total",
              "moe_generation_tokens_per_second"):
        check(k in m, "missing " + k)
    check(any(k.startswith("moe_expert_tokens_total{layer=") for k in m), "no per-expert counters")
    # Energy: a measurement where the machine has counters, otherwise only that there are none.
    check(m["moe_energy_available"] in (0, 1), "moe_energy_available")
    check(("moe_energy_joules_total" in m) == (m["moe_energy_available"] == 1), "energy counter without counters")


def queue_full(moe, model):
    """--max-running 1 --max-queue 1: one running, one waiting, the third is refused with 429.
    Also: the chat template is recognised from tokenizer_config.json."""
    with open(os.path.join(model, "checkpoint", "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n'}}{% endfor %}",
                   "eos_token": "<|endoftext|>"}, f)
    s = Server(moe, model, "--max-running", "1", "--max-queue", "1", "--served-model-name", "tiny")
    try:
        body = json.dumps({"prompt": "The ", "max_tokens": 60000, "temperature": 0.8, "ignore_eos": True,
                           "stream": True})
        a = s.conn()
        a.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        ra = a.getresponse()
        check(ra.status == 200, f"long request status {ra.status}")
        ra.fp.readline()  # a first chunk: it is running
        b = s.conn()
        b.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        s.wait_metric("moe_queue_length", lambda v: v == 1, "one request waiting")
        status, r, j = s.post("/v1/completions", {"prompt": "x", "max_tokens": 2})
        check_error(status, j, 429)
        check(r.getheader("Retry-After") is not None, "no Retry-After header")
        # The clients go away: both requests are cancelled, and the server serves again.
        a.close()
        b.close()
        s.wait_metric('moe_request_finish_total{reason="cancelled"}', lambda v: v >= 2, "two cancelled requests")
        s.wait_metric("moe_running_requests", lambda v: v == 0, "nothing running")
        check(completion(s, "ok", max_tokens=2)["usage"]["completion_tokens"] >= 1, "request after 429")
        m = s.metrics()
        check(m["moe_requests_rejected_total"] >= 1, "rejected counter")
        print("queue test: finish reasons", {k: v for k, v in m.items() if k.startswith("moe_request_finish_total")},
              "generated", m["moe_generation_tokens_total"])
    finally:
        err = s.stop()
    check("chat template chatml" in err, "template from tokenizer_config.json: " + err[-1000:])


def offloaded(moe, model, greedy_text):
    # Experts offloaded to a budget of 3 (LRU, O_DIRECT reads): the same greedy text as fully resident,
    # also under concurrent requests, and the expert store's counters in /metrics.
    s = Server(moe, model, "--api-key", KEY, "--resident-experts", "3", "--cache-policy", "lru", "--expert-io", "direct")
    try:
        check(completion(s, "The ", max_tokens=12)["choices"][0]["text"] == greedy_text,
              "offloaded experts changed the greedy text")
        concurrent(s)
        m = s.metrics()
        check(m.get("moe_expert_capacity") == 3, f"capacity in /metrics: {m.get('moe_expert_capacity')}")
        check(m.get("moe_expert_cache_misses_total", 0) > 0 and m.get("moe_expert_bytes_moved_total", 0) > 0,
              "no misses or bytes moved in /metrics")
        check(0 <= m.get("moe_expert_cache_hit_rate", -1) <= 1, "hit rate missing from /metrics")
    finally:
        s.stop()


def main():
    moe = sys.argv[1]
    if not os.path.isdir(FORTUNES):
        print("skipped: the fortunes package is not installed")
        return 77
    tmp = tempfile.mkdtemp(prefix="moe_serve_test_")
    try:
        data = os.path.join(tmp, "corpus.txt")
        with open(data, "w") as f:
            for name in ("literature", "science"):
                with open(os.path.join(FORTUNES, name), errors="replace") as g:
                    f.write(g.read())
        run = os.path.join(tmp, "tiny")
        p = subprocess.run([moe, "train", "--out", run, "--data", data, *TINY, "--steps", "30"], capture_output=True,
                           text=True)
        check(p.returncode == 0, "train failed: " + p.stderr[-2000:])
        # A long context (RoPE has no position table) so that one request can outlast the others.
        cfg_path = os.path.join(run, "checkpoint", "config.json")
        cfg = json.load(open(cfg_path))
        cfg["max_position_embeddings"] = 65536
        json.dump(cfg, open(cfg_path, "w"))

        s = Server(moe, run, "--api-key", KEY, "--max-body-bytes", "4096", "--max-prompt-tokens", "200",
                   "--max-tokens-limit", "300")
        try:
            greedy_text, chat_text = basic(s)
            streaming(s, greedy_text, chat_text)
            stop_strings(s)
            concurrent(s)
            errors(s)
            metrics_after(s)
        finally:
            s.stop()
        queue_full(moe, run)
        offloaded(moe, run, greedy_text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
