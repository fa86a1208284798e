#!/usr/bin/env python3
"""`moe prune`, `moe eval --compare` and `--skip-threshold` end to end on a tiny random model.

  prune_cli_test.py MOE_BINARY TOKENIZER_JSON OTHER_TOKENIZER_JSON

The model comes from `moe init` (mixtral, 8 experts, top-2) with the fixture tokenizer copied next
to it. Checks: the pruned checkpoint (config, tokenizer, per-layer lines, usage JSON), eval
--compare of a model against itself (KL 0, agreement 1) and against the pruned one (KL > 0),
--skip-threshold 0 changing nothing, and bad input exiting 2 with one error line.
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
    p = subprocess.run(cmd, capture_output=True, text=True)
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
    moe, tok, other_tok = sys.argv[1], sys.argv[2], sys.argv[3]
    tmp = tempfile.mkdtemp(prefix="moe_prune_cli_")
    try:
        base, pruned = os.path.join(tmp, "base"), os.path.join(tmp, "pruned")
        run([moe, "init", "--arch", "mixtral", "--layers", "2", "--hidden", "32", "--heads", "4", "--kv-heads", "2",
             "--experts", "8", "--top-k", "2", "--expert-width", "32", "--vocab", "1024", "--context", "64",
             "--out", base])
        shutil.copy(tok, os.path.join(base, "tokenizer.json"))
        calib = os.path.join(tmp, "calib.txt")
        with open(calib, "w") as f:
            f.write(TEXT)
        usage_path = os.path.join(tmp, "usage.json")

        # prune 8 -> 4
        p = run([moe, "prune", "--model", base, "--keep", "4", "--calibration", calib, "--out", pruned,
                 "--seq-len", "32", "--usage-out", usage_path, "--threads", "2"])
        for layer in (0, 1):
            assert f"layer {layer}: kept" in p.stdout and "routing weight kept" in p.stdout, p.stdout
        with open(os.path.join(pruned, "config.json")) as f:
            cfg = json.load(f)
        assert cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2, cfg
        assert os.path.exists(os.path.join(pruned, "tokenizer.json")), "tokenizer.json not copied"
        with open(usage_path) as f:
            usage = json.load(f)
        assert [l["layer"] for l in usage["layers"]] == [0, 1], usage
        for l in usage["layers"]:
            assert sum(l["count"]) == 2 * usage["tokens"], l
            assert abs(sum(l["weight"]) - usage["tokens"]) < 1e-4 * usage["tokens"], l  # renormalised top-2

        # --json output and --overwrite
        p = run([moe, "prune", "--model", base, "--keep", "6", "--calibration", calib, "--out", pruned,
                 "--overwrite", "--json"])
        j = json.loads(p.stdout)
        assert j["keep"] == 6 and len(j["layers"]) == 2 and all(len(l["kept"]) == 6 for l in j["layers"]), j
        assert all(0 < l["weight_share"] <= 1 for l in j["layers"]), j

        # eval --compare: itself, then the pruned model
        same = json.loads(run([moe, "eval", "--model", base, "--data", calib, "--compare", base, "--seq-len", "32",
                               "--json"]).stdout)
        assert same["kl_mean"] == 0 and same["kl_max"] == 0 and same["top1_agreement"] == 1, same
        assert same["ppl"] == same["base_ppl"], same
        plain = json.loads(run([moe, "eval", "--model", base, "--data", calib, "--seq-len", "32", "--json"]).stdout)
        assert same["tokens"] == plain["tokens"], (same, plain)
        assert abs(same["base_loss"] - plain["loss"]) < 1e-5 * plain["loss"], (same, plain)
        diff = json.loads(run([moe, "eval", "--model", pruned, "--data", calib, "--compare", base, "--seq-len", "32",
                               "--json"]).stdout)
        assert diff["kl_mean"] > 0 and diff["kl_max"] >= diff["kl_mean"], diff
        assert 0 <= diff["top1_agreement"] <= 1 and diff["base_ppl"] == same["base_ppl"], diff
        p = run([moe, "eval", "--model", pruned, "--data", calib, "--compare", base, "--seq-len", "32"])
        assert "KL(base||model) mean" in p.stdout and "top-1 agreement" in p.stdout, p.stdout

        # --skip-threshold: 0 changes nothing; a threshold above 1/2 skips some top-2 assignments
        zero = json.loads(run([moe, "eval", "--model", base, "--data", calib, "--seq-len", "32", "--json",
                               "--skip-threshold", "0"]).stdout)
        assert zero["loss"] == plain["loss"], (zero, plain)
        skip = json.loads(run([moe, "eval", "--model", base, "--data", calib, "--compare", base, "--seq-len", "32",
                               "--json", "--skip-threshold", "0.55"]).stdout)
        assert skip["kl_mean"] > 0 and skip["base_loss"] == same["base_loss"], skip
        share = json.loads(run([moe, "eval", "--model", base, "--data", calib, "--seq-len", "32", "--json",
                                "--skip-threshold", "0.55"]).stdout)
        assert 0.5 <= share["skipped_share"] < 1, share  # every second choice (w <= 1/2) is skipped
        assert abs(share["loss"] - skip["loss"]) < 1e-5 * skip["loss"], (share, skip)
        run([moe, "generate", "--model", pruned, "--prompt", "The quick", "--max-tokens", "3", "--skip-threshold",
             "0.3", "--threads", "2"])

        # bad input: exit 2, one line
        error([moe, "prune", "--model", base, "--keep", "8", "--calibration", calib, "--out", os.path.join(tmp, "x")],
              "--keep 8")
        error([moe, "prune", "--model", base, "--keep", "1", "--calibration", calib, "--out", os.path.join(tmp, "x")],
              "--keep 1")
        error([moe, "prune", "--model", base, "--keep", "4", "--calibration", os.path.join(tmp, "nope.txt"),
               "--out", os.path.join(tmp, "x")], "nope.txt")
        empty = os.path.join(tmp, "empty.txt")
        open(empty, "w").close()
        error([moe, "prune", "--model", base, "--keep", "4", "--calibration", empty, "--out", os.path.join(tmp, "x")],
              "gives no tokens")
        error([moe, "prune", "--model", base, "--keep", "4", "--calibration", calib, "--out", pruned],
              "already holds a checkpoint")
        error([moe, "prune", "--model", base, "--keep", "4", "--calibration", calib, "--out", base],
              "must differ")
        other = os.path.join(tmp, "other")
        shutil.copytree(base, other)
        shutil.copy(other_tok, os.path.join(other, "tokenizer.json"))
        error([moe, "eval", "--model", base, "--data", calib, "--compare", other], "encode --data differently")
        error([moe, "eval", "--model", base, "--data", calib, "--skip-threshold", "-1"], "--skip-threshold")
        error([moe, "generate", "--model", base, "--prompt", "a", "--skip-threshold", "-0.5"], "--skip-threshold")
        error([moe, "eval", "--model", base, "--data", calib, "--compare", os.path.join(tmp, "missing")], "missing")
        print("prune_cli_test: ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
