#!/usr/bin/env bash
# Expert offloading from the command line: `moe generate` gives the same tokens with every expert
# resident and with a quarter of them (LRU without prefetch, O_DIRECT reads) and reports the store's
# counters; `moe bench offload` runs its configurations side by side, checks their outputs agree and
# writes its plot and trace; `moe predictor` fits the expert predictor that prefetch then finds in
# the model directory (same tokens); bad flags exit 2 with one error line.
#
#   offload_test.sh MOE_BINARY TOKENIZER_JSON
set -uo pipefail
moe="$1"
tokenizer="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "offload_test: $*" >&2; exit 1; }

"$moe" init --arch mixtral --layers 3 --hidden 32 --heads 4 --kv-heads 2 --experts 8 --top-k 2 --expert-width 48 \
  --vocab 1024 --context 128 --out "$tmp/m" >"$tmp/out" 2>&1 || fail "init failed: $(cat "$tmp/out")"
cp "$tokenizer" "$tmp/m/tokenizer.json"
printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 1 20) >"$tmp/text.txt"

gen=(generate --model "$tmp/m" --prompt "The quick brown fox" --max-tokens 12 --temperature 0 --json --threads 1)
"$moe" "${gen[@]}" >"$tmp/full.json" 2>"$tmp/err" || fail "generate failed: $(cat "$tmp/err")"
"$moe" "${gen[@]}" --resident-experts 6 --cache-policy lru --no-prefetch --expert-io direct >"$tmp/off.json" \
  2>"$tmp/err" || fail "generate with offloading failed: $(cat "$tmp/err")"
"$moe" "${gen[@]}" --resident-experts 6 --cache-policy activation --expert-io mmap --expert-miss auto \
  >"$tmp/act.json" 2>"$tmp/err" || fail "generate with the activation policy failed: $(cat "$tmp/err")"
python3 - "$tmp" <<'PY' || fail "outputs differ or counters are missing"
import json, sys
d = sys.argv[1]
full, off, act = (json.load(open(f"{d}/{n}.json")) for n in ("full", "off", "act"))
assert full["tokens"] == off["tokens"] == act["tokens"], (full["tokens"], off["tokens"], act["tokens"])
assert "experts" not in full
for r in (off, act):
    e = r["experts"]
    assert e["capacity"] == 6 and e["hits"] + e["misses"] > 0 and e["bytes_moved"] > 0, e
    assert 0 <= e["hit_rate"] <= 1
assert off["experts"]["prefetch_issued"] == 0
PY

"$moe" bench offload --model "$tmp/m" --prompts "$tmp/text.txt" --num-prompts 2 --prompt-tokens 8 --new-tokens 4 \
  --resident-fraction 0.25,0.5 --configs lru,activation+prefetch,resident,optimal --threads 1 --plot "$tmp/p.svg" --json \
  >"$tmp/bench.json" 2>"$tmp/err" || fail "bench offload failed: $(cat "$tmp/err")"
python3 - "$tmp/bench.json" <<'PY' || fail "bench offload JSON: $(cat "$tmp/bench.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["outputs_identical"] is True
assert len(j["runs"]) == 8, len(j["runs"])
for r in j["runs"]:
    assert 0 <= r["experts"]["hit_rate"] <= 1, r
    if r["config"] == "optimal":  # a replayed bound: no speed, at least LRU's hits at the same budget
        assert r["replayed_bound"] is True and r["decode_tokens_per_s"] is None, r
        lru = [x for x in j["runs"] if x["config"] == "lru" and x["resident_fraction"] == r["resident_fraction"]][0]
        assert r["resident_experts"] == lru["resident_experts"], (r, lru)
        assert r["experts"]["hit_rate"] >= lru["experts"]["hit_rate"], (r, lru)
        assert r["experts"]["hits"] + r["experts"]["misses"] == lru["experts"]["hits"] + lru["experts"]["misses"]
    else:
        assert r["decode_tokens_per_s"] > 0 and r["replayed_bound"] is False, r
PY
grep -q "<svg" "$tmp/p.svg" || fail "no plot written"

# the learned expert predictor: fitted on the text, found in the model directory, same tokens
"$moe" predictor --model "$tmp/m" --calibration "$tmp/text.txt" --depth 2 --holdout 0.25 --seq-len 32 --threads 1 \
  --json >"$tmp/pred.json" 2>"$tmp/err" || fail "predictor failed: $(cat "$tmp/err")"
