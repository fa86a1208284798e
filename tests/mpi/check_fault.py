#!/usr/bin/env python3
"""Runs a job that must fail (tests/mpi/fault_main.cpp) and checks that it ends in time.

usage: check_fault.py --max-seconds S --expect-rc nonzero|0 --pattern REGEX [--pattern ...] -- CMD...

Passes when CMD ends within S seconds with the expected exit status and its output (stdout and
stderr together) matches every REGEX. A job still running after S seconds is killed (its process
group) and the check fails: that is the hang this test exists to catch.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-seconds", type=float, required=True)
    ap.add_argument("--expect-rc", choices=["nonzero", "0"], required=True)
    ap.add_argument("--pattern", action="append", default=[])
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=a.max_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        print(out)
        print(f"check_fault: FAIL: the job still ran after {a.max_seconds:.0f} s (killed)")
        return 1
    elapsed = time.monotonic() - t0
    print(out)
    print(f"check_fault: exit status {p.returncode} after {elapsed:.1f} s")
    ok = True
    if a.expect_rc == "0" and p.returncode != 0:
        print("check_fault: FAIL: expected exit status 0")
        ok = False
    if a.expect_rc == "nonzero" and p.returncode == 0:
        print("check_fault: FAIL: expected a non-zero exit status")
        ok = False
    for pat in a.pattern:
        if not re.search(pat, out):
            print(f"check_fault: FAIL: output does not match {pat!r}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
