#!/usr/bin/env python3
"""`moe merge` end to end on a tiny random model.

  merge_cli_test.py MOE_BINARY TOKENIZER_JSON

The model comes from `moe init` (mixtral, 8 experts, top-2) with the fixture tokenizer copied next
to it. Checks: the merged checkpoint (config, tokenizer, per-layer group lines), --json groups that
partition the experts with shares summing to 1 and the pruning pivots first, `moe eval --compare`
on the merged model, the variants (--router average, --align none, --routing-weight), and bad input
exiting 2 with one error line.
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
    moe, tok = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="moe_merge_cli_")
    try:
        base, merged, pruned = (os.path.join(tmp, n) for n in ("base", "merged", "pruned"))
        run([moe, "init", "--arch", "mixtral", "--layers", "2", "--hidden", "32", "--heads", "4", "--kv-heads", "2",
             "--experts", "8", "--top-k", "2", "--expert-width", "32", "--vocab", "1024", "--context", "64",
             "--out", base])
        shutil.copy(tok, os.path.join(base, "tokenizer.json"))
        calib = os.path.join(tmp, "calib.txt")
        with open(calib, "w") as f:
            f.write(TEXT)

        # merge 8 -> 4: text output
        p = run([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", merged,
                 "--seq-len", "32", "--threads", "2"])
        for layer in (0, 1):
            assert f"layer {layer}: 0 <-" in p.stdout and "| 3 <-" in p.stdout, p.stdout
        assert "merged experts of 8" in p.stdout, p.stdout
        with open(os.path.join(merged, "config.json")) as f:
            cfg = json.load(f)
        assert cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2, cfg
        assert os.path.exists(os.path.join(merged, "tokenizer.json")), "tokenizer.json not copied"

        # --json: groups partition the experts, pivots are prune's kept experts, shares sum to 1
        j = json.loads(run([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", merged,
                            "--seq-len", "32", "--rows", "64", "--overwrite", "--json"]).stdout)
        pj = json.loads(run([moe, "prune", "--model", base, "--keep", "4", "--calibration", calib, "--out", pruned,
                             "--seq-len", "32", "--json"]).stdout)
        assert j["keep"] == 4 and len(j["layers"]) == 2 and j["calibration_rows"] <= 64, j
        for l, lp in zip(j["layers"], pj["layers"]):
            assert sorted(e for g in l["groups"] for e in g) == list(range(8)), l
            assert [g[0] for g in l["groups"]] == lp["kept"], (l, lp)
            assert all(abs(sum(s) - 1) < 1e-3 for s in l["shares"]), l
            assert all(sim[0] == 1 for sim in l["similarity"]), l

        # eval --compare works on the merged model
        diff = json.loads(run([moe, "eval", "--model", merged, "--data", calib, "--compare", base, "--seq-len", "32",
                               "--json"]).stdout)
        assert diff["kl_mean"] > 0 and 0 <= diff["top1_agreement"] <= 1, diff
        run([moe, "generate", "--model", merged, "--prompt", "The quick", "--max-tokens", "3", "--threads", "2"])

        # variants
        for extra in (["--router", "average"], ["--align", "none"], ["--routing-weight", "1"],
                      ["--routing-weight", "0"], ["--shares", "usage-sim"]):
            v = json.loads(run([moe, "merge", "--model", base, "--keep", "2", "--calibration", calib, "--out", merged,
                                "--seq-len", "32", "--overwrite", "--json"] + extra).stdout)
            assert all(len(l["groups"]) == 2 for l in v["layers"]), (extra, v)

        # --refit-down: the same groups, a different down projection, closer to the base on the text
        # it was fitted on
        def kl(model):
            return json.loads(run([moe, "eval", "--model", model, "--data", calib, "--compare", base, "--seq-len", "32",
                                   "--json"]).stdout)["kl_mean"]
        avg = os.path.join(tmp, "avg")
        refit = os.path.join(tmp, "refit")
        a_ = json.loads(run([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", avg,
                             "--seq-len", "32", "--router", "average", "--json"]).stdout)
        r_ = json.loads(run([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", refit,
                             "--seq-len", "32", "--router", "average", "--refit-down", "0.1", "--json"]).stdout)
        assert r_["refit_down"] == 0.1 and [l["groups"] for l in r_["layers"]] == [l["groups"] for l in a_["layers"]]
        assert kl(refit) < kl(avg), (kl(refit), kl(avg))

        # bad input: exit 2, one line
        out = os.path.join(tmp, "x")
        error([moe, "merge", "--model", base, "--keep", "8", "--calibration", calib, "--out", out], "--keep 8")
        error([moe, "merge", "--model", base, "--keep", "1", "--calibration", calib, "--out", out], "--keep 1")
        error([moe, "merge", "--model", base, "--keep", "4", "--calibration", os.path.join(tmp, "nope.txt"),
               "--out", out], "nope.txt")
        error([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", merged],
              "already holds a checkpoint")
        error([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", base], "must differ")
        error([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", out,
               "--router", "mean"], "--router")
        error([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", out,
               "--routing-weight", "2"], "--routing-weight")
        error([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", out,
               "--shares", "equal"], "--shares")
        error([moe, "merge", "--model", base, "--keep", "4", "--calibration", calib, "--out", out,
               "--refit-down", "-1"], "--refit-down")
        print("merge_cli_test: ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
