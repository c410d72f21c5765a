#!/usr/bin/env bash
# Runs ON THE GPU MACHINE (device tool), from the repo root, with .deps carried:
#   bash scripts/device/run.sh [fixtures|fixtures-only] [bench] [micro] [tp] [no-cpu-tests]
# Unpacks the carried Debian packages into /tmp/deps, builds Kite with the
# CUDA backend for sm_90a (-j16), runs the CUDA tests and the CPU tests; with
# "fixtures" regenerates the HF reference fixtures into $OUT; with "bench"
# writes a random Llama-3-8B-shaped BF16 checkpoint and runs kite bench and
# with "micro" also the CUDA microbenchmarks (results in $OUT/bench.json).
# With "tp" (and 2+ GPUs) also tensor parallelism: the Llama-3-8B shape at
# --tp 2 (batch 1 and 256) and a 70B-shaped model (16 of its 80 layers, so
# the checkpoint fits the disk) at --tp 1 and 2. Prints a short table last. Narrower runs: KITE_TARGETS="a b" builds only
# those targets, KITE_CTEST sets the CUDA tests' ctest -R regex (default
# Cuda), KITE_MICRO the microbenchmark glob (default cuda_*_bench).
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
want() { for x in "$@"; do for a in "${ARGS[@]}"; do [ "$a" = "$x" ] && return 0; done; done; return 1; }
ARGS=("$@")
step configure cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_CUDA=ON -DKITE_CUDA_ARCH=90a \
  -DKITE_BUILD_BENCH=ON -DKITE_SHARED_DIR="$(realpath "$SHARED")" -DCMAKE_INCLUDE_PATH=/tmp/deps/usr/include -DCMAKE_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu
step build cmake --build build-device -j16 ${KITE_TARGETS:+--target $KITE_TARGETS}
step cuda_tests ctest --test-dir build-device -R "${KITE_CTEST:-Cuda}" --output-on-failure
want no-cpu-tests || step cpu_tests ctest --test-dir build-device -E Cuda --output-on-failure -j16
[ -x ./build-device/kite ] && step generate ./build-device/kite generate --device cuda --model $SHARED/models/kite-ref --prompt "The kernel scheduler" --max-tokens 32
cp build-device/Testing/Temporary/LastTest.log "$OUT/" 2>/dev/null || true
if want bench; then
  K=./build-device/kite
  M=/tmp/llama3-8b
  [ -f $M/config.json ] || step make_model $K make-model --shape llama3-8b --random --dtype bf16 $M
  : > "$OUT/bench.json"
  bench() { local name=$1; shift; step "$name" bash -c "$K bench $* --device cuda --model $M --json | tail -1 >> $OUT/bench.json"; }
  if [ -z "${KITE_TP_ONLY:-}" ]; then  # KITE_TP_ONLY=1: only the tensor-parallel runs
    bench decode_b1 latency --batch 1 --prompt-len 512 --gen-len 128 --reps 2
    bench decode_b1_eager latency --batch 1 --prompt-len 512 --gen-len 128 --reps 2 --enforce-eager
    bench batch_256 latency --batch 256 --prompt-len 256 --gen-len 256 --reps 1
  fi
  if want tp && [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    bench decode_b1_tp2 latency --batch 1 --prompt-len 512 --gen-len 128 --reps 2 --tp 2
    bench batch_256_tp2 latency --batch 256 --prompt-len 256 --gen-len 256 --reps 1 --tp 2
    M70=/tmp/llama3-70b-16l
    [ -f $M70/config.json ] || step make_model_70b $K make-model --shape llama3-70b --layers 16 --random --dtype bf16 $M70
    bench70() { local name=$1; shift; step "$name" bash -c "$K bench $* --device cuda --model $M70 --json | tail -1 >> $OUT/bench.json"; }
    bench70 decode_70b16_b1_tp1 latency --batch 1 --prompt-len 512 --gen-len 64 --reps 1
    bench70 decode_70b16_b1_tp2 latency --batch 1 --prompt-len 512 --gen-len 64 --reps 1 --tp 2
    bench70 batch_64_70b16_tp2 latency --batch 64 --prompt-len 256 --gen-len 128 --reps 1 --tp 2
  fi
  if want micro; then
    for b in build-device/bench/${KITE_MICRO:-cuda_*_bench}; do step "$(basename "$b")" "$b" --benchmark_min_time=0.2; done
  fi
  cat "$OUT/bench.json"
fi

echo
echo "| step | result |"
echo "|---|---|"
for s in fixtures configure build cuda_tests cpu_tests generate make_model decode_b1 decode_b1_eager batch_256 \
  decode_b1_tp2 batch_256_tp2 make_model_70b decode_70b16_b1_tp1 decode_70b16_b1_tp2 batch_64_70b16_tp2 \
  cuda_attention_bench cuda_dense_bench cuda_sample_bench; do
  [ -n "${result[$s]:-}" ] && echo "| $s | ${result[$s]} |"
done
