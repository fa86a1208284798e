#!/usr/bin/env bash
# Fuzzes the parsers of hostile input with libFuzzer (fuzz/, docs/RELIABILITY.md).
#
#   scripts/fuzz.sh TARGET SECONDS   fuzz TARGET (a name of fuzz/CMakeLists.txt, or all) for SECONDS
#                                    each, starting from fuzz/corpus/TARGET; reports the executions
#   scripts/fuzz.sh --replay [TARGET]  run every seed of fuzz/corpus/ and every input of
#                                    fuzz/regressions/ once (all targets, or TARGET)
#   scripts/fuzz.sh --list           the target names
#
# Builds build-fuzz first when needed (clang, -DMOE_FUZZ=ON: the library with libFuzzer coverage,
# ASan and UBSan; CUDA and MPI off; only the libraries the targets link). The fuzzer works on a copy
# of the corpus in build-fuzz/corpus/TARGET (kept between runs; the repository's corpus is not
# touched); an input that crashes, hangs (-timeout=10 s), leaks, or passes -rss_limit_mb=2048 is
# written to build-fuzz/artifacts/TARGET/ and the script exits 1. Turn it into a regression input:
# copy it to fuzz/regressions/TARGET/ (and fix the library).
# Environment: MOE_FUZZ_BUILD_DIR (default build-fuzz), MOE_JOBS (build jobs, default nproc),
# MOE_SKIP_DEPS=1 (do not run scripts/install-deps.sh), MOE_FUZZ_ARGS (more libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir="${MOE_FUZZ_BUILD_DIR:-build-fuzz}"
jobs="${MOE_JOBS:-$(nproc)}"
all_targets=()
while read -r line; do all_targets+=("$line"); done < <(
  sed -n '/^set(MOE_FUZZ_TARGETS/,/^)/{/^set\|^)/d;s/^ *\([a-z_0-9]*\).*/\1/p}' fuzz/CMakeLists.txt)

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }
mode=run
case "${1:-}" in
  --list) printf '%s\n' "${all_targets[@]}"; exit 0 ;;
  --replay) mode=replay; target="${2:-all}" ;;
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
  *)
    target="$1"; seconds="${2:-}"
    [[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: SECONDS must be a positive integer (got '$seconds')" >&2; exit 2; }
    ;;
esac
if [[ "$target" == all ]]; then
  targets=("${all_targets[@]}")
else
  printf '%s\n' "${all_targets[@]}" | grep -qx -- "$target" ||
    { echo "fuzz: unknown target '$target'; targets: all ${all_targets[*]}" >&2; exit 2; }
  targets=("$target")
fi

if [[ "${MOE_SKIP_DEPS:-0}" != 1 ]]; then
  scripts/install-deps.sh
fi
command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (scripts/install-deps.sh installs clang)" >&2; exit 1; }

# ---- build ----
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake_args=(-DCMAKE_BUILD_TYPE=Fuzz "-DCMAKE_CXX_FLAGS_FUZZ=-O1 -g1"
              -DCMAKE_CXX_COMPILER=clang++ -DMOE_FUZZ=ON -DMOE_BUILD_TESTS=OFF -DMOE_WERROR=OFF)
  command -v ninja >/dev/null && cmake_args+=(-G Ninja)
  command -v ccache >/dev/null && cmake_args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  echo "fuzz: configuring $build_dir (clang, MOE_FUZZ=ON)"
  mkdir -p "$build_dir"
  cmake -S . -B "$build_dir" "${cmake_args[@]}" >"$build_dir/configure.log" 2>&1 ||
    { cat "$build_dir/configure.log" >&2; exit 1; }
fi
build_targets=()
for t in "${targets[@]}"; do build_targets+=("fuzz_$t"); done
echo "fuzz: building ${build_targets[*]} with $jobs jobs"
build_start=$SECONDS
cmake --build "$build_dir" -j "$jobs" --target "${build_targets[@]}"
echo "fuzz: build took $((SECONDS - build_start)) s"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# shellcheck disable=SC2206
common=(-rss_limit_mb=2048 -timeout=10 ${MOE_FUZZ_ARGS:-})

# ---- replay: each seed and regression input once ----
if [[ $mode == replay ]]; then
  failed=0
  for t in "${targets[@]}"; do
    inputs=()
    while IFS= read -r -d '' f; do inputs+=("$f"); done < <(
      find "fuzz/corpus/$t" "fuzz/regressions/$t" -type f -print0 2>/dev/null | sort -z)
    if ((${#inputs[@]} == 0)); then
      echo "fuzz: $t: no inputs to replay" >&2; failed=1; continue
    fi
    log="$build_dir/replay-$t.log"
    if "$build_dir/fuzz/fuzz_$t" "${common[@]}" "${inputs[@]}" >"$log" 2>&1; then
      echo "fuzz: $t: replayed ${#inputs[@]} inputs, no failure"
    else
      echo "fuzz: $t: FAILED on replay (log: $log)" >&2; tail -n 40 "$log" >&2; failed=1
    fi
  done
  exit $failed
fi

# ---- fuzz ----
failed=0
summary=()
for t in "${targets[@]}"; do
  work="$build_dir/corpus/$t"
  artifacts="$build_dir/artifacts/$t"
  mkdir -p "$work" "$artifacts"
  cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
  log="$build_dir/fuzz-$t.log"
  echo "fuzz: $t for $seconds s (corpus $work, log $log)"
  rc=0
  "$build_dir/fuzz/fuzz_$t" "$work" "${common[@]}" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  if ((rc != 0)); then
    echo "fuzz: $t: FAILED (exit $rc) after ${execs:-?} executions; the input is in $artifacts/:" >&2
    grep -E "^==[0-9]+==|ERROR|runtime error|terminate called|what\(\)|Test unit written" "$log" | head -n 20 >&2 || true
    failed=1
  fi
  summary+=("$(printf '%-18s %12s executions in %5s s  %s' "$t" "${execs:-?}" "$seconds" \
    "$( ((rc == 0)) && echo "0 crashes" || echo "FAILED, see $log")")")
done
echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
exit $failed
