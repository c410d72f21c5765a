#!/usr/bin/env bash
# Installs everything Kite's build, tests, fuzzers and benchmarks need on
# Debian bookworm. Idempotent: packages already present are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(
  build-essential cmake ninja-build pkg-config git
  nlohmann-json3-dev libpcre2-dev libcli11-dev libspdlog-dev libfmt-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev libboost1.81-dev
  clang libclang-rt-14-dev clang-format
  gnuplot-nox libicu-dev unicode-data bzip2
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Node.js runs the API tests with the official `openai` client; a machine
# that already has node (e.g. from NodeSource, npm included) keeps it.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
# The API test suite's npm packages (tests/server/node/package-lock.json).
if [ -f tests/server/node/package-lock.json ]; then
  (cd tests/server/node && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: all packages present"
