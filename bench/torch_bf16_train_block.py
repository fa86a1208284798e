#!/usr/bin/env python3
"""bf16 training of the MoE block as a PyTorch 2.x user runs it: forward + backward under autocast.

The baseline of `moe bench layer --weights bf16-compute` (its fwd+bwd). The Hugging Face sparse MoE
block of torch_moe_block.py with fp32 master weights, run under torch.autocast("cpu",
dtype=torch.bfloat16) (every nn.Linear in bf16, oneDNN: AMX tiles where the CPU has them), loss
<y, dy> with a fixed random dy, backward to every parameter and the input. Prints one JSON object
per shape: the median fwd+bwd time of --iters after --warmup, and GFLOP/s on the engine's count
(3x the forward's 2 * d * d_ff * 3 per routed assignment and per token per shared expert).

    PY=$(../shared/peers/torch2.sh); $PY bench/torch_bf16_train_block.py --shape mixtral-small --threads 2
"""
import argparse
import json

from torch_bf16_forward import median_ms  # the timing of the bf16 forward baseline (this folder)
from torch_moe_block import SHAPES, build_block  # the same shapes and HF block (this folder)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", choices=sorted(SHAPES), required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    for name in a.shape:
        T, d, F, E, k, S = SHAPES[name]
        torch.manual_seed(a.seed)
        block = build_block(torch, d, F, E, k, S, False).train()
        x = torch.randn(T, d, requires_grad=True)
        dy = torch.randn(T, d)

        def step():
            block.zero_grad(set_to_none=True)
            x.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = block(x)
            y = y[0] if isinstance(y, tuple) else y
            y.float().backward(dy)

        ms = median_ms(step, a.warmup, a.iters)
        flops = 3 * 2.0 * d * F * 3 * (T * k + T * S)
        print(json.dumps({"command": "torch_bf16_train_block", "torch": torch.__version__, "shape": name,
                          "threads": torch.get_num_threads(), "fwd_bwd_ms": round(ms, 3),
                          "gflops": round(flops / ms / 1e6, 1), "iters": a.iters}))


if __name__ == "__main__":
    main()
