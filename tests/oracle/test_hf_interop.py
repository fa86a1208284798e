#!/usr/bin/python3
"""Optional check that checkpoints move between the engine and Hugging Face transformers unchanged.

    MOE_HF_PYTHON=/path/to/python-with-transformers \\
        /usr/bin/python3 test_hf_interop.py --tool build/tests/oracle/model_oracle_run [-v]

Skipped (exit code 77) when transformers cannot be imported. MOE_HF_PYTHON names the interpreter that has
it (default: the one running this script); the script re-runs itself with it. For every architecture the
installed transformers knows (mixtral, qwen2_moe, olmoe; qwen3_moe from transformers 4.51):

  (b) transformers -> engine: a transformers model of a tiny config, its weights set to a well-posed draw
      (test_model_oracle.py), written with save_pretrained(safe_serialization=True), is loaded by
      model_oracle_run; its f64 logits must equal the float64 oracle (torch_model.py) within 1e-10 (the
      file holds f32 values, read exactly), and its f32 logits must match transformers' f32 logits;
  (a) engine -> transformers: the engine writes the loaded model back (save_pretrained of the engine,
      model_oracle_run --save); transformers loads that directory (no missing or unexpected tensor) and its
      f32 logits must match the oracle, and the engine's f32 logits.

Tolerance for f32 logits against the oracle: the f32 tolerance of test_model_oracle.py
(8 (L + 1) sqrt(K) 2^-24); between two f32 implementations, twice that (each is within it of the oracle).
"""
import json
import os
import subprocess
import sys
import tempfile

SKIP = 77


def reexec_with_hf_python():
    py = os.environ.get("MOE_HF_PYTHON")
    other = py and os.path.abspath(py) != os.path.abspath(sys.executable)
    if other and os.environ.get("MOE_HF_INTEROP_CHILD") != "1":
        os.environ["MOE_HF_INTEROP_CHILD"] = "1"
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


reexec_with_hf_python()

try:
    import numpy as np
    import torch
except ImportError as exc:
    sys.exit(f"test_hf_interop.py: FAILED: cannot import {exc.name} with {sys.executable}")
try:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
except Exception as exc:  # transformers is optional: skip, saying why
    print(f"test_hf_interop.py: SKIP: cannot import transformers with {sys.executable} ({exc}); "
          "set MOE_HF_PYTHON to an interpreter that has it")
    sys.exit(SKIP)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_model_oracle as tmo  # noqa: E402
from test_oracle import read_safetensors, write_safetensors  # noqa: E402

F64_TOL = 1e-10
# transformers' config defaults carry the token ids of the real vocabularies (OlmoeConfig: eos 50279), which
# the engine rejects as outside a tiny vocabulary: give ids inside it.
IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

CASES = [
    tmo.case("hf.mixtral", tmo.hf_config("mixtral")),
    tmo.case("hf.mixtral_tied_mha", tmo.hf_config("mixtral", tie_word_embeddings=True, num_key_value_heads=4,
                                                  num_hidden_layers=3), B=1, S=9),
    tmo.case("hf.qwen2_moe", tmo.hf_config("qwen2_moe", num_hidden_layers=3, mlp_only_layers=[1])),
    tmo.case("hf.qwen2_moe_sparse_step_tied", tmo.hf_config("qwen2_moe", decoder_sparse_step=2,
                                                            norm_topk_prob=True, tie_word_embeddings=True),
             B=3, S=5),
    tmo.case("hf.olmoe", tmo.hf_config("olmoe")),
    tmo.case("hf.olmoe_mha_k3", tmo.hf_config("olmoe", num_key_value_heads=4, num_experts_per_tok=3,
                                              norm_topk_prob=True)),
    tmo.case("hf.qwen3_moe", tmo.hf_config("qwen3_moe", num_hidden_layers=3, mlp_only_layers=[0], head_dim=8,
                                           norm_topk_prob=True)),
]


def supported(arch):
    try:
        AutoConfig.for_model(arch)
        return True
    except (ValueError, KeyError):
        return False


def hf_logits(model_dir, tokens):
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                       output_loading_info=True)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=tokens.long()).logits  # (B, S, V)
    return logits.reshape(-1, logits.shape[-1]).double().numpy(), info


