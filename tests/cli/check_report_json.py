#!/usr/bin/env python3
"""Checks the JSON summary of `moe report RUN_DIR --out FILE --json` on data/report_run.

    check_report_json.py MOE RUN_DIR OUT_FILE

The fixture: 30 logged steps (0-29) of a 2-MoE-layer model, one resume, one skipped step, an end
line. The output must be one JSON object naming the report it wrote, with the run's figures.
"""
import json
import os
import subprocess
import sys


def main():
    moe, run_dir, out = sys.argv[1:4]
    if os.path.exists(out):
        os.remove(out)
    p = subprocess.run([moe, "report", run_dir, "--out", out, "--json"], capture_output=True, text=True, timeout=120)
    print("exit code:", p.returncode)
    print("stdout:", p.stdout)
    print("stderr:", p.stderr)
    if p.returncode != 0:
        print("FAIL: exit code %d" % p.returncode)
        return 1
    j = json.loads(p.stdout)
    expect = {
        "command": "report", "report": out, "run_dir": run_dir, "logged_steps": 30, "first_step": 0,
        "last_step": 29, "skipped_steps": 1, "resumes": 1, "finished": True, "moe_layers": 2,
        "n_params": 52430336, "n_active_params": 17301504, "tokens": 30 * 8192, "unigram_entropy": 5.62,
        "final_eval_step": None, "final_eval_loss": None, "warnings": [],
    }
    problems = ["%s = %r, expected %r" % (k, j.get(k), v) for k, v in expect.items() if j.get(k) != v]
    for k in ("final_loss", "final_loss_mean10", "tokens_per_s_median", "wall_time_s"):
        if not isinstance(j.get(k), (int, float)) or j[k] <= 0:
            problems.append("%s = %r, expected a positive number" % (k, j.get(k)))
    if "4 experts, top-2" not in j.get("model", ""):
        problems.append("model = %r does not name the experts" % j.get("model"))
    if not os.path.isfile(out) or "<svg" not in open(out, encoding="utf-8").read():
        problems.append("%s was not written or has no plots" % out)
    for p_ in problems:
        print("FAIL: " + p_)
    if problems:
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
