#!/usr/bin/env bash
# pip install . into a fresh virtual environment (with the system's site packages: Debian's torch,
# setuptools, wheel, pybind11), reusing the extension of the build folder given as $1, then imports
# moe_cpp from outside the source tree and runs one forward and backward of its MoE module.
set -euo pipefail
build_dir="$(cd "$1" && pwd)"
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m venv --system-site-packages "$tmp/venv"
MOE_PY_BUILD_DIR="$build_dir" "$tmp/venv/bin/pip" install --quiet --no-build-isolation --no-deps \
  --disable-pip-version-check "$root"
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import os
import moe_cpp
import moe_cpp.torch
import torch

assert "site-packages" in moe_cpp.__file__, moe_cpp.__file__
m = moe_cpp.torch.MoE(d_model=16, d_ff=32, n_experts=4, top_k=2, aux_coef=0.01)
x = torch.randn(10, 16, requires_grad=True)
out = m(x)
(out.y.sum() + out.aux_loss).backward()
assert x.grad.shape == x.shape and m.w_gate.grad is not None
print(f"install: moe_cpp {moe_cpp.__version__} from {os.path.dirname(moe_cpp.__file__)} runs")
PY