def transformers_model(cfg, weights):
    """A transformers model of config `cfg` (config.json keys) holding `weights` (f32 values)."""
    keys = dict({k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}, **IDS)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg["model_type"], **keys),
                                             torch_dtype=torch.float32)
    sd = {n: w.to(torch.float32) for n, w in weights.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if cfg.get("tie_word_embeddings"):
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"transformers model: missing {missing}, unexpected {unexpected}")
    return model.eval()


def engine(tool, model_dir, tokens, targets, workdir, tag, dtype, save=None):
    batch = os.path.join(workdir, tag + ".batch.safetensors")
    out = os.path.join(workdir, tag + ".out.safetensors")
    write_safetensors(batch, {"tokens": tokens.numpy(), "targets": targets.numpy()})
    cmd = [tool, "--model", model_dir, "--inputs", batch, "--out", out, "--dtype", dtype, "--logits"]
    if save:
        cmd += ["--save", save]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"tool exited {proc.returncode}: {proc.stderr.strip()}\n"
                           f"      command: {' '.join(cmd)}")
    return read_safetensors(out)[0]["logits"].astype(np.float64)


def run_case(c, tool, workdir, verbose):
    w, tokens, targets, ref, attempt = tmo.well_posed(c, "f32")
    want = ref["logits"].numpy()
    tol32 = tmo.tolerance(c, "f32")
    checks = []  # (what, relative error, tolerance)

    # (b) transformers -> engine
    hf_dir = os.path.join(workdir, c["name"] + ".transformers")
    model = transformers_model(c["cfg"], w)
    model.save_pretrained(hf_dir, safe_serialization=True)
    with torch.no_grad():
        hf = model(input_ids=tokens.long()).logits.reshape(-1, want.shape[1]).double().numpy()
    checks.append(("transformers f32 vs oracle", tmo.rel_error(hf, want), tol32))
    eng_dir = os.path.join(workdir, c["name"] + ".engine")
    e64 = engine(tool, hf_dir, tokens, targets, workdir, c["name"] + ".f64", "f64", save=eng_dir)
    e32 = engine(tool, hf_dir, tokens, targets, workdir, c["name"] + ".f32", "f32")
    checks.append(("engine f64 (transformers' file) vs oracle", tmo.rel_error(e64, want), F64_TOL))
    checks.append(("engine f32 (transformers' file) vs transformers f32", tmo.rel_error(e32, hf), 2 * tol32))

    # (a) engine -> transformers
    with open(os.path.join(eng_dir, "config.json")) as f:
        written = json.load(f)
    hf2, info = hf_logits(eng_dir, tokens)
    bad_keys = {k: v for k, v in info.items()
                if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    checks.append(("transformers f32 (engine's file) vs oracle", tmo.rel_error(hf2, want), tol32))
    checks.append(("transformers f32 (engine's file) vs engine f32", tmo.rel_error(hf2, e32), 2 * tol32))

    fails = [f"{what}: relative error {err:.3e} > tol {tol:.3e}" for what, err, tol in checks
             if not (err <= tol)]
    if bad_keys:
        fails.append(f"transformers loading the engine's checkpoint: {bad_keys}")
    if written.get("model_type") != c["cfg"]["model_type"]:
        fails.append(f"engine wrote model_type {written.get('model_type')!r}")
    for what, err, tol in checks:
        if verbose:
            print(f"      {what}: relative error {err:.2e} (tol {tol:.2e})")
    return fails


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", required=True, help="path of the model_oracle_run executable")
    ap.add_argument("--keep", help="keep the model directories in this folder")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if not os.access(args.tool, os.X_OK):
        sys.exit(f"test_hf_interop.py: FAILED: --tool {args.tool!r} is not an executable")
    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, python {sys.executable}")
    cases = [c for c in CASES if supported(c["cfg"]["model_type"])]
    for c in CASES:
        if c not in cases:
            print(f"{c['name']}: skipped, transformers {transformers.__version__} has no "
                  f"{c['cfg']['model_type']}")
    n_fail = 0
    with tempfile.TemporaryDirectory(prefix="moe_hf_interop_") as tmp:
        workdir = args.keep or tmp
        os.makedirs(workdir, exist_ok=True)
        for c in cases:
            print(c["name"], flush=True)
            try:
                fails = run_case(c, args.tool, workdir, args.verbose)
            except Exception as exc:
                fails = [f"{type(exc).__name__}: {exc}"]
            for line in fails:
                print(f"  FAIL {line}")
            n_fail += bool(fails)
    print(f"{len(cases) - n_fail}/{len(cases)} interop checks passed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