[[ -f "$tmp/m/expert_predictor.safetensors" ]] || fail "predictor wrote no file"
python3 - "$tmp/pred.json" <<'PY' || fail "predictor JSON: $(cat "$tmp/pred.json")"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["depth"] == 2 and j["k"] == 2 and j["fit_tokens"] > j["fit_text_tokens"] > 0, j
assert j["heldout_tokens"] > j["heldout_text_tokens"] > 0, j
# 3 MoE layers at depth 2: 0->1, 0->2, 1->2 within a token; 1->0, 2->0, 2->1 into the next token
pairs = sorted((p["from_layer"], p["to_layer"], p["next_token"]) for p in j["pairs"])
assert pairs == [(0, 1, False), (0, 2, False), (1, 0, True), (1, 2, False), (2, 0, True), (2, 1, True)], pairs
for p in j["pairs"]:
    assert 0 <= p["learned_recall_at_k"] <= 1, p
    if p["next_token"]:  # pre-gating predicts nothing there
        assert p["pregate_recall_at_k"] is None and p["uses"] == "learned", p
    else:
        assert 0 <= p["pregate_recall_at_k"] <= 1, p
        assert p["uses"] == ("learned" if p["learned_recall_at_k"] >= p["pregate_recall_at_k"] else "pregate"), p
assert j["mean_recall_at_k"] >= j["mean_pregate_recall_at_k"] - 1e-12, j
assert 0 <= j["mean_next_token_recall_at_k"] <= 1, j
PY
"$moe" predictor --model "$tmp/m" --calibration "$tmp/text.txt" --depth 2 --seq-len 32 --threads 1 --no-next-token \
  --out "$tmp/within.safetensors" --json >"$tmp/within.json" 2>"$tmp/err" || fail "predictor --no-next-token: $(cat "$tmp/err")"
python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['pairs']; assert len(p)==3 and not any(x['next_token'] for x in p), p" \
  "$tmp/within.json" || fail "--no-next-token kept pairs into the next token: $(cat "$tmp/within.json")"
"$moe" "${gen[@]}" --resident-experts 6 --cache-policy lru --prefetch-depth 2 >"$tmp/pred_gen.json" \
  2>"$tmp/err" || fail "generate with the learned predictor failed: $(cat "$tmp/err")"
python3 -c "import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); assert a['tokens']==b['tokens']" \
  "$tmp/full.json" "$tmp/pred_gen.json" || fail "the learned predictor changed the tokens"
"$moe" bench offload --model "$tmp/m" --prompts "$tmp/text.txt" --num-prompts 2 --prompt-tokens 8 --new-tokens 4 \
  --configs lru+prefetch,lru+pregate,optimal --threads 1 --trace "$tmp/trace.jsonl" >"$tmp/out" 2>"$tmp/err" ||
  fail "bench offload with the predictor failed: $(cat "$tmp/err")"
python3 - "$tmp/trace.jsonl" <<'PY' || fail "trace: $(cat "$tmp/trace.jsonl")"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, len(lines)
t = json.loads(lines[0])
assert t["layers"] == 3 and t["experts_per_layer"] == 8 and len(t["uses"]) == len(t["decode"]) > 0, t
assert all(0 <= u < 24 for u in t["uses"]) and set(t["decode"]) == {0, 1}
PY
"$moe" "${gen[@]}" --resident-experts 6 --expert-predictor "$tmp/none.safetensors" >/dev/null 2>"$tmp/err"
rc=$?
[[ $rc == 2 ]] && grep -q "predictor file .*none.safetensors' does not exist" "$tmp/err" ||
  fail "--expert-predictor missing file: exit $rc, $(cat "$tmp/err")"

"$moe" "${gen[@]}" --cache-policy fifo --resident-experts 6 >/dev/null 2>"$tmp/err"
rc=$?
[[ $rc == 2 && "$(wc -l <"$tmp/err")" == 1 ]] && grep -q "^moe: error: unknown cache policy 'fifo'" "$tmp/err" ||
  fail "--cache-policy fifo: exit $rc, stderr: $(cat "$tmp/err")"
"$moe" "${gen[@]}" --resident-experts 1 >/dev/null 2>"$tmp/err"
rc=$?
[[ $rc == 2 ]] && grep -q "at least 3 are needed" "$tmp/err" || fail "--resident-experts 1: exit $rc, $(cat "$tmp/err")"
echo "offload_test: ok"
