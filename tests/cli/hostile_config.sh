#!/usr/bin/env bash
# Runs `moe eval` on a copy of a fixture checkpoint whose config.json has one key set to a hostile
# value, under a virtual-memory limit: the config must be refused with one clear line before
# anything is sized from it (an allocation beyond the limit would fail or crash instead).
#
#   hostile_config.sh MOE FIXTURE_DIR KEY VALUE LIMIT_MB
set -euo pipefail
moe="$1" fixture="$2" key="$3" value="$4" limit_mb="$5"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$fixture"/config.json "$fixture"/model.safetensors "$tmp"/
python3 - "$tmp/config.json" "$key" "$value" <<'PY'
import json, sys
path, key, value = sys.argv[1], sys.argv[2], sys.argv[3]
c = json.load(open(path))
c[key] = json.loads(value)
json.dump(c, open(path, "w"))
PY
ulimit -v $((limit_mb * 1024))
"$moe" eval --model "$tmp" --tokens 1,2,3,4
