#!/usr/bin/env bash
# Runs Kite's tests: the unit/integration tests (ctest over build/) and each
# libFuzzer target for a bounded time (KITE_FUZZ_SECONDS, default 60).
# Expects scripts/build.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build ] || { echo "test.sh: no build/ directory; run scripts/build.sh first" >&2; exit 1; }
# ctest runs tests two at a time; one CPU thread each keeps them from
# oversubscribing the cores (kernel tests set their own thread counts).
export KITE_NUM_THREADS=${KITE_NUM_THREADS:-1}
ctest --test-dir build --output-on-failure -j "${KITE_TEST_JOBS:-2}" --timeout 900
bash scripts/fuzz.sh "${KITE_FUZZ_SECONDS:-60}"
