#!/usr/bin/env python3
"""Checks the layer arrows of the sources: every `#include "..."` in src/ and include/ must point to
a header of the including file's own layer or of a layer it may use (the table below, the layers of
the design). The build enforces the same arrows between libraries (one static library per layer,
linking only the layers below); this test enforces them between headers, which all layers reach
through the shared include/ and src/ folders.

Rules:
  - a file's layer is its folder: src/<layer>/... or include/moe/<layer>/...;
  - a public header of layer L (include/moe/L/..., included as "moe/L/...") may be included by L and
    by the layers that may use L;
  - an internal header of layer L (src/L/..., included as "L/..." or by a path relative to the
    including file) may be included by L only, whatever the layer above (the cli's own headers are
    cli/*);
  - a public header includes public headers only (consumers have include/ on their path, not src/);
  - an include that names no file of the tree is reported too (a typo or a header outside the tree
    in quotes, which should be <...>).
The DEPS of each moe_layer(...) call in CMakeLists.txt are checked against the same table.

Usage: check_layers.py [ROOT]       (ROOT: the repository, default: two folders above this file)
       check_layers.py --self-test  (checks that the checker finds violations in a made-up tree)
Exit status 0 when every arrow is allowed; 1 with one line per violation: FILE:LINE: ... .
"""

import os
import re
import sys
import tempfile

# Layer -> the layers it may use directly (the design's table).
MAY_USE = {
    "core": set(),
    "kernels": {"core"},
    "dist": {"core"},
    "moe": {"core", "kernels", "dist"},
    "model": {"core", "kernels", "moe"},
    "text": {"core"},
    # "model, text and below": the layers model and text may use, and theirs.
    "train": {"model", "text", "*below"},
    "infer": {"model", "text", "*below"},
    "cli": {"*all"},
    "python": {"*all"},  # the extension moe_cpp._core (src/python), a front end like cli
}
LAYERS = sorted(MAY_USE)


def allowed(layer):
    """The layers `layer` may include or link, itself excluded."""
    uses = MAY_USE[layer]
    if "*all" in uses:
        return set(LAYERS) - {layer}
    out = set()
    todo = [u for u in uses if not u.startswith("*")]
    below = "*below" in uses
    while todo:
        u = todo.pop()
        if u in out:
            continue
        out.add(u)
        if below:
            todo.extend(v for v in MAY_USE[u] if not v.startswith("*"))
    return out


INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
SOURCE_EXT = (".h", ".hpp", ".hh", ".cpp", ".cc", ".cxx", ".cu", ".cuh", ".inc")


def layer_of(rel):
    """('public' | 'internal', layer) of a path relative to the root, or None outside the layers."""
    parts = rel.split("/")
    if len(parts) >= 4 and parts[0] == "include" and parts[1] == "moe" and parts[2] in MAY_USE:
        return ("public", parts[2])
    if len(parts) >= 3 and parts[0] == "src" and parts[1] in MAY_USE:
        return ("internal", parts[1])
    return None


def resolve(root, rel_file, inc):
    """The included file relative to root, searched as the compiler does for "...": the including
    file's folder, then include/ and src/ (the targets' include directories). None if not found."""
    here = os.path.dirname(rel_file)
    for base in (here, "include", "src"):
        cand = os.path.normpath(os.path.join(base, inc))
        if not cand.startswith("..") and os.path.isfile(os.path.join(root, cand)):
            return cand.replace(os.sep, "/")
    return None


def check_includes(root):
    errors = []
    for top in ("src", "include"):
        for d, _, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if not f.endswith(SOURCE_EXT):
                    continue
                rel = os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                me = layer_of(rel)
                if me is None:
                    errors.append(f"{rel}:1: file outside the layer folders (src/<layer>/, include/moe/<layer>/)")
                    continue
                my_kind, my_layer = me
                with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as fh:
                    for n, line in enumerate(fh, 1):
                        m = INCLUDE_RE.match(line)
                        if not m:
                            continue
                        inc = m.group(1)
                        target = resolve(root, rel, inc)
                        if target is None:
                            errors.append(f'{rel}:{n}: #include "{inc}" names no file of src/ or include/')
                            continue
                        t = layer_of(target)
                        if t is None:
                            errors.append(f'{rel}:{n}: #include "{inc}" ({target}) is outside the layer folders')
                            continue
                        kind, layer = t
                        if my_kind == "public" and kind == "internal":
                            errors.append(f'{rel}:{n}: #include "{inc}": public header -> internal header '
                                          f"{target} (public headers include public headers only)")
                        elif layer == my_layer:
                            continue
                        elif kind == "internal":
                            errors.append(f'{rel}:{n}: #include "{inc}": {my_layer} -> {layer} internals '
                                          f"({target}); another layer's src/ headers are off limits, "
                                          f"expose what is needed in include/moe/{layer}/")
                        elif layer not in allowed(my_layer):
                            may = ", ".join(sorted(allowed(my_layer))) or "std only"
                            errors.append(f'{rel}:{n}: #include "{inc}": {my_layer} -> {layer} is not an '
                                          f"allowed arrow ({my_layer} may use: {may})")
    return errors


