#!/usr/bin/env bash
# Measures the accuracy cost of every quantization method on the reference
# model and prints the docs/quantization.md table (markdown) last.
#   bash scripts/quant_table.sh [KITE_BINARY] [SHARED_DIR] [OUT_DIR]
# Calibration: CALIB_SAMPLES x CALIB_SEQLEN tokens of text/calib.txt (never
# an evaluation text). Evaluation: text/persuasion.txt scored as
# llama-perplexity does (--score-second-half, comparable to ../shared/peers.md)
# and the six valid/*.txt with the shared/README method; KL against the
# unquantized model.
set -euo pipefail
KITE=${1:-./build/kite}
SHARED=${2:-../shared}
OUT=${3:-/tmp/kite-quant-table}
SAMPLES=${CALIB_SAMPLES:-64}
SEQLEN=${CALIB_SEQLEN:-512}
BASE=$SHARED/models/kite-ref
CALIB=$SHARED/text/calib.txt
mkdir -p "$OUT"
declare -a NAMES=(int8 w8a8-sq fp8 fp8-static int4-g128 int4-g128-asym nf4 gptq-4-g128 gptq-4-g128-act gptq-8 awq-4-g128)
declare -A ARGS=(
  [int8]="--method int8"
  [w8a8-sq]="--method w8a8 --smoothquant-alpha 0.5 --calib $CALIB"
  [fp8]="--method fp8"
  [fp8-static]="--method fp8 --fp8-static --kv-cache-fp8 --calib $CALIB"
  [int4-g128]="--method int4 --group-size 128"
  [int4-g128-asym]="--method int4 --group-size 128 --asym"
  [nf4]="--method nf4"
  [gptq-4-g128]="--method gptq --bits 4 --group-size 128 --calib $CALIB"
  [gptq-4-g128-act]="--method gptq --bits 4 --group-size 128 --act-order --calib $CALIB"
  [gptq-8]="--method gptq --bits 8 --calib $CALIB"
  [awq-4-g128]="--method awq --calib $CALIB"
)
field() { grep "^$1: " "$2" | tail -1 | sed "s/^$1: //"; }
valid_kl() {  # mean of the six valid texts' mean KLD
  local model=$1 sum=0 n=0 v
  for f in "$SHARED"/text/valid/*.txt; do
    "$KITE" ppl --model "$model" --text "$f" --kl-base "$BASE" -q > "$OUT/v.txt"
    v=$(field "mean KLD" "$OUT/v.txt"); sum=$(python3 -c "print($sum + $v)"); n=$((n + 1))
  done
  python3 -c "print(f'{$sum / $n:.6f}')"
}
"$KITE" ppl --model "$BASE" --text "$SHARED/text/persuasion.txt" --score-second-half -q > "$OUT/base.txt"
base_ppl=$(field ppl "$OUT/base.txt")
rows=()
for name in "${NAMES[@]}"; do
  dir=$OUT/$name
  rm -rf "$dir"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$KITE" quantize --model "$BASE" --out "$dir" ${ARGS[$name]} --calib-samples "$SAMPLES" --calib-seqlen "$SEQLEN" \
    > "$OUT/$name.quantize.log" 2>&1
  secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  "$KITE" ppl --model "$dir" --text "$SHARED/text/persuasion.txt" --score-second-half --kl-base "$BASE" -q > "$OUT/$name.ppl.txt"
  size=$(du -sb --apparent-size "$dir"/*.safetensors | awk '{s += $1} END {printf "%.1f", s / 1e6}')
  bpw=$(python3 -c "
import json; r = json.load(open('$dir/quantization_report.json'))
print(f\"{sum(l['bits_per_weight'] for l in r['linears']) / len(r['linears']):.2f}\")")
  vkl=$(valid_kl "$dir")
  rows+=("| $name | $bpw | $size | $(field ppl "$OUT/$name.ppl.txt") | $(field 'delta ppl' "$OUT/$name.ppl.txt") | $(field 'mean KLD' "$OUT/$name.ppl.txt") | $(field '99% KLD' "$OUT/$name.ppl.txt") | $(field 'same top token' "$OUT/$name.ppl.txt") | $vkl | $secs |")
done
echo
echo "Base (bf16 weights, F32 compute): persuasion.txt ppl $base_ppl (--score-second-half)."
echo "Calibration: $SAMPLES x $SEQLEN tokens of calib.txt. Threads: ${KITE_NUM_THREADS:-all}."
echo
echo "| method | linear bits/weight | safetensors MB | ppl | delta ppl | mean KLD | 99% KLD | same top token | valid/*.txt mean KLD | quantize s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
