#!/usr/bin/env bash
# Configures and builds Kite into build/ (CUDA backend too when nvcc exists).
# Extra arguments go to cmake, e.g. scripts/build.sh -DKITE_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${KITE_JOBS:-$(nproc)}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "$jobs"
