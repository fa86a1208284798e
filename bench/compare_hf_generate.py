#!/usr/bin/env python3
"""Greedy decoding speed of a checkpoint in Hugging Face transformers (PyTorch eager, CPU), for a
side-by-side comparison with `moe bench generate` on the same model directory and thread count.

    python bench/compare_hf_generate.py --model DIR --threads 2 --prompt-tokens 128 --new-tokens 32 \
        [--batch 1] [--dtype float32|bfloat16]

Needs torch and transformers (not Debian packages: a venv with `pip install torch transformers`);
it is a benchmark helper, never a dependency of the engine or its tests. Random prompt ids from a
seed, greedy, EOS ignored so every sequence makes exactly --new-tokens tokens. Prints prefill and
decode tokens/s as measured here: prefill = one forward pass over the prompts (time to first token),
decode = the remaining new tokens / the time they took.
"""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    model.eval()
    load_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.prompt_tokens), generator=g)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
        total_s = time.perf_counter() - t0
    assert out.shape[1] == a.prompt_tokens + a.new_tokens
    decode_s = max(total_s - first_s, 1e-9)
    r = {
        "transformers": transformers.__version__, "torch": torch.__version__, "threads": a.threads,
        "dtype": a.dtype, "batch": a.batch, "load_s": round(load_s, 2),
        "prefill_tokens_per_s": round(a.batch * a.prompt_tokens / first_s, 1),
        "decode_tokens_per_s": round(a.batch * (a.new_tokens - 1) / decode_s, 2),
    }
    print(json.dumps(r))


if __name__ == "__main__":
    main()
