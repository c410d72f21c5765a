#!/usr/bin/env bash
# Runs ON THE GPU MACHINE after scripts/device/run.sh has built build-device:
#   bash scripts/device/bench_compare.sh [BASELINE_KITE]
# The BF16 speed figures of docs/benchmarks.md on one card, in one run: the
# Llama-3-8B shape (batch 1: 512 + 128 tokens; 256 x (256 + 256)) with this
# build and, when given, a baseline build's kite binary (before/after), then
# the Qwen3-8B shape with this build. JSON lines in $OUT/compare.json.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
K=./build-device/kite
BASE=${1:-}
: > "$OUT/compare.json"
run() {  # label, binary, model, bench args...
  local label=$1 bin=$2 model=$3
  shift 3
  echo "== $label: $*" >&2
  "$bin" bench latency "$@" --device cuda --model "$model" --json 2>>"$OUT/compare.log" | tail -1 |
    sed "s/^{/{\"label\":\"$label\",/" >> "$OUT/compare.json"
}
M=/tmp/llama3-8b
Q=/tmp/qwen3-8b
[ -f $M/config.json ] || $K make-model --shape llama3-8b --random --dtype bf16 $M 2>>"$OUT/compare.log"
for bin in ${BASE:+"$BASE"} "$K"; do
  tag=$([ "$bin" = "$K" ] && echo after || echo before)
  run "llama3-8b b1 $tag" "$bin" $M --batch 1 --prompt-len 512 --gen-len 128 --reps 2
  run "llama3-8b 256x(256+256) $tag" "$bin" $M --batch 256 --prompt-len 256 --gen-len 256 --reps 1
done
rm -rf $M
[ -f $Q/config.json ] || $K make-model --shape qwen3-8b --random --dtype bf16 $Q 2>>"$OUT/compare.log"
run "qwen3-8b b1" "$K" $Q --batch 1 --prompt-len 512 --gen-len 128 --reps 2
run "qwen3-8b 256x(256+256)" "$K" $Q --batch 256 --prompt-len 256 --gen-len 256 --reps 1
cat "$OUT/compare.json"
