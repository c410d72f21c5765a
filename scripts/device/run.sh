#!/usr/bin/env bash
# Runs ON THE GPU MACHINE (device tool), from the repo root, with .deps carried:
#   bash scripts/device/run.sh [fixtures]
# Unpacks the carried Debian packages into /tmp/deps, builds Kite with the
# CUDA backend for sm_90a (-j16), runs the CUDA tests and the CPU tests, and
# with "fixtures" regenerates the HF reference fixtures into $OUT. Prints a
# short table last.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
declare -A result
step() { local name=$1; shift; local t0=$SECONDS; if "$@" >"$OUT/$name.log" 2>&1; then result[$name]="ok ($((SECONDS - t0)) s)"; else result[$name]="FAILED ($((SECONDS - t0)) s, see $name.log)"; fi; }

nvidia-smi -L || true
SHARED=${KITE_SHARED:-../shared}
[ -d "$SHARED" ] || SHARED=.shared-lite  # the files fixtures need, carried (see README)
echo "shared data: $SHARED"
if [ "${1:-}" = "fixtures" ] || [ "${1:-}" = "fixtures-only" ]; then
  step fixtures bash -c '
    set -e
    rm -rf /tmp/fx && mkdir -p /tmp/fx/models /tmp/fx/tokenizer /tmp/fx/chat
    python3 scripts/fixtures/model_fixtures.py /tmp/fx/models
    if [ -f '"$SHARED"'/tokenizers/llama.cpp-vocab/ggml-vocab-llama-spm.gguf.inp ]; then
      python3 scripts/fixtures/tokenizer_fixtures.py '"$SHARED"' /tmp/fx/tokenizer/smollm2_ids.json; fi
    python3 scripts/fixtures/chat_fixtures.py '"$SHARED"' . && cp tests/fixtures/chat/renders.json /tmp/fx/chat/
    tar -C /tmp/fx -czf '"$OUT"'/fixtures.tar.gz .'
  [ "$1" = "fixtures-only" ] && { echo "fixtures: ${result[fixtures]}"; exit 0; }
fi

mkdir -p /tmp/deps
for f in .deps/*.deb; do dpkg -x "$f" /tmp/deps; done
export CMAKE_PREFIX_PATH=/tmp/deps/usr
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
step configure cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_CUDA=ON -DKITE_CUDA_ARCH=90a \
  -DKITE_BUILD_BENCH=OFF -DKITE_SHARED_DIR="$(realpath "$SHARED")" -DCMAKE_INCLUDE_PATH=/tmp/deps/usr/include -DCMAKE_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu
step build cmake --build build-device -j16
step cuda_tests ctest --test-dir build-device -R Cuda --output-on-failure
step cpu_tests ctest --test-dir build-device -E Cuda --output-on-failure -j16
step generate ./build-device/kite generate --model $SHARED/models/kite-ref --prompt "The kernel scheduler" --max-tokens 32
cp build-device/Testing/Temporary/LastTest.log "$OUT/" 2>/dev/null || true

echo
echo "| step | result |"
echo "|---|---|"
for s in fixtures configure build cuda_tests cpu_tests generate; do
  [ -n "${result[$s]:-}" ] && echo "| $s | ${result[$s]} |"
done
