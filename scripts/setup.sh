#!/usr/bin/env bash
# Installs everything Kite's build, tests, fuzzers and benchmarks need on
# Debian bookworm. Idempotent: packages already present are skipped.
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config git
  nlohmann-json3-dev libpcre2-dev libcli11-dev libspdlog-dev libfmt-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev clang-format
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
echo "setup: all packages present"
