#!/usr/bin/env python3
"""Renders the page of `moe report` in headless Chromium and checks the screenshot is not blank.

    report_screenshot.py MOE [--keep DIR] [--chromium PATH]

Writes a synthetic run directory (make_report_run.py: 600 steps, 4 MoE layers of 8 experts, a resume,
a skipped step, a cut-short last line), runs `MOE report RUN --out report.html`, screenshots the page at
1280x2400 and decodes the PNG with the standard library (zlib; no imaging package): it must be a valid
PNG of that size with many distinct colours (text antialiasing, the viridis heat maps), a fair share
of pixels that are not the page background, and content in every band down the page.

Exit 0: pass; 1: fail; 77 (ctest SKIP_RETURN_CODE): Chromium is not installed. --keep DIR leaves
report.html and screenshot.png there for a look.
"""
import argparse
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_report_run  # noqa: E402

WIDTH, HEIGHT = 1280, 2400
SKIP = 77


def decode_png(data):
    """(width, height, rows): rows are lists of (r, g, b) for an 8-bit RGB or RGBA PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG (bad signature)")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError("bad CRC in chunk %r" % kind)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None or not idat:
        raise ValueError("PNG without IHDR or IDAT")
    width, height, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or ctype not in (2, 6) or interlace != 0:
        raise ValueError("unsupported PNG: depth %d, colour type %d, interlace %d" % (depth, ctype, interlace))
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG data has %d bytes, expected %d" % (len(raw), height * (stride + 1)))
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        elif f != 0:
            raise ValueError("bad PNG filter %d in row %d" % (f, y))
        rows.append([tuple(line[i:i + 3]) for i in range(0, stride, bpp)])
        prev = line
    return width, height, rows


def find_chromium(explicit):
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(chromium, html, png, tmp):
    """Runs headless Chromium on file://html; returns its output (for messages)."""
    profile = os.path.join(tmp, "profile")
    os.makedirs(profile, exist_ok=True)
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           "--user-data-dir=" + profile, "--screenshot=" + png, "--window-size=%d,%d" % (WIDTH, HEIGHT),
           pathlib.Path(html).resolve().as_uri()]
    env = dict(os.environ, HOME=tmp, XDG_CONFIG_HOME=tmp, XDG_CACHE_HOME=tmp)
    # Its own process group, so a hung browser and its helpers can all be stopped.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += b"\n(killed after 90 s)"
    return out.decode("utf-8", "replace")


def check(png_path):
    """Problems with the screenshot (an empty list when it looks like a rendered page)."""
    with open(png_path, "rb") as f:
        width, height, rows = decode_png(f.read())
    if (width, height) != (WIDTH, HEIGHT):
        return ["screenshot is %dx%d, expected %dx%d" % (width, height, WIDTH, HEIGHT)]
    counts = {}
    for row in rows:
        for px in row:
            counts[px] = counts.get(px, 0) + 1
    background, bg_count = max(counts.items(), key=lambda kv: kv[1])
    total = width * height
    content = 1 - bg_count / total
    print("screenshot: %dx%d, %d distinct colours, background %s, %.1f%% other pixels"
          % (width, height, len(counts), "#%02x%02x%02x" % background, 100 * content))
    problems = []
    if len(counts) < 200:
        problems.append("only %d distinct colours: the page did not render its plots" % len(counts))
    if content < 0.15:
        problems.append("only %.1f%% of the pixels differ from the background: blank page?" % (100 * content))
    bands = 6
    for b in range(bands):
        band = rows[b * height // bands:(b + 1) * height // bands]
        other = sum(1 for row in band for px in row if px != background) / (len(band) * width)
        colours = len({px for row in band for px in row})
        print("  band %d: %.1f%% content, %d colours" % (b, 100 * other, colours))
        if other < 0.03 or colours < 20:
            problems.append("band %d of %d (rows %d-%d) is nearly blank" % (b, bands, b * height // bands,
                                                                             (b + 1) * height // bands))
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("moe", help="the moe binary")
    ap.add_argument("--keep", help="directory to leave report.html and screenshot.png in")
    ap.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    args = ap.parse_args()

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("skipped: chromium not installed")
        return SKIP

    with tempfile.TemporaryDirectory(prefix="moe_report_shot_") as tmp:
        run_dir = os.path.join(tmp, "run")
        gen = argparse.Namespace(steps=600, layers=4, experts=8, seed=1, resume=True, truncate=True)
        make_report_run.write_run(run_dir, gen)
        html = os.path.join(tmp, "report.html")
        png = os.path.join(tmp, "screenshot.png")
        rep = subprocess.run([args.moe, "report", run_dir, "--out", html], capture_output=True, text=True, timeout=120)
        print("moe report: exit %d; stdout: %s; stderr: %s" % (rep.returncode, rep.stdout.strip(), rep.stderr.strip()))
        if rep.returncode != 0 or rep.stdout.strip() != html:
            print("FAIL: moe report did not write %s" % html)
            return 1
        out = screenshot(chromium, html, png, tmp)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            shutil.copy(html, os.path.join(args.keep, "report.html"))
            if os.path.exists(png):
                shutil.copy(png, os.path.join(args.keep, "screenshot.png"))
        if not os.path.exists(png):
            print("FAIL: chromium wrote no screenshot; its output:\n" + out[-4000:])
            return 1
        try:
            problems = check(png)
        except ValueError as e:
            problems = ["invalid PNG: %s" % e]
        for p in problems:
            print("FAIL: " + p)
        if problems:
            return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
