#!/usr/bin/env python3
"""`moe compress` end to end on a tiny random model, and the result in `moe eval` and `moe generate`.

  compress_cli_test.py MOE_BINARY TOKENIZER_JSON

The model comes from `moe init` (mixtral, 2 layers, 8 experts of width 32 on d 32, top-2) with the
fixture tokenizer copied next to it. Checks: the compressed checkpoint (config, tokenizer, --json
report), --rank at full rank (32) giving the base model back (eval --compare: top-1 agreement 1),
--ratio with and without --shared-base, factored and materialised execution giving the same loss,
generate on the result, and bad input exiting 2 with one error line.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine.\n"
        "All that glitters is not gold; fortune favours the bold, and the early bird gets the worm.\n") * 6


def run(cmd, rc=0):
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode != rc:
        print("command:", " ".join(cmd))
        print("stdout:", p.stdout[-4000:])
        print("stderr:", p.stderr[-4000:])
        raise SystemExit(f"FAIL: exit code {p.returncode}, expected {rc}")
    return p


def error(cmd, pattern):
    p = run(cmd, rc=2)
    lines = p.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("moe: error: ") or pattern not in lines[0]:
        raise SystemExit(f"FAIL: {' '.join(cmd)}: expected one error line with '{pattern}', got {p.stderr!r}")


def main():
    moe, tok = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="moe_compress_cli_")
    try:
        base = os.path.join(tmp, "base")
        run([moe, "init", "--arch", "mixtral", "--layers", "2", "--hidden", "32", "--heads", "4", "--kv-heads", "2",
             "--experts", "8", "--top-k", "2", "--expert-width", "32", "--vocab", "1024", "--context", "64",
             "--out", base])
        shutil.copy(tok, os.path.join(base, "tokenizer.json"))
        text = os.path.join(tmp, "text.txt")
        with open(text, "w") as f:
            f.write(TEXT)

        def compare(model, *extra):
            return json.loads(run([moe, "eval", "--model", model, "--data", text, "--compare", base, "--seq-len",
                                   "32", "--json", "--threads", "2", *extra]).stdout)

        # Full rank (min(32, 32)): the base model again, up to f32 rounding.
        full = os.path.join(tmp, "full")
        j = json.loads(run([moe, "compress", "--model", base, "--out", full, "--rank", "32", "--json"]).stdout)
        assert j["rank"] == 32 and j["moe_layers"] == 2 and j["matrices"] == 2 * 8 * 3, j
        assert j["rel_error_max"] < 1e-9 and j["param_ratio"] == 2.0, j
        with open(os.path.join(full, "config.json")) as f:
            cfg = json.load(f)
        assert cfg["low_rank_config"] == {"method": "moe_cpp_low_rank", "rank": 32, "shared_base": False}, cfg
        assert os.path.exists(os.path.join(full, "tokenizer.json")), "tokenizer.json not copied"
        for mode in ("factored", "materialise"):
            c = compare(full, "--low-rank-exec", mode)
            assert c["top1_agreement"] == 1 and c["kl_mean"] < 1e-6, (mode, c)

        # --ratio 0.5, with and without a shared base; factored and materialised agree.
        for shared in (False, True):
            out = os.path.join(tmp, "half_base" if shared else "half")
            cmd = [moe, "compress", "--model", base, "--out", out, "--ratio", "0.5", "--threads", "2"]
            p = run(cmd + (["--shared-base"] if shared else []))
            assert "expert parameters" in p.stdout and "relative error" in p.stdout, p.stdout
            with open(os.path.join(out, "config.json")) as f:
                lrc = json.load(f)["low_rank_config"]
            assert lrc["rank"] == (6 if shared else 8) and lrc["shared_base"] == shared, lrc
            f_ = compare(out, "--low-rank-exec", "factored")
            m_ = compare(out, "--low-rank-exec", "materialise")
            a_ = compare(out)
            assert f_["kl_mean"] > 0 and 0 <= f_["top1_agreement"] <= 1, f_
            assert abs(f_["loss"] - m_["loss"]) < 1e-5 * abs(m_["loss"]), (f_, m_)
            assert abs(a_["loss"] - m_["loss"]) < 1e-5 * abs(m_["loss"]), (a_, m_)
            run([moe, "generate", "--model", out, "--prompt", "The quick", "--max-tokens", "3", "--threads", "2"])

        # --calibration: activation-aware factors. The text's inputs change the factors (not the
        # plain SVD's), the error on those inputs is reported, and on the same text the model stays at
        # least as close to the base as the plain factors of the same rank (KL, the quantity fitted).
        cal = os.path.join(tmp, "cal")
        j = json.loads(run([moe, "compress", "--model", base, "--out", cal, "--ratio", "0.5", "--calibration", text,
                            "--seq-len", "32", "--json", "--threads", "2"]).stdout)
        assert j["rank"] == 8 and j["calibration_tokens"] > 100, j
        assert 0 < j["rel_input_error_mean"] < 1 and j["matrices_without_rows"] >= 0, j
        plain, aware = compare(os.path.join(tmp, "half")), compare(cal)
        assert aware["kl_mean"] < plain["kl_mean"], (aware, plain)
        p = run([moe, "compress", "--model", base, "--out", cal, "--rank", "4", "--calibration", text,
                 "--overwrite", "--shared-base"])
        assert "activation-aware" in p.stdout, p.stdout
        error([moe, "compress", "--model", base, "--out", x_cal := os.path.join(tmp, "xc"), "--rank", "4",
               "--calibration", os.path.join(tmp, "missing.txt")], "missing.txt")
        error([moe, "compress", "--model", base, "--out", x_cal, "--rank", "4", "--calibration", text,
               "--damping", "0"], "--damping")

        # --overwrite; an output that is not empty without it
        half = os.path.join(tmp, "half")
        run([moe, "compress", "--model", base, "--out", half, "--rank", "4", "--overwrite"])
        error([moe, "compress", "--model", base, "--out", half, "--rank", "4"], "not empty")

        # bad input: exit 2, one line
        x = os.path.join(tmp, "x")
        error([moe, "compress", "--model", base, "--out", x, "--rank", "33"], "min(N, K) = 32")
        error([moe, "compress", "--model", base, "--out", x, "--ratio", "1"], "(0, 1)")
        error([moe, "compress", "--model", base, "--out", x, "--ratio", "0"], "--ratio")
        error([moe, "compress", "--model", base, "--out", x, "--rank", "0"], "--rank")
        error([moe, "compress", "--model", base, "--out", x], "exactly one of --rank")
        error([moe, "compress", "--model", base, "--out", x, "--rank", "4", "--ratio", "0.5"], "exactly one of --rank")
        error([moe, "compress", "--model", base, "--out", x, "--ratio", "0.1", "--shared-base"], "shared base")
        error([moe, "compress", "--model", full, "--out", x, "--rank", "4"], "already low-rank")
        error([moe, "compress", "--model", os.path.join(tmp, "missing"), "--out", x, "--rank", "4"], "missing")
        error([moe, "eval", "--model", half, "--data", text, "--low-rank-exec", "bogus"], "--low-rank-exec")
        error([moe, "eval", "--model", half, "--data", text, "--resident-experts", "4"], "low-rank")
        bad = os.path.join(tmp, "bad")
        shutil.copytree(half, bad)
        st = os.path.join(bad, "model.safetensors")
        os.truncate(st, os.path.getsize(st) - 64)
        error([moe, "eval", "--model", bad, "--data", text], "model.safetensors")
        assert not os.path.exists(x), "a failed compress left an output directory"
        print("compress_cli_test: ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
