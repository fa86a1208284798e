#!/usr/bin/env bash
# The one command for a fresh machine: installs the dependencies, builds moe.cpp (Release) and runs
# the main job on its built-in defaults: `moe train` trains a small MoE language model on the
# English text of Debian's fortunes package (runs/fortunes), then `moe generate` shows what it
# learned and `moe report` writes runs/fortunes/report.html. Extra arguments go to CMake's
# configure step.
# Environment: MOE_BUILD_DIR (default build), MOE_RUN_DIR (default runs/fortunes), MOE_SKIP_DEPS=1
# skips the package check.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${MOE_SKIP_DEPS:-0}" != 1 ]]; then
  scripts/install-deps.sh
fi
scripts/build.sh "$@"

build_dir="${MOE_BUILD_DIR:-build}"
echo
run_dir="${MOE_RUN_DIR:-runs/fortunes}"
echo "setup: running the main job: $build_dir/moe train --out $run_dir --overwrite"
"$build_dir/moe" train --out "$run_dir" --overwrite
echo
echo "setup: $build_dir/moe generate --model $run_dir --prompt 'The meaning of life is' --temperature 0.7"
"$build_dir/moe" generate --model "$run_dir" --prompt "The meaning of life is" --max-tokens 60 --temperature 0.7 \
  --top-p 0.95 --seed 1
"$build_dir/moe" report "$run_dir"
