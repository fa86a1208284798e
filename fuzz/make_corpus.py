#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): small valid inputs taken from
the test fixtures (tests/fixtures) or written here, and near-valid ones (one field wrong). The files
are committed; rerun this after changing it (python3 fuzz/make_corpus.py). Every seed stays under
50 KB. Regression inputs (fuzz/regressions/) are not written here: they are the inputs that once
failed, kept as found."""

import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FAMILIES = ["olmoe", "qwen2", "deepseek_v3", "mixtral", "mistral_metaspace"]


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    assert len(data) < 50_000, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors ----
def safetensors(tensors, metadata=None, pad=True, header_override=None):
    """tensors: [(name, dtype, shape, bytes)] laid out back to back."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    text = header_override if header_override is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(*xs):
    return struct.pack("<%df" % len(xs), *xs)


def write_safetensors():
    t = "safetensors"
    good = [("embed.weight", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)),
            ("norm.weight", "BF16", [4], b"\x80\x3f" * 4),
            ("ids", "I64", [2], struct.pack("<2q", 7, -1)),
            ("mask", "BOOL", [3], b"\x01\x00\x01"),
            ("scale", "F64", [], struct.pack("<d", 0.5))]
    out(t, "valid_five_dtypes", safetensors(good, {"format": "pt"}))
    out(t, "valid_empty_tensor", safetensors([("e", "F32", [0, 4], b""), ("s", "I8", [1], b"\x05")]))
    out(t, "valid_no_tensors", safetensors([], {"a": "b"}))
    out(t, "valid_f16_i32_u8", safetensors([("h", "F16", [2], b"\x00\x3c\x00\x40"),
                                            ("i", "I32", [1, 1], struct.pack("<i", 3)),
                                            ("u", "U8", [2, 1], b"\x01\x02")]))
    out(t, "bad_dtype", safetensors([("x", "F8_E4M3", [2], b"\x00\x01")]))
    out(t, "bad_offsets_size", safetensors([], header_override='{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}')
        + b"\x00" * 8)
    out(t, "bad_overlap", safetensors([], header_override='{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
                                                          '"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}')
        + b"\x00" * 8)
    out(t, "bad_truncated", safetensors(good)[:-5])
    out(t, "bad_header_length", struct.pack("<Q", 1 << 40) + b"{}")
    out(t, "bad_metadata", safetensors([], {"n": 1}))


# ---- config.json ----
def write_model_config():
    t = "model_config"
    for fam in sorted(os.listdir(os.path.join(FIXTURES, "hf"))):
        p = os.path.join(FIXTURES, "hf", fam, "config.json")
        if os.path.isfile(p):
            out(t, fam + ".json", open(p, "rb").read())
    c = json.load(open(os.path.join(FIXTURES, "hf", "mixtral", "config.json")))
    c["num_experts_per_tok"] = c["num_local_experts"] + 1
    out(t, "bad_topk.json", json.dumps(c))
    c = json.load(open(os.path.join(FIXTURES, "hf", "qwen2_moe", "config.json")))
    c["hidden_size"] = 1 << 40
    out(t, "bad_hidden_huge.json", json.dumps(c))
    c = json.load(open(os.path.join(FIXTURES, "hf", "deepseek_v3", "config.json")))
    c["rope_scaling"] = {"type": "yarn", "factor": -1}
    out(t, "bad_rope.json", json.dumps(c))
    out(t, "bad_type.json", '{"model_type": 3}')


# ---- tokenizer.json ----
def trim_tokenizer(d, keep):
    """The tokenizer with the vocabulary ids below `keep`, the merges among them and the added
    tokens renumbered after them."""
    m = d["model"]
    vocab = {k: v for k, v in m["vocab"].items() if v < keep}
    merges = []
    for mg in m["merges"]:
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(mg)
    m["vocab"], m["merges"] = vocab, merges
    next_id = keep
    for a in d["added_tokens"]:
        if a["id"] >= keep:
            if a["content"] in m["vocab"]:
                del m["vocab"][a["content"]]
            a["id"] = next_id
            next_id += 1
    return d


