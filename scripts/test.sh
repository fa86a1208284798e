#!/usr/bin/env bash
# The one test command: installs the dependencies, builds (Release) and runs every test with CTest.
# Exits non-zero when any test fails.
#
#   scripts/test.sh                    Release build in build/, all tests
#   scripts/test.sh --sanitize         build in build-asan with AddressSanitizer and UBSan (CUDA off;
#                                      -O1 with line tables: half the compile time of -O2 -g) and run the
#                                      tests there, less the PyTorch oracles (label oracle: they check
#                                      f32 summation orders of the shipped -O2 code, the Release run's job)
#   scripts/test.sh [--sanitize] -- ARGS   pass ARGS to ctest (e.g. -- -R cli)
#
# Environment: MOE_BUILD_DIR (default build, or build-asan with --sanitize), MOE_TEST_JOBS (default 2),
# MOE_TEST_TIMEOUT (seconds per test without its own timeout, default 1800), MOE_SKIP_DEPS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
ctest_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "test: unknown argument '$1' (see scripts/test.sh --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ "${MOE_SKIP_DEPS:-0}" != 1 ]]; then
  scripts/install-deps.sh
fi

cmake_args=()
if [[ $sanitize == 1 ]]; then
  export MOE_BUILD_DIR="${MOE_BUILD_DIR:-build-asan}"
  export MOE_BUILD_TYPE="${MOE_BUILD_TYPE:-Sanitize}"
  cmake_args=("-DMOE_SANITIZE=address,undefined" -DMOE_CUDA=OFF "-DCMAKE_CXX_FLAGS_SANITIZE=-O1 -g1 -DNDEBUG")
  ctest_args=(-LE oracle "${ctest_args[@]}")
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
else
  export MOE_BUILD_DIR="${MOE_BUILD_DIR:-build}"
  export MOE_BUILD_TYPE="${MOE_BUILD_TYPE:-Release}"
fi
scripts/build.sh "${cmake_args[@]}"

echo "test: running ctest in $MOE_BUILD_DIR"
ctest --test-dir "$MOE_BUILD_DIR" --output-on-failure -j "${MOE_TEST_JOBS:-2}" \
  --timeout "${MOE_TEST_TIMEOUT:-1800}" "${ctest_args[@]}"
echo "test: all tests passed"
