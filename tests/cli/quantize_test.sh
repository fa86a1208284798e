#!/usr/bin/env bash
# `moe quantize`: quantizes a tiny model made by `moe init` (int4 experts; int8 experts and attention;
# mixed precision from a usage file), checks the files it writes and its summary, refuses an existing
# output directory without --overwrite, and rejects bad flags (exit 2, one error line).
#
#   quantize_test.sh MOE_BINARY
set -uo pipefail
moe="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "quantize_test: $*" >&2; exit 1; }
# exit code 2 and exactly one line "moe: error: ... PATTERN ..." on stderr
expect_error() {
  local pattern="$1"
  shift
  "$moe" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  [[ $rc == 2 ]] || fail "'$*': exit $rc, expected 2 (stderr: $(cat "$tmp/err"))"
  [[ "$(wc -l <"$tmp/err")" == 1 ]] && grep -q "^moe: error: .*$pattern" "$tmp/err" ||
    fail "'$*': expected one line matching '$pattern', got: $(cat "$tmp/err")"
}
has_key() { grep -q "$1" "$2" || fail "$2 lacks $1: $(cat "$2")"; }

"$moe" init --arch mixtral --layers 2 --hidden 64 --heads 4 --kv-heads 2 --experts 4 --top-k 2 --expert-width 64 \
  --vocab 64 --context 64 --out "$tmp/m" >/dev/null 2>&1 || fail "moe init failed"
echo '{"version": "1.0"}' >"$tmp/m/tokenizer.json"

# int4, group 32: files, quantization_config, summary with the bytes before and after.
"$moe" quantize --model "$tmp/m" --out "$tmp/q4" --bits 4 --group-size 32 >"$tmp/out" 2>&1 ||
  fail "quantize --bits 4 failed: $(cat "$tmp/out")"
[[ -s "$tmp/q4/model.safetensors" && -s "$tmp/q4/config.json" && -s "$tmp/q4/tokenizer.json" ]] || fail "q4 files missing"
grep -q '"quant_method": "moe_cpp"' "$tmp/q4/config.json" && grep -q '"bits": 4' "$tmp/q4/config.json" &&
  grep -q '"group_size": 32' "$tmp/q4/config.json" || fail "q4 quantization_config: $(cat "$tmp/q4/config.json")"
grep -q '"model_type": "mixtral"' "$tmp/q4/config.json" || fail "q4 config.json lost the model config"
# 2 layers x 4 experts x 3 linears of 64x64 in f32; int4: 2048 bytes of codes + 2 x 64 x 2 f16 each
grep -Eq "expert weights +24 tensors, 98304 parameters" "$tmp/out" || fail "no expert summary: $(cat "$tmp/out")"
grep -Eq "before +393216 bytes" "$tmp/out" || fail "no bytes before: $(cat "$tmp/out")"
grep -Eq "after +61440 bytes .*31\.2% of bf16" "$tmp/out" || fail "no bytes after: $(cat "$tmp/out")"
grep -q 'experts.0.w1.qweight' "$tmp/q4/model.safetensors" || fail "no qweight tensor in q4"
grep -q 'experts.0.w1.weight' "$tmp/q4/model.safetensors" && fail "q4 still holds a float expert weight"

# int8, group 64, attention too; --json.
"$moe" quantize --model "$tmp/m" --out "$tmp/q8" --bits 8 --group-size 64 --attention --json >"$tmp/out" 2>&1 ||
  fail "quantize --bits 8 --attention failed: $(cat "$tmp/out")"
for k in '"expert_bytes_before":393216' '"expert_bytes_after":' '"attention_tensors":8' '"ratio_to_bf16":'; do
  has_key "$k" "$tmp/out"
done
grep -q '"attention"' "$tmp/q8/config.json" || fail "q8 modules lack attention"
grep -q 'self_attn.q_proj.qweight' "$tmp/q8/model.safetensors" || fail "no quantized q_proj in q8"

# Mixed precision: int8 experts, the half with the lowest routing weight in int4.
cat >"$tmp/usage.json" <<'JSON'
{"tokens": 64, "layers": [{"layer": 0, "count": [10, 40, 30, 48], "weight": [5.0, 20.0, 15.0, 24.0]},
                          {"layer": 1, "count": [40, 10, 30, 48], "weight": [20.0, 5.0, 15.0, 1.0]}]}
JSON
"$moe" quantize --model "$tmp/m" --out "$tmp/mix" --bits 8 --group-size 32 --mixed-bits 4 --mixed-fraction 0.5 \
  --usage "$tmp/usage.json" >"$tmp/out" 2>&1 || fail "mixed quantize failed: $(cat "$tmp/out")"
grep -q "4 experts in int4" "$tmp/out" || fail "mixed summary: $(cat "$tmp/out")"
tr -d ' \n' <"$tmp/mix/config.json" | grep -q '"expert_bits":\[\[4,8,4,8\],\[8,4,8,4\]\]' ||
  fail "expert_bits: $(cat "$tmp/mix/config.json")"

# W8A8: the int8 checkpoint's experts on int8 dot products (bench generate runs prefill and decode);
# the int4 checkpoint has no w8a8 form.
"$moe" bench generate --model "$tmp/q8" --expert-format w8a8 --concurrency 1 --prompt-tokens 24 --new-tokens 4 \
  --threads 2 --json >"$tmp/out" 2>&1 || fail "bench generate --expert-format w8a8 failed: $(cat "$tmp/out")"
grep -q 'experts int8 w8a8' "$tmp/out" || fail "bench generate --expert-format w8a8: no 'int8 w8a8' store: $(cat "$tmp/out")"
expect_error "w8a8 needs int8 experts" bench generate --model "$tmp/q4" --expert-format w8a8 --concurrency 1 \
  --prompt-tokens 4 --new-tokens 1

# Existing output directory: refused, then replaced with --overwrite.
expect_error "not empty .*--overwrite" quantize --model "$tmp/m" --out "$tmp/q4" --bits 4 --group-size 32
"$moe" quantize --model "$tmp/m" --out "$tmp/q4" --bits 8 --group-size 32 --overwrite >/dev/null 2>&1 ||
  fail "--overwrite failed"
grep -q '"bits": 8' "$tmp/q4/config.json" || fail "--overwrite did not replace the checkpoint"

# Bad flags and inputs.
expect_error "--bits" quantize --model "$tmp/m" --out "$tmp/x1" --bits 3
expect_error "--bits" quantize --model "$tmp/m" --out "$tmp/x1"
expect_error "--group-size" quantize --model "$tmp/m" --out "$tmp/x1" --bits 4 --group-size 48
expect_error "model directory .*no_such_model.* does not exist" quantize --model "$tmp/no_such_model" --out "$tmp/x1" --bits 4
expect_error "K = 64 is not a multiple of the group size 128" quantize --model "$tmp/m" --out "$tmp/x1" --bits 4 --group-size 128
expect_error "usage file" quantize --model "$tmp/m" --out "$tmp/x1" --bits 8 --mixed-bits 4 --mixed-fraction 0.5
expect_error "--mixed-fraction" quantize --model "$tmp/m" --out "$tmp/x1" --bits 8 --mixed-bits 4 --mixed-fraction 2
expect_error "already quantized" quantize --model "$tmp/q8" --out "$tmp/x1" --bits 4
[[ -e "$tmp/x1" ]] && fail "a failed quantize left $tmp/x1 behind"
echo "quantize_test: ok"
