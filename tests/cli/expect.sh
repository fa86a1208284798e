#!/usr/bin/env bash
# Runs a command and checks its exit code and output.
#
#   expect.sh [--one-line] RC [REGEX ...] -- COMMAND [ARGS ...]
#
# RC: the exit code the command must return. Every REGEX (extended, case-sensitive) must match
# somewhere in stdout+stderr. When RC is not 0, stderr must start with "moe: error: "; with
# --one-line stderr must be exactly that one line.
set -uo pipefail

one_line=0
if [[ "${1:-}" == "--one-line" ]]; then
  one_line=1
  shift
fi
[[ $# -ge 2 ]] || { echo "usage: expect.sh [--one-line] RC [REGEX ...] -- COMMAND [ARGS ...]" >&2; exit 2; }
want_rc="$1"
shift
regexes=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  regexes+=("$1")
  shift
done
[[ "${1:-}" == "--" ]] || { echo "expect.sh: missing -- before the command" >&2; exit 2; }
shift

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$@" >"$tmp/out" 2>"$tmp/err"
rc=$?

echo "command: $*"
echo "exit code: $rc (expected $want_rc)"
echo "--- stdout"; cat "$tmp/out"
echo "--- stderr"; cat "$tmp/err"
echo "---"

fail=0
if [[ "$rc" != "$want_rc" ]]; then
  echo "FAIL: exit code $rc, expected $want_rc"
  fail=1
fi
for re in "${regexes[@]}"; do
  if ! cat "$tmp/out" "$tmp/err" | grep -Eq -- "$re"; then
    echo "FAIL: output does not match /$re/"
    fail=1
  fi
done
if [[ "$want_rc" != 0 ]]; then
  if ! head -n 1 "$tmp/err" | grep -q '^moe: error: '; then
    echo "FAIL: stderr does not start with 'moe: error: '"
    fail=1
  fi
  if [[ $one_line == 1 && "$(wc -l <"$tmp/err")" != 1 ]]; then
    echo "FAIL: stderr is not exactly one line"
    fail=1
  fi
fi
[[ $fail == 0 ]] && echo "PASS"
exit $fail