LAYER_CALL_RE = re.compile(r"moe_layer\(\s*(\w+)([^)]*)\)", re.S)


def check_cmake(root):
    """The DEPS of each moe_layer(NAME ... DEPS ...) call name only moe_<layer> targets NAME may use."""
    path = os.path.join(root, "CMakeLists.txt")
    if not os.path.isfile(path):
        return []
    text = open(path, encoding="utf-8").read()
    errors = []
    seen = set()
    for m in LAYER_CALL_RE.finditer(text):
        name, args = m.group(1), m.group(2)
        if name == "name" or name.startswith("$"):
            continue  # the function definition itself
        line = text.count("\n", 0, m.start()) + 1
        if name not in MAY_USE:
            errors.append(f"CMakeLists.txt:{line}: moe_layer({name}): not a layer of the table")
            continue
        seen.add(name)
        deps = args.split("DEPS", 1)[1].split() if "DEPS" in args else []
        for dep in deps:
            if dep.startswith("moe_"):
                layer = dep[len("moe_"):]
                if layer not in MAY_USE or layer not in allowed(name):
                    errors.append(f"CMakeLists.txt:{line}: moe_{name} links {dep}: {name} -> {layer} "
                                  f"is not an allowed arrow")
    for layer in LAYERS:
        if layer not in ("cli", "python") and seen and layer not in seen:
            errors.append(f"CMakeLists.txt:1: no moe_layer({layer} ...) target")
    return errors


def self_test():
    """A made-up tree with one violation of each kind; every one must be reported."""
    files = {
        "include/moe/core/a.h": "#pragma once\n",
        "include/moe/model/m.h": '#include "moe/core/a.h"\n#include "moe/infer/i.h"\n',  # model -> infer
        "include/moe/infer/i.h": '#include "moe/model/m.h"\n#include "infer/x.h"\n',      # public -> internal
        "src/infer/x.h": "#pragma once\n",
        "src/model/m.cpp": '#include "kernels/k.h"\n#include "moe/model/m.h"\n',           # kernels internals
        "src/kernels/k.h": '#include "moe/core/a.h"\n',
        "src/cli/c.cpp": '#include "train/t.h"\n#include "cli/c.h"\n#include "moe/infer/i.h"\n',
        "src/cli/c.h": "#pragma once\n",
        "src/train/t.h": '#include "local.h"\n#include "missing.h"\n',                      # missing
        "src/train/local.h": "#pragma once\n",
        "src/text/tok.cpp": '#include "moe/model/m.h"\n',                                  # text -> model
        "CMakeLists.txt": "".join(f"moe_layer({l} SOURCES x DEPS moe_core)\n" for l in LAYERS if l not in
                                  ("cli", "core", "text"))
        + "moe_layer(core SOURCES x)\nmoe_layer(text SOURCES x DEPS moe_core moe_model)\n",  # link arrow
    }
    expect = [
        "include/moe/model/m.h:2:", "model -> infer",
        "include/moe/infer/i.h:2:", "public header -> internal",
        "src/model/m.cpp:1:", "model -> kernels internals",
        "src/cli/c.cpp:1:", "cli -> train internals",
        "src/train/t.h:2:", "names no file",
        "src/text/tok.cpp:1:", "text -> model is not an allowed arrow",
        "moe_text links moe_model: text -> model",
    ]
    with tempfile.TemporaryDirectory() as root:
        for rel, body in files.items():
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as fh:
                fh.write(body)
        errors = check_includes(root) + check_cmake(root)
    text = "\n".join(errors)
    missing = [e for e in expect if e not in text]
    allowed_ok = [e for e in errors if e.startswith(("src/cli/c.cpp:2:", "src/cli/c.cpp:3:", "src/train/t.h:1:",
                                                     "src/kernels/k.h:", "src/model/m.cpp:2:"))]
    ok = len(errors) == 7 and not missing and not allowed_ok
    print(text)
    print(f"self-test: {'ok' if ok else 'FAILED'} ({len(errors)} violations found, 7 expected"
          + (f"; not found: {missing}" if missing else "") + (f"; wrongly reported: {allowed_ok}" if allowed_ok else "")
          + ")")
    return 0 if ok else 1


def main(argv):
    if len(argv) > 1 and argv[1] == "--self-test":
        return self_test()
    root = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    root = os.path.abspath(root)
    errors = check_includes(root) + check_cmake(root)
    for e in errors:
        print(e)
    if errors:
        print(f"check_layers: {len(errors)} include(s) or link(s) against the layer arrows")
        return 1
    print("check_layers: every include and layer link follows the arrows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
