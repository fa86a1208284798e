#!/usr/bin/env bash
# Installs every build and test dependency of moe.cpp from Debian 12 packages.
#
#   scripts/install-deps.sh           install what is missing (apt-get; sudo when not root)
#   scripts/install-deps.sh --check   list what is missing; exit 1 when anything is
#
# Idempotent: when every package is already installed (checked with dpkg-query) apt is not run.
# The CUDA toolkit is not installed here: CMake turns the CUDA backend on when it finds nvcc.
# MOE_EXTRA_PACKAGES (space-separated) adds packages to the list.
set -euo pipefail

PACKAGES=(
  build-essential     # g++ (C++20, OpenMP via libgomp), make
  cmake               # >= 3.24; Debian 12 has 3.25
  ninja-build         # faster builds; scripts/build.sh falls back to make without it
  git
  clang-format        # the formatting check of the sources (scripts/check-format.sh, CTest format.check)
  clang               # the fuzz build (scripts/fuzz.sh, -DMOE_FUZZ=ON): clang++ with libFuzzer
  libclang-rt-14-dev  # clang's runtimes: libFuzzer, AddressSanitizer, UBSan
  libomp-dev          # OpenMP for clang (the library's threads in the fuzz build)
  pkg-config
  libgtest-dev        # GoogleTest
  libgmock-dev        # GoogleMock
  libbenchmark-dev    # Google Benchmark
  nlohmann-json3-dev  # JSON
  libcli11-dev        # command-line parsing
  libcpp-httplib-dev  # HTTP server of `moe serve`
  libopenmpi-dev      # MPI communicator (expert parallelism on CPUs), src/dist/comm_mpi.cpp
  openmpi-bin         # mpirun, for the MPI tests (tests/mpi) and `moe bench alltoall`
  python3             # test drivers
  python3-dev         # the Python package moe_cpp: headers of the extension moe_cpp._core (src/python)
  pybind11-dev        # ... its bindings (CMake finds pybind11's config)
  python3-pybind11    # ... pybind11 for `pip install --no-build-isolation .`
  python3-setuptools  # ... `pip install .` (setup.py, pyproject.toml)
  python3-wheel
  python3-pip
  python3-venv        # the install test: a fresh virtual environment (tests/python/install_test.sh)
  python3-numpy       # PyTorch oracle tests
  python3-torch       # PyTorch oracle tests (never a runtime dependency)
  libopenblas0-pthread  # an optimised BLAS under python3-torch, so bench/compare_torch.py is fair
  fortunes            # the default training corpus (English text in /usr/share/games/fortunes)
  chromium            # headless screenshot test of the `moe report` page (tests/cli/report_screenshot.py)
  fonts-dejavu-core   # the font that screenshot renders its text with
)
# shellcheck disable=SC2206
PACKAGES+=(${MOE_EXTRA_PACKAGES:-})

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "installed" ]] || missing+=("$pkg")
done

if [[ "${1:-}" == "--check" ]]; then
  if ((${#missing[@]} == 0)); then
    echo "install-deps: all ${#PACKAGES[@]} packages are installed"
    exit 0
  fi
  echo "install-deps: missing: ${missing[*]}"
  exit 1
elif [[ $# -gt 0 ]]; then
  echo "usage: scripts/install-deps.sh [--check]" >&2
  exit 2
fi

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: not root and sudo is missing" >&2; exit 1; }
  SUDO=(sudo)
fi
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Use-Pty=0)

# Mirrors fail now and then: retry a few times before giving up.
retry() {
  local n
  for n in 1 2 3; do
    "$@" && return 0
    echo "install-deps: attempt $n of '$*' failed; retrying in $((n * 10)) s" >&2
    sleep $((n * 10))
  done
  "$@"
}
retry "${APT[@]}" update
retry "${APT[@]}" install --no-install-recommends "${missing[@]}"
echo "install-deps: done"