def write_tokenizer():
    t = "tokenizer"
    for fam in FAMILIES:
        d = json.load(open(os.path.join(FIXTURES, "tokenizers", fam, "tokenizer.json")))
        keep = 330 if "olmoe" in fam or "qwen" in fam or "deepseek" in fam else 360
        out(t, fam + ".json", json.dumps(trim_tokenizer(d, keep), ensure_ascii=False))
    d = json.load(open(os.path.join(CORPUS, t, "olmoe.json")))
    d["added_tokens"][0]["id"] = 1 << 30
    out(t, "bad_added_id.json", json.dumps(d))
    d = json.load(open(os.path.join(CORPUS, t, "qwen2.json")))
    d["normalizer"] = {"type": "NFKD"}
    out(t, "bad_normalizer.json", json.dumps(d))
    d = json.load(open(os.path.join(CORPUS, t, "mixtral.json")))
    d["model"]["merges"].append("zz qq")
    out(t, "bad_merge.json", json.dumps(d))


# ---- text for the fixture tokenizers (byte 0 picks the tokenizer) ----
def write_tokenizer_encode():
    t = "tokenizer_encode"
    texts = ["Hello, world! It's 2024.", "  leading spaces\n\nand\ttabs  ", "na\u00efve caf\u00e9 \u4e2d\u6587 \U0001F642",
             "<|endoftext|>x<|im_start|>user\n<s>[INST] hi [/INST]</s>", "e\u0301 \u212b NFC", "123456789 0.5e10"]
    for i in range(len(FAMILIES)):
        for j, s in enumerate(texts):
            if (i + j) % 2 == 0:
                out(t, "%s_%d" % (FAMILIES[i], j), bytes([i]) + s.encode())
    out(t, "invalid_utf8", b"\x00ab\xff\xfe\xc3(\xe2\x82")


# ---- HTTP request bodies ----
def write_http_request():
    t = "http_request"
    bodies = {
        "completion_text": {"model": "m", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.7,
                            "top_p": 0.9, "top_k": 40, "seed": 1, "stop": ["\n\n", "END"]},
        "completion_tokens": {"prompt": [1, 2, 3, 2147483647], "max_tokens": 4.0, "stream": True,
                              "stream_options": {"include_usage": True}},
        "completion_batch": {"prompt": [[5, 6]], "n": 1, "best_of": 1, "logprobs": 0, "echo": False},
        "chat": {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."},
                                             {"role": "developer", "content": [{"type": "text", "text": "x"}]}],
                 "max_completion_tokens": 8, "repetition_penalty": 1.1, "frequency_penalty": 0.5,
                 "presence_penalty": -0.5, "ignore_eos": True, "tools": []},
        "bad_role": {"messages": [{"role": "tool", "content": "x"}]},
        "bad_top_p": {"prompt": "x", "top_p": 0},
        "bad_stop": {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
    }
    for name, b in bodies.items():
        out(t, name + ".json", json.dumps(b, ensure_ascii=False))
    out(t, "bad_number.json", '{"prompt": "x", "max_tokens": 1e309}')
    out(t, "bad_syntax.json", '{"prompt": "x", ')
    out(t, "bad_unicode.json", '{"prompt": "\\ud800 \xff"}'.encode("latin-1"))


