#!/usr/bin/env python3
"""Rewrites a checkpoint's floating-point tensors in another dtype (bf16 or f16), as Hugging Face
checkpoints are usually published, so that offloading and serving benchmarks read realistic bytes.

    bench/convert_dtype.py SRC_DIR DST_DIR [--dtype bf16|f16]

Copies config.json (torch_dtype updated) and the tokenizer files; writes DST_DIR/model.safetensors.
Needs only numpy. bf16 rounds to nearest even, as the engine does.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "U8": np.uint8,
      "I32": np.int32, "I64": np.int64, "BF16": np.uint16}


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[b:end])
    return out, meta


def to_bf16(a):
    u = a.astype(np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(a)
    rounded = np.where(nan, (u >> 16) | 0x40, rounded)
    return rounded.astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16"])
    a = ap.parse_args()
    src = a.src if os.path.exists(os.path.join(a.src, "config.json")) else os.path.join(a.src, "checkpoint")
    tensors, meta = read(os.path.join(src, "model.safetensors"))
    os.makedirs(a.dst, exist_ok=True)
    items = []
    for name, (dt, shape, raw) in tensors.items():
        if dt in ("F32", "F64", "F16", "BF16") and dt != a.dtype.upper():
            x = np.frombuffer(raw, dtype=DT[dt]) if dt != "BF16" else \
                (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            y = to_bf16(x) if a.dtype == "bf16" else x.astype(np.float16)
            dt, raw = a.dtype.upper(), y.tobytes()
        items.append((name, dt, shape, raw))
    size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "BF16": 2, "F16": 2, "I8": 1, "U8": 1}
    items.sort(key=lambda t: (-size[t[1]], t[0]))
    header, off = {}, 0
    for name, dt, shape, raw in items:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    header["__metadata__"] = meta or {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = os.path.join(a.dst, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, raw in items:
            f.write(raw)
    os.replace(tmp, os.path.join(a.dst, "model.safetensors"))
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["torch_dtype"] = "bfloat16" if a.dtype == "bf16" else "float16"
    json.dump(cfg, open(os.path.join(a.dst, "config.json"), "w"), indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        for d in (src, os.path.dirname(src.rstrip("/"))):
            if os.path.exists(os.path.join(d, name)):
                shutil.copy(os.path.join(d, name), os.path.join(a.dst, name))
                break
    print(f"wrote {a.dst} ({off / 2**20:.1f} MiB of tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
