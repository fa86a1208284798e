#!/usr/bin/env bash
# The one command for a fresh machine: installs the dependencies, builds moe.cpp (Release) and runs
# the main job on its built-in defaults (for now, `moe bench layer`: one MoE layer forward and
# forward+backward on a small shape). Extra arguments go to CMake's configure step.
# Environment: MOE_BUILD_DIR (default build), MOE_SKIP_DEPS=1 skips the package check.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${MOE_SKIP_DEPS:-0}" != 1 ]]; then
  scripts/install-deps.sh
fi
scripts/build.sh "$@"

build_dir="${MOE_BUILD_DIR:-build}"
echo
echo "setup: running the main job: $build_dir/moe bench layer"
exec "$build_dir/moe" bench layer
