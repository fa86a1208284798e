#!/usr/bin/env bash
# The figures of the CPU matrix-units work (docs/PERFORMANCE.md), in one run on a quiet machine:
#   1. bf16 MoE forward: the engine's bf16-packed path beside its f32 and PyTorch 2.x's bf16 forms
#   2. the weight-format GEMMs, decode to prefill rows (f32, bf16, bf16-packed, int8, int4, w8a8)
#   3. bf16 compute in training: one layer's forward and forward+backward beside f32 and beside
#      PyTorch 2.x's autocast forward+backward of the block (bench/torch_bf16_train_block.py)
#   4. the training step of the default model, f32 and --bf16, beside PyTorch 2.x (eager, autocast)
#   5. prefill and decode of an int8 checkpoint: fp32 activations against w8a8, and bf16 weights
# Usage: bench/matrix_units.sh TORCH_PYTHON [MOE_BINARY] [MODEL_DIR INT8_MODEL_DIR]
#   TORCH_PYTHON: a PyTorch 2.x interpreter (../shared/peers/torch2.sh prints one)
#   MODEL_DIR / INT8_MODEL_DIR: a checkpoint and its `moe quantize --bits 8` copy (step 5; skipped
#   without them), e.g.
#     build/moe init --out /tmp/mx --arch mixtral --layers 4 --hidden 1024 --heads 16 --kv-heads 4 \
#         --experts 8 --top-k 2 --expert-width 2816 --vocab 32000 --seed 1
#     build/moe quantize --model /tmp/mx --out /tmp/mx-q8 --bits 8
set -euo pipefail
PY=${1:?usage: bench/matrix_units.sh TORCH_PYTHON [MOE_BINARY] [MODEL_DIR INT8_MODEL_DIR]}
MOE=${2:-build/moe}
MODEL=${3:-}
Q8=${4:-}
cd "$(dirname "$0")/.."
echo "== CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "== flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(amx|avx512_bf16|avx512_vnni|avx512_fp16|avx_vnni)' | tr '\n' ' ')"
echo "== $("$MOE" --version 2>/dev/null | head -1), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

echo "== 1. bf16 forward against PyTorch"
python3 bench/compare_bf16_torch.py --moe "$MOE" --torch-python "$PY" --rounds 3 --markdown

echo "== 2. weight-format GEMMs"
"$MOE" bench quant --m 1,16,256 --iters 20 --threads 2

echo "== 3. bf16 compute in training (one layer), and PyTorch's autocast training of the block"
"$PY" bench/torch_bf16_train_block.py --shape mixtral-small --shape fine-grained --shape fine-grained-shared --threads 2
for shape in "--tokens 2048 --d-model 1024 --d-ff 3584 --experts 8 --top-k 2" \
             "--tokens 2048 --d-model 1024 --d-ff 512 --experts 64 --top-k 8" \
             "--tokens 2048 --d-model 1024 --d-ff 512 --experts 64 --top-k 8 --shared-experts 1"; do
  # shellcheck disable=SC2086
  "$MOE" bench layer $shape --threads 2 --warmup 1 --iters 3 --weights bf16-compute --dense-reps 0 --json |
    python3 -c "import json,sys; j=json.load(sys.stdin); print('$shape', '| bf16 fwd', j['fwd_ms'], 'f+b', j['fwd_bwd_ms'], '| f32 fwd', j['f32_fwd_ms'], 'f+b', j['f32_fwd_bwd_ms'], '| speed-up fwd', j['bf16_vs_f32_fwd'], 'f+b', j['bf16_vs_f32_fwd_bwd'])"
done

echo "== 4. training step, f32 and bf16, against PyTorch"
python3 bench/compare_train_torch.py --moe "$MOE" --torch-python "$PY" --rounds 3 --markdown
python3 bench/compare_train_torch.py --moe "$MOE" --torch-python "$PY" --rounds 3 --markdown --bf16

if [[ -n "$MODEL" && -n "$Q8" ]]; then
  echo "== 5. prefill (512 tokens) and decode of an int8 checkpoint"
  for run in "$MODEL --bf16" "$Q8 --expert-format auto" "$Q8 --expert-format w8a8"; do
    # shellcheck disable=SC2086
    "$MOE" bench generate --model $run --concurrency 1 --prompt-tokens 512 --new-tokens 16 --threads 2 --json |
      python3 -c "import json,sys; j=json.load(sys.stdin); r=j['levels'][0]; print('$run |', j.get('expert_store', 'experts in the model'), '| prefill', r['prefill_tokens_per_s'], 'tok/s, decode', r['decode_tokens_per_s'], 'tok/s')"
  done
fi
