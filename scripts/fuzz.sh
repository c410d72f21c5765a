#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build-fuzz/) and runs each for
# SECONDS (first argument, default 60). Any crash, leak, timeout or OOM fails.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKITE_CUDA=OFF \
  -DKITE_BUILD_TESTS=OFF -DKITE_BUILD_BENCH=OFF -DKITE_BUILD_FUZZ=ON \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" >/dev/null
# Only the fuzz targets (and the libraries they link), not the whole tree.
targets=$(for f in fuzz/fuzz_*.cpp; do basename "$f" .cpp; done)
cmake --build build-fuzz -j "${KITE_JOBS:-$(nproc)}" --target $targets
status=0
for f in build-fuzz/fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  corpus=build-fuzz/corpus/$name
  mkdir -p "$corpus"
  seeds=fuzz/seeds/$name
  echo "fuzz: $name for ${secs}s"
  if ! "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
      -artifact_prefix=build-fuzz/ "$corpus" $( [ -d "$seeds" ] && echo "$seeds" ) 2>build-fuzz/$name.log; then
    echo "fuzz: $name FAILED; last lines of build-fuzz/$name.log:" >&2
    tail -40 build-fuzz/$name.log >&2
    status=1
  fi
done
exit $status