# ---- chat templates: Jinja texts, and conversations (byte 0 format, byte 1 bos/eos, 0x1E between
# messages, each a role byte then the content) ----
def write_chat_template():
    t = "chat_template"
    ns = {}
    src = open(os.path.join(FIXTURES, "chat_templates", "make_expected.py"), encoding="utf-8").read()
    # The published templates: the assignments before TEMPLATES in make_expected.py.
    exec(src[src.index("# Qwen1.5"):src.index("# name: (jinja")], ns)
    for name in ["QWEN2", "QWEN3", "MISTRAL", "TULU", "DEEPSEEK"]:
        out(t, "jinja_" + name.lower(), ns[name])
    out(t, "jinja_unknown", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    conv = [b"\x00You are terse.", b"\x01Hi there!", b"\x02Hello.\nHow can I help?", "\x01Name a prime: \u00fcn\u00efcode ok?".encode()]
    for f in range(6):
        out(t, "conv_format%d" % f, bytes([f, f % 3]) + b"\x1e".join(conv))
    out(t, "conv_mistral_bad_order", b"\x02\x00" + b"\x1e".join([b"\x01a", b"\x01b"]))
    out(t, "conv_unknown_role", b"\x00\x00\x03tool:result\x1e\x01q")
    out(t, "conv_recognised", b"\xff\x00<|im_start|>\x1e\x01hi")


# ---- gguf ----
def gguf_file(kv, tensors, version=3, magic=b"GGUF", counts=None):
    """kv: [(key, type, packed value)]; tensors: [(name, ne, ggml type, offset)] then data bytes."""
    s = lambda x: struct.pack("<Q", len(x)) + x.encode()
    n_t, n_kv = counts if counts else (len(tensors[0]), len(kv))
    b = magic + struct.pack("<IQQ", version, n_t, n_kv)
    for key, typ, val in kv:
        b += s(key) + struct.pack("<I", typ) + val
    for name, ne, typ, off in tensors[0]:
        b += s(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne) + struct.pack("<IQ", typ, off)
    b += b"\0" * ((32 - len(b) % 32) % 32)
    return b + tensors[1]


def write_gguf():
    t = "gguf"
    s = lambda x: struct.pack("<Q", len(x)) + x.encode()
    arr = lambda typ, items: struct.pack("<IQ", typ, len(items)) + b"".join(items)
    kv = [("general.architecture", 8, s("llama")), ("general.alignment", 4, struct.pack("<I", 32)),
          ("tokenizer.ggml.model", 8, s("gpt2")), ("tokenizer.ggml.pre", 8, s("qwen2")),
          ("tokenizer.ggml.tokens", 9, arr(8, [s("a"), s("b"), s("ab")])),
          ("tokenizer.ggml.token_type", 9, arr(5, [struct.pack("<i", 1)] * 3)),
          ("tokenizer.ggml.merges", 9, arr(8, [s("a b")])), ("f", 6, struct.pack("<f", 0.5)),
          ("nested", 9, struct.pack("<IQ", 9, 1) + arr(4, [struct.pack("<I", 1)]))]
    f32_data = f32(*range(8))
    q8 = struct.pack("<e", 0.5) + bytes(range(32))
    out(t, "valid_f32", gguf_file(kv, ([("w", [4, 2], 0, 0)], f32_data)))
    out(t, "valid_q8_0", gguf_file(kv[:2], ([("w", [32], 8, 0)], q8)))
    out(t, "valid_v2", gguf_file(kv[:1], ([("w", [4, 2], 0, 0)], f32_data), version=2))
    out(t, "bad_magic", gguf_file(kv, ([("w", [4, 2], 0, 0)], f32_data), magic=b"GGUG"))
    out(t, "bad_version", gguf_file(kv, ([("w", [4, 2], 0, 0)], f32_data), version=1))
    out(t, "unknown_type", gguf_file(kv[:1], ([("w", [32], 7, 0)], q8)))
    out(t, "short_data", gguf_file(kv[:1], ([("w", [4, 2], 0, 0)], f32_data[:-4])))
    out(t, "huge_counts", gguf_file(kv[:1], ([("w", [4, 2], 0, 0)], f32_data), counts=(1, 1 << 60)))
    out(t, "huge_dims", gguf_file(kv[:1], ([("w", [1 << 40, 1 << 40], 0, 0)], f32_data)))
    for name in ("qwen2", "mixtral"):
        with open(os.path.join(FIXTURES, "gguf", "tokenizers", name + ".gguf"), "rb") as f:
            out(t, "tokenizer_" + name, f.read())


if __name__ == "__main__":
    write_gguf()
    write_safetensors()
    write_model_config()
    write_tokenizer()
    write_tokenizer_encode()
    write_http_request()
    write_chat_template()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        print("%-18s %3d seeds, largest %6d bytes" % (t, len(files), max(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)))
