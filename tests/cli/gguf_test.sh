#!/usr/bin/env bash
# GGUF from the command line: `moe export --gguf` writes a model with its tokenizer, and
# `moe generate` / `eval` / `bench generate` run the .gguf file (tokenizer from its metadata) with
# the same tokens and loss as the model directory; q8_0 export runs too; bad files and types exit 2
# with one error line.
#
#   gguf_test.sh MOE_BINARY TOKENIZER_JSON GGUF_FIXTURE_DIR
set -uo pipefail
moe="$1"
tokenizer="$2"
fixtures="$3"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "gguf_test: $*" >&2; exit 1; }

"$moe" init --arch mixtral --layers 2 --hidden 32 --heads 4 --kv-heads 2 --experts 4 --top-k 2 --expert-width 64 \
  --vocab 1024 --context 128 --out "$tmp/m" >"$tmp/out" 2>&1 || fail "init failed: $(cat "$tmp/out")"
cp "$tokenizer" "$tmp/m/tokenizer.json"

"$moe" export --model "$tmp/m" --gguf "$tmp/m.gguf" --json >"$tmp/export.json" 2>"$tmp/err" ||
  fail "export failed: $(cat "$tmp/err")"
"$moe" export --model "$tmp/m" --gguf "$tmp/m.q8_0.gguf" --type q8_0 >"$tmp/out" 2>"$tmp/err" ||
  fail "export q8_0 failed: $(cat "$tmp/err")"
grep -q "wrote $tmp/m.q8_0.gguf (mixtral, q8_0" "$tmp/out" || fail "export q8_0 said: $(cat "$tmp/out")"

gen=(generate --prompt "The quick brown fox" --max-tokens 8 --temperature 0 --json --threads 1)
"$moe" "${gen[@]}" --model "$tmp/m" >"$tmp/dir.json" 2>"$tmp/err" || fail "generate (dir) failed: $(cat "$tmp/err")"
"$moe" "${gen[@]}" --model "$tmp/m.gguf" >"$tmp/gguf.json" 2>"$tmp/err" || fail "generate (gguf) failed: $(cat "$tmp/err")"
grep -q "^gguf: $tmp/m.gguf: .*f32 tensors dequantized to f32" "$tmp/err" || fail "no conversion line: $(cat "$tmp/err")"
"$moe" "${gen[@]}" --model "$tmp/m.q8_0.gguf" >"$tmp/q8.json" 2>"$tmp/err" || fail "generate (q8_0) failed: $(cat "$tmp/err")"
grep -q "q8_0" "$tmp/err" || fail "the conversion line does not name q8_0: $(cat "$tmp/err")"
ev=(eval --tokens 5,9,300,17,2,44,81,7 --json --threads 1)
"$moe" "${ev[@]}" --model "$tmp/m" >"$tmp/ev_dir.json" 2>"$tmp/err" || fail "eval (dir) failed: $(cat "$tmp/err")"
"$moe" "${ev[@]}" --model "$tmp/m.gguf" >"$tmp/ev_gguf.json" 2>"$tmp/err" || fail "eval (gguf) failed: $(cat "$tmp/err")"
python3 - "$tmp" <<'PY' || fail "outputs differ"
import json, sys
d = sys.argv[1]
e = json.load(open(f"{d}/export.json"))
assert e["tokenizer"] is True and e["architecture"] == "mixtral" and e["file_bytes"] > 0, e
a, b, q = (json.load(open(f"{d}/{n}.json")) for n in ("dir", "gguf", "q8"))
assert a["tokens"] == b["tokens"] and a["text"] == b["text"] and a["prompt_tokens"] == b["prompt_tokens"], (a, b)
assert len(q["tokens"]) > 0
x, y = (json.load(open(f"{d}/{n}.json")) for n in ("ev_dir", "ev_gguf"))
assert x["loss"] == y["loss"], (x, y)
PY

"$moe" bench generate --model "$fixtures/mixtral.q4_0.gguf" --concurrency 1 --prompt-tokens 4 --new-tokens 3 \
  --threads 1 >"$tmp/out" 2>&1 || fail "bench generate (gguf) failed: $(cat "$tmp/out")"

# Errors: one line, exit 2.
printf 'GGUX0000000000000000000000' >"$tmp/bad.gguf"
"$moe" generate --model "$tmp/bad.gguf" --prompt x >"$tmp/out" 2>"$tmp/err"
[[ $? == 2 && "$(wc -l <"$tmp/err")" == 1 ]] && grep -q "^moe: error: .*bad.gguf.*bad magic" "$tmp/err" ||
  fail "bad magic: $(cat "$tmp/err")"
"$moe" export --model "$tmp/m" --gguf "$tmp/x.gguf" --type q4_K >"$tmp/out" 2>"$tmp/err"
[[ $? == 2 ]] && grep -q "^moe: error: export: --type q4_K is read but not written" "$tmp/err" ||
  fail "q4_K export: $(cat "$tmp/err")"
"$moe" export --model "$tmp/m" --gguf "$tmp/x.gguf" --type q5_1 >"$tmp/out" 2>"$tmp/err"
[[ $? == 2 ]] && grep -q "unknown ggml type 'q5_1'" "$tmp/err" || fail "q5_1 export: $(cat "$tmp/err")"
"$moe" generate --model "$fixtures/mixtral.f32.gguf" --prompt x >"$tmp/out" 2>"$tmp/err"
[[ $? == 2 ]] && grep -q "no tokenizer" "$tmp/err" || fail "gguf without tokenizer: $(cat "$tmp/err")"
"$moe" generate --model "$tmp/m.gguf" --prompt x --resident-experts 2 >"$tmp/out" 2>"$tmp/err"
[[ $? == 2 ]] && grep -q "offloading reads safetensors checkpoints only" "$tmp/err" || fail "offload: $(cat "$tmp/err")"
echo "gguf_test: ok"
