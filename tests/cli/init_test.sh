#!/usr/bin/env bash
# `moe init`: writes a checkpoint that loads (bench generate runs on it), refuses to overwrite one
# without --overwrite (exit 2, one error line), and replaces it with --overwrite.
#
#   init_test.sh MOE_BINARY
set -uo pipefail
moe="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "init_test: $*" >&2; exit 1; }
shape=(--arch mixtral --layers 1 --hidden 32 --heads 4 --kv-heads 2 --experts 4 --top-k 2 --expert-width 48
       --vocab 64 --context 64)

"$moe" init "${shape[@]}" --out "$tmp/m" >"$tmp/out" 2>&1 || fail "init failed: $(cat "$tmp/out")"
grep -q "init: wrote" "$tmp/out" || fail "no summary line: $(cat "$tmp/out")"
[[ -s "$tmp/m/config.json" && -s "$tmp/m/model.safetensors" ]] || fail "checkpoint files missing"
grep -q '"model_type": *"mixtral"' "$tmp/m/config.json" || fail "config.json is not a mixtral config"
"$moe" bench generate --model "$tmp/m" --concurrency 1 --prompt-tokens 4 --new-tokens 2 --threads 1 \
  >"$tmp/out" 2>&1 || fail "the written checkpoint does not load: $(cat "$tmp/out")"

"$moe" init "${shape[@]}" --out "$tmp/m" >"$tmp/out" 2>"$tmp/err"
rc=$?
[[ $rc == 2 ]] || fail "init over a checkpoint: exit $rc, expected 2"
[[ "$(wc -l <"$tmp/err")" == 1 ]] && grep -q "^moe: error: .*already holds a checkpoint" "$tmp/err" ||
  fail "init over a checkpoint: unexpected stderr: $(cat "$tmp/err")"

"$moe" init "${shape[@]}" --seed 3 --overwrite --out "$tmp/m" >"$tmp/out" 2>&1 || fail "--overwrite failed"
echo "init_test: ok"
