#!/usr/bin/env python3
"""moe_cpp's engine API (python/moe_cpp/engine.py) against the `moe` command-line tool.

A tiny model is trained twice on the same text, by `moe train` and by moe_cpp.train: the step losses
must be the same. The Python run then serves as the model (with its tokenizer) for generation and
evaluation, each compared with `moe generate --json` / `moe eval --json`; the Hugging Face and GGUF
fixtures check loading, greedy ids (against transformers' own) and eval without a tokenizer.
Exit code 77 (skipped) when the package or the `moe` binary is not built.

    PYTHONPATH=build/python python3 tests/python/test_engine.py
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

try:
    import moe_cpp
except ImportError as e:
    print("skipped: moe_cpp is not importable:", e)
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
# build/python/moe_cpp/__init__.py -> build/moe
MOE = os.environ.get("MOE_BIN") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(moe_cpp.__file__)))), "moe")

# A tiny qwen3_moe that trains in about a second per few steps on two cores.
MODEL = dict(layers=2, hidden=32, heads=4, kv_heads=2, experts=4, top_k=2, expert_width=32)
OPTIONS = dict(vocab_size=320, seq_len=32, batch_size=4, warmup=2, lr=3e-3, eval_batches=1, eval_every=0,
               checkpoint_every=0, log_every=1, seed=7)
STEPS = 6


def cli_flags(d):
    out = []
    for k, v in d.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def moe(*args):
    p = subprocess.run([MOE, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"moe {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


def moe_json(*args):
    return json.loads(moe(*args, "--json").strip().splitlines()[-1])


def step_losses(run_dir):
    losses = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if j["type"] == "step":
                losses[j["step"]] = j["loss"]
    return losses


def safetensors_ints(path, name):
    """An I64 tensor of a safetensors file, flat (no torch or numpy needed)."""
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])[name]
    assert h["dtype"] == "I64"
    s, e = h["data_offsets"]
    return list(struct.unpack(f"<{(e - s) // 8}q", b[8 + n + s:8 + n + e]))


class Engine(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moe_py_engine_")
        # ~60 KB of English from the repository's docs, copied once so both runs read the same bytes.
        text = ""
        docs = os.path.join(ROOT, "docs")
        for name in sorted(os.listdir(docs)):
            if name.endswith(".md"):
                with open(os.path.join(docs, name), encoding="utf-8", errors="replace") as f:
                    text += f.read()
        cls.corpus = os.path.join(cls.tmp, "corpus.txt")
        with open(cls.corpus, "w", encoding="utf-8") as f:
            f.write(text[:60000])
        cls.heldout = os.path.join(cls.tmp, "heldout.txt")
        with open(cls.heldout, "w", encoding="utf-8") as f:
            f.write(text[60000:63000])
        cls.records = []
        cls.run_dir = os.path.join(cls.tmp, "py")
        cls.summary = moe_cpp.train(cls.run_dir, cls.corpus, steps=STEPS, threads=2, quiet=True,
                                    callback=cls.records.append, **MODEL, **OPTIONS)
        cls.model = moe_cpp.load(cls.run_dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- training ----

    def test_train_matches_cli(self):
        cli_run = os.path.join(self.tmp, "cli")
        moe("train", "--out", cli_run, "--data", self.corpus, "--steps", str(STEPS), "--threads", "2", "--quiet",
            *cli_flags(MODEL), *cli_flags(OPTIONS))
        expected = step_losses(cli_run)
        got = {r["step"]: r["loss"] for r in self.records if r["type"] == "step"}
        self.assertEqual(sorted(got), list(range(1, STEPS + 1)))
        self.assertEqual(got, expected)  # same library, same threads: bit-identical
        self.assertEqual(step_losses(self.run_dir), expected)
        s = self.summary
        self.assertEqual(s["steps_done"], STEPS)
        self.assertFalse(s["stopped"])
        self.assertEqual(s["last_step"]["loss"], expected[STEPS])
        self.assertTrue(os.path.isfile(os.path.join(s["checkpoint"], "model.safetensors")))
        evals = [r for r in self.records if r["type"] == "eval"]
        self.assertEqual(len(evals), 1)
        self.assertAlmostEqual(evals[0]["loss"], s["eval_loss"], places=12)

    def test_callback_stops_and_resume_continues(self):
        run = os.path.join(self.tmp, "stopped")
        seen = []

        def cb(m):
            seen.append(m["step"])
            return m["step"] < 2  # False at step 2

        s = moe_cpp.train(run, self.corpus, steps=STEPS, threads=2, quiet=True, callback=cb, **MODEL, **OPTIONS)
        self.assertTrue(s["stopped"])
        self.assertEqual(s["steps_done"], 2)
        self.assertEqual(seen, [1, 2])
        # The resumed run goes on with the losses the uninterrupted one had.
        s = moe_cpp.train(resume=run, threads=2, quiet=True)
        self.assertEqual(s["steps_done"], STEPS)
        self.assertEqual(step_losses(run), step_losses(self.run_dir))

    def test_callback_exception_propagates(self):
        run = os.path.join(self.tmp, "raising")

        def cb(m):
            raise RuntimeError(f"boom at step {m['step']}")

        with self.assertRaisesRegex(RuntimeError, "boom at step 1"):
            moe_cpp.train(run, self.corpus, steps=STEPS, threads=2, quiet=True, callback=cb, **MODEL, **OPTIONS)
        # A run directory that holds a run is refused, and --overwrite starts again.
        with self.assertRaisesRegex(moe_cpp.Error, "already holds a run"):
            moe_cpp.train(run, self.corpus, steps=1, threads=2, quiet=True, **MODEL, **OPTIONS)
        s = moe_cpp.train(run, self.corpus, steps=1, threads=2, quiet=True, overwrite=True, **MODEL, **OPTIONS)
        self.assertEqual(s["steps_done"], 1)

    # ---- generation ----

    def test_generate_matches_cli(self):
        for prompt, opts, flags in [
            ("The router", dict(temperature=0), ["--temperature", "0"]),
            ("Experts", dict(temperature=0.9, top_k=20, top_p=0.95, seed=3),
             ["--temperature", "0.9", "--top-k", "20", "--top-p", "0.95", "--seed", "3"]),
            ("", dict(temperature=0, repetition_penalty=1.3), ["--temperature", "0", "--repetition-penalty", "1.3"]),
        ]:
            with self.subTest(prompt=prompt, **opts):
                ref = moe_json("generate", "--model", self.run_dir, "--prompt", prompt, "--max-tokens", "12", *flags)
                g = self.model.generate(prompt, 12, **opts)
                self.assertEqual(g.ids, ref["tokens"])
                self.assertEqual(g.text, ref["text"])
                self.assertEqual(g.finish_reason, ref["finish_reason"])
                self.assertEqual(len(g.prompt_ids), ref["prompt_tokens"])
                # The same from the prompt's ids.
                self.assertEqual(self.model.generate(g.prompt_ids, 12, **opts).ids, g.ids)

    def test_stream(self):
        g = self.model.generate("The expert", 16, temperature=0, stop_at_eos=False)
        toks = list(self.model.stream("The expert", 16, temperature=0, stop_at_eos=False))
        self.assertEqual([t.id for t in toks], g.ids)
        self.assertEqual("".join(t.text for t in toks), g.text)  # byte-level BPE: pieces join to the text
        s = self.model.generate("The expert", 16, temperature=0, stop_at_eos=False, stream=True)
        self.assertEqual(s.finish_reason, "")
        for i, t in enumerate(s):
            if i == 2:
                break
        self.assertEqual(s.ids, g.ids[:3])  # nothing decoded beyond what was pulled
        self.assertFalse(s.done)
        s.close()
        self.assertEqual(s.finish_reason, "stopped")
        self.assertEqual(list(s), [])
        with self.model.stream([1, 2, 3], 4, temperature=0, stop_at_eos=False) as s2:
            self.assertEqual(len(list(s2)), 4)
        self.assertEqual(s2.finish_reason, "length")

    def test_hf_fixture_greedy(self):
        for arch in ("qwen3_moe", "mixtral", "olmoe"):
            with self.subTest(arch=arch):
                d = os.path.join(FIXTURES, "hf", arch)
                m = moe_cpp.load(d)
                self.assertIsNone(m.tokenizer)
                self.assertEqual(m.config["model_type"], arch)
                exp = os.path.join(d, "expected.safetensors")
                prompt, greedy = safetensors_ints(exp, "input_ids"), safetensors_ints(exp, "greedy_ids")
                g = m.generate(prompt, len(greedy), temperature=0, stop_at_eos=False)
                self.assertEqual(g.ids, greedy)
                self.assertIsNone(g.text)
                with self.assertRaisesRegex(moe_cpp.Error, "needs a tokenizer"):
                    m.generate("text", 2)

    # ---- evaluation ----

    def test_eval_matches_cli(self):
        ref = moe_json("eval", "--model", self.run_dir, "--data", self.heldout, "--seq-len", "32", "--batch", "3")
        got = self.model.eval(file=self.heldout, seq_len=32, batch=3)
        self.assertEqual(got["tokens"], ref["tokens"])
        self.assertAlmostEqual(got["loss"], ref["loss"], delta=1e-12 * abs(ref["loss"]))
        self.assertAlmostEqual(got["ppl"], ref["ppl"], delta=1e-9 * ref["ppl"])
        with open(self.heldout, encoding="utf-8") as f:
            self.assertEqual(self.model.eval(f.read(), seq_len=32, batch=3)["loss"], got["loss"])

    def test_eval_with_adaptive_k_routing_matches_cli(self):
        ref = moe_json("eval", "--model", self.run_dir, "--data", self.heldout, "--seq-len", "32",
                       "--router-top-p", "0.3")
        got = moe_cpp.load(self.run_dir, router_top_p=0.3).eval(file=self.heldout, seq_len=32)
        self.assertAlmostEqual(got["loss"], ref["loss"], delta=1e-12 * abs(ref["loss"]))
        self.assertEqual(got["mean_k"], ref["mean_k"])
        self.assertLess(got["mean_k"], 2.0)
        self.assertEqual(self.model.eval(file=self.heldout, seq_len=32)["mean_k"], 2.0)
        with self.assertRaisesRegex(moe_cpp.Error, "router_top_p"):
            moe_cpp.load(self.run_dir, router_top_p=1.5)

    def test_eval_ids_hf_and_gguf(self):
        ids = [(7 * i + 3) % 96 for i in range(150)]
        for path in (os.path.join(FIXTURES, "hf", "qwen2_moe"), os.path.join(FIXTURES, "gguf", "qwen3_moe.f32.gguf")):
            with self.subTest(path=path):
                ref = moe_json("eval", "--model", path, "--tokens", ",".join(map(str, ids)))
                got = moe_cpp.load(path).eval(ids)
                self.assertEqual(got["tokens"], ref["tokens"])
                self.assertAlmostEqual(got["loss"], ref["loss"], delta=1e-12 * abs(ref["loss"]))

    def test_bf16(self):
        m = moe_cpp.load(self.run_dir, dtype="bf16")
        ref = moe_json("generate", "--model", self.run_dir, "--prompt", "The", "--max-tokens", "8", "--temperature", "0",
                       "--bf16")
        self.assertEqual(m.generate("The", 8, temperature=0).ids, ref["tokens"])

    # ---- tokenizer ----

    def test_tokenizer(self):
        tok = self.model.tokenizer
        self.assertIsInstance(tok, moe_cpp.Tokenizer)
        self.assertEqual(tok.vocab_size, 320)
        self.assertEqual(tok.token_id("<|endoftext|>"), tok.eos_id)
        s = "Mixture of experts, ünïcode and \U0001F600."
        self.assertEqual(tok.decode(tok.encode(s)), s)
        for path in (self.run_dir, os.path.join(self.run_dir, "tokenizer.json"), self.summary["checkpoint"]):
            self.assertEqual(moe_cpp.Tokenizer.from_file(path).encode(s), tok.encode(s))
        # A GGUF file's tokenizer metadata encodes as its tokenizer.json does.
        js = moe_cpp.Tokenizer.from_file(os.path.join(FIXTURES, "tokenizers", "qwen2", "tokenizer.json"))
        gg = moe_cpp.Tokenizer.from_file(os.path.join(FIXTURES, "gguf", "tokenizers", "qwen2.gguf"))
        self.assertEqual(gg.encode(s), js.encode(s))
        self.assertEqual(gg.decode(js.encode(s)), s)

    # ---- errors ----

    def test_errors(self):
        E = moe_cpp.Error
        self.assertTrue(issubclass(E, ValueError))
        bad = os.path.join(self.tmp, "truncated")
        shutil.copytree(os.path.join(FIXTURES, "hf", "mixtral"), bad)
        st = os.path.join(bad, "model.safetensors")
        with open(st, "r+b") as f:
            f.truncate(os.path.getsize(st) // 2)
        cases = [
            ("does not exist", lambda: moe_cpp.load(os.path.join(self.tmp, "nowhere"))),
            ("model.safetensors", lambda: moe_cpp.load(bad)),
            ("path must be", lambda: moe_cpp.load(42)),
            ("dtype", lambda: moe_cpp.load(self.run_dir, dtype="f8")),
            ("threads", lambda: moe_cpp.load(self.run_dir, threads="2")),
            ("prompt must be", lambda: self.model.generate(3.5)),
            ("outside the vocabulary", lambda: self.model.generate([1, 100000])),
            ("no tokens", lambda: self.model.generate([])),
            ("temperature must be a number", lambda: self.model.generate("a", temperature="hot")),
            ("top_p", lambda: self.model.generate("a", top_p=2.0)),
            ("max_new_tokens must be >= 0", lambda: self.model.generate("a", -1)),
            ("at least 2 tokens", lambda: self.model.eval([5])),
            ("exactly one", lambda: self.model.eval()),
            ("seq_len", lambda: self.model.eval([1, 2, 3], seq_len=10**6)),
            ("does not exist", lambda: moe_cpp.Tokenizer.from_file(os.path.join(self.tmp, "none.json"))),
            ("outside", lambda: self.model.tokenizer.decode([10**6])),
            ("not a token id", lambda: self.model.tokenizer.decode([-1])),
            ("text must be a str", lambda: self.model.tokenizer.encode(b"bytes")),
            ("ids must be", lambda: self.model.tokenizer.decode("abc")),
            ("id must be an int", lambda: self.model.tokenizer.token_bytes(1.0)),
            ("path must be", lambda: moe_cpp.Tokenizer.from_file(None)),
            ("unknown option 'stepz'", lambda: moe_cpp.train(os.path.join(self.tmp, "x"), self.corpus, stepz=3)),
            ("steps must be an int", lambda: moe_cpp.train(os.path.join(self.tmp, "x"), self.corpus, steps="3")),
            ("resumed run", lambda: moe_cpp.train(resume=self.run_dir, layers=3)),
            ("not a run directory", lambda: moe_cpp.train(resume=self.tmp)),
            ("unsupported model_type 'gpt9'", lambda: moe_cpp.train(os.path.join(self.tmp, "x"), self.corpus, arch="gpt9")),
        ]
        for msg, fn in cases:
            with self.subTest(msg=msg):
                with self.assertRaises(E) as cm:
                    fn()
                self.assertIn(msg.lower(), str(cm.exception).lower())


if __name__ == "__main__":
    if not os.path.isfile(MOE):
        print("skipped: the moe binary is not built:", MOE)
        sys.exit(77)
    unittest.main()
