#!/usr/bin/env python3
"""Every numeric flag of every `moe` command is range-checked, and a value outside its range gets
exit code 2 and one line naming the flag.

    flag_audit.py MOE

Walks `moe --help` and the help of every (sub)command. A flag whose type is INT, UINT or FLOAT must
show a range from the validators of src/cli/common.h ("INT:in [1, 1024]", "FLOAT:> 0",
"FLOAT:in (0, 1]", "INT:>= 0", or a set "INT:{4,8}"); only --seed (any 64-bit value is a seed) is exempt. Then each
checked flag is given a value below its range, one above it (when bounded), "nan" and "1e999" on a
command line without its other (required) arguments: the validator must answer first, with
`moe: error: --FLAG: ...` on one stderr line and exit code 2, within 10 s (no model is loaded).
"""
import concurrent.futures
import re
import subprocess
import sys

EXEMPT = {"--seed"}
# "  --flag TYPE[:RANGE][=DEFAULT] ..." with RANGE "in [lo, hi]", "in (lo, hi]", ">= lo" or "> lo"
TYPE = re.compile(r"^\s+(?:-\w,)?(--[\w-]+)\s+(INT|UINT|FLOAT)"
                  r"(?::(in [\[(][^\]]*\]|>=? [^\s=]+|\{[^}]*\})|(:\S*))?", re.M)


def run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=10)


def commands(moe, path=()):
    text = run([moe, *path, "--help"]).stdout
    yield path, text
    m = re.search(r"\nSubcommands:\n(.*)", text, re.S)
    if m:
        for line in m.group(1).splitlines():
            if re.match(r"^  \S", line):
                yield from commands(moe, path + (line.split()[0],))


def bad_values(check):
    """Values outside the range (or set) that `check` (the text after INT:/FLOAT:) describes."""
    if check.startswith("{"):
        members = {float(x) for x in check[1:-1].split(",")}
        return [str(next(v for v in range(-1, 1 << 20) if v not in members)), "nan"]
    m = re.fullmatch(r"in ([\[(])(-?[\d.e+]+), (-?[\d.e+]+)\]", check or "")
    if m:
        lo, hi = float(m.group(2)), float(m.group(3))
        out = [lo if m.group(1) == "(" else lo - 1, hi * 2 + 1]
    else:
        m = re.fullmatch(r"(>=?) (-?[\d.e+]+)", check or "")
        if not m:
            return None
        lo = float(m.group(2))
        out = [lo if m.group(1) == ">" else lo - 1]
    fmt = lambda v: str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
    return [fmt(v) for v in out] + ["nan", "1e999"]


def refused_cleanly(moe, path, flag, v, where):
    """None when `moe PATH FLAG=V` exits 2 with one line naming the flag, else the failure."""
    r = run([moe, *path, flag + "=" + v])
    lines = r.stderr.strip().splitlines()
    if r.returncode == 2 and len(lines) == 1 and lines[0].startswith("moe: error: " + flag + ":"):
        return None
    return f"{where}={v}: exit {r.returncode}, stderr {r.stderr.strip()[:200]!r}"


def main():
    moe = sys.argv[1]
    unchecked, failures, jobs = [], [], []
    for path, text in commands(moe):
        for flag, ty, check, other in TYPE.findall(text):
            if flag in EXEMPT:
                continue
            where = " ".join(("moe",) + path) + " " + flag
            if not check and not other:
                unchecked.append(f"{where} ({ty})")
                continue
            values = bad_values(check)
            if values is None:
                failures.append(f"{where}: cannot read the range of {ty}{other}")
                continue
            jobs += [(path, flag, v, where) for v in values]
    # Four command lines at a time: a sanitizer build starts each process slowly.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        failures += [f for f in pool.map(lambda j: refused_cleanly(moe, *j), jobs) if f is not None]
    tried = len(jobs)
    for u in unchecked:
        print("no range check:", u)
    for f in failures:
        print("FAILED:", f)
    print(f"flag_audit: {tried} out-of-range values tried, {len(unchecked)} unchecked flags, {len(failures)} failures")
    return 1 if unchecked or failures or tried == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
