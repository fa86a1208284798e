#!/usr/bin/env bash
# Times two moe binaries alternately on the same work, for "no regression" checks:
#   bench/before_after.sh OLD_MOE NEW_MOE [MODEL_DIR] [ROUNDS]
# The layer shapes of docs/PERFORMANCE.md (mixtral-small, fine-grained, fine-grained + 1 shared),
# `moe bench train`, and `moe bench generate` on MODEL_DIR when given (e.g. one made with
# `moe init --arch mixtral --hidden 512 --expert-width 1024 --out DIR`). Prints one line per run.
set -euo pipefail
old="$1" new="$2" model="${3:-}" rounds="${4:-2}"
MIX="--tokens 2048 --d-model 1024 --d-ff 3584 --experts 8 --top-k 2"
FG="--tokens 2048 --d-model 1024 --d-ff 512 --experts 64 --top-k 8"
COMMON="--threads 2 --warmup 1 --iters 5 --dense-reps 0 --json"
field() { python3 -c "import json,sys; j=json.load(sys.stdin); print(' '.join(f'{k}={j[k]}' for k in sys.argv[1:]))" "$@"; }
for round in $(seq "$rounds"); do
  for bin in "$old" "$new"; do
    for shape in "mixtral-small:$MIX" "fine-grained:$FG" "fine-grained+shared:$FG --shared-experts 1"; do
      # shellcheck disable=SC2086
      echo "round $round $bin layer ${shape%%:*}: $("$bin" bench layer ${shape#*:} $COMMON | field fwd_ms fwd_bwd_ms)"
    done
    echo "round $round $bin train: $("$bin" bench train --iters 5 --threads 2 --json | field step_ms tokens_per_s)"
    if [[ -n "$model" ]]; then
      out=$("$bin" bench generate --model "$model" --concurrency 1 --prompt-tokens 64 --new-tokens 32 --threads 2 --json)
      echo "round $round $bin generate: $(echo "$out" | python3 -c 'import json,sys; l=json.load(sys.stdin)["levels"][0]; print("decode_tokens_per_s", l["decode_tokens_per_s"], "prefill_tokens_per_s", l["prefill_tokens_per_s"])')"
    fi
  done
done
