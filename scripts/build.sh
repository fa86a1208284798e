#!/usr/bin/env bash
# Configures and builds moe.cpp. Extra arguments go to CMake's configure step, e.g.
#   scripts/build.sh -DMOE_CUDA=OFF
# Environment:
#   MOE_BUILD_DIR   build folder (default: build)
#   MOE_BUILD_TYPE  CMake build type (default: Release)
#   MOE_JOBS        parallel build jobs (default: nproc)
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir="${MOE_BUILD_DIR:-build}"
build_type="${MOE_BUILD_TYPE:-Release}"
jobs="${MOE_JOBS:-$(nproc)}"

generator=()
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null; then
  generator=(-G Ninja)  # only on a fresh folder: CMake refuses to switch generators
fi

echo "build: configuring $build_dir ($build_type)"
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE="$build_type" "$@"
echo "build: building with $jobs jobs"
cmake --build "$build_dir" -j "$jobs"
