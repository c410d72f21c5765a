#!/usr/bin/env bash
# Run HERE (the development machine, which reaches Debian's mirror): downloads
# the build dependencies the GPU machine's image lacks into .deps/ (git-ignored),
# to be carried to the device with `carry: [".deps"]`.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .deps
cd .deps
apt-get download nlohmann-json3-dev libcli11-dev libfmt-dev libfmt9 libpcre2-dev libpcre2-8-0 \
  libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian libyaml-cpp-dev libyaml-cpp0.7 libboost1.81-dev
