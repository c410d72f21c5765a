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
[ -n "${METHODS:-}" ] && read -r -a NAMES <<< "$METHODS"
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
# The valid texts, each cut to its first VALID_BYTES bytes (bounded time).
VALID_BYTES=${VALID_BYTES:-40000}
mkdir -p "$OUT/valid"
for f in "$SHARED"/text/valid/*.txt; do head -c "$VALID_BYTES" "$f" > "$OUT/valid/$(basename "$f")"; done
one() {  # quantize + evaluate one method; results in $OUT/$name.*
  local name=$1 dir=$OUT/$1 t0 sum=0 n=0 v
  rm -rf "$dir"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$KITE" quantize --model "$BASE" --out "$dir" ${ARGS[$name]} --calib-samples "$SAMPLES" --calib-seqlen "$SEQLEN" \
    > "$OUT/$name.quantize.log" 2>&1 || { echo "quantize $name failed" >&2; return 1; }
  python3 -c "import time; print(f'{time.time() - $t0:.1f}')" > "$OUT/$name.secs"
  "$KITE" ppl --model "$dir" --text "$SHARED/text/persuasion.txt" --score-second-half --kl-base "$BASE" -q \
    > "$OUT/$name.ppl.txt"
  for f in "$OUT"/valid/*.txt; do
    "$KITE" ppl --model "$dir" --text "$f" --kl-base "$BASE" -q > "$OUT/$name.v.txt"
    v=$(field "mean KLD" "$OUT/$name.v.txt"); sum=$(python3 -c "print($sum + $v)"); n=$((n + 1))
  done
  python3 -c "print(f'{$sum / $n:.6f}')" > "$OUT/$name.valid"
}
export -f one field
export KITE BASE SHARED OUT SAMPLES SEQLEN
"$KITE" ppl --model "$BASE" --text "$SHARED/text/persuasion.txt" --score-second-half -q > "$OUT/base.txt"
base_ppl=$(field ppl "$OUT/base.txt")
# Methods run side by side (JOBS at a time, KITE_NUM_THREADS threads each).
for name in "${NAMES[@]}"; do echo "$name"; done | \
  ARGS_DECL=$(declare -p ARGS) xargs -P "${JOBS:-1}" -I{} bash -c 'eval "$ARGS_DECL"; one {}'
rows=()
for name in "${NAMES[@]}"; do
  dir=$OUT/$name
  [ -f "$OUT/$name.valid" ] || { rows+=("| $name | failed | | | | | | | | |"); continue; }
  size=$(du -sb --apparent-size "$dir"/*.safetensors | awk '{s += $1} END {printf "%.1f", s / 1e6}')
  bpw=$(python3 - "$dir" "$BASE" <<'PY'
# Bits per weight of the decoder linears as stored: every tensor of a
# q/k/v/o/gate/up/down module (codes, scales, zeros, g_idx, ...) over the
# number of weights of those modules in the unquantized checkpoint.
import glob, json, struct, sys
LIN = ("q_proj.", "k_proj.", "v_proj.", "o_proj.", "gate_proj.", "up_proj.", "down_proj.")
def tensors(d):
    for f in glob.glob(d + "/*.safetensors"):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            for k, v in json.loads(fh.read(n)).items():
                if k != "__metadata__" and any(x in k for x in LIN):
                    yield k, v
stored = sum(v["data_offsets"][1] - v["data_offsets"][0] for _, v in tensors(sys.argv[1]))
weights = 0
for _, v in tensors(sys.argv[2]):
    c = 1
    for s in v["shape"]:
        c *= s
    weights += c
print(f"{8 * stored / weights:.2f}")
PY
)
  p=$OUT/$name.ppl.txt
  rows+=("| $name | $bpw | $size | $(field ppl "$p") | $(field 'delta ppl' "$p") | $(field 'mean KLD' "$p") | $(field '99% KLD' "$p") | $(field 'same top token' "$p") | $(cat "$OUT/$name.valid") | $(cat "$OUT/$name.secs") |")
done
echo
echo "Base (bf16 weights, F32 compute): persuasion.txt ppl $base_ppl (--score-second-half)."
echo "Calibration: $SAMPLES x $SEQLEN tokens of calib.txt. valid/*.txt: first $VALID_BYTES bytes of each."
echo
echo "| method | linear bits/weight | safetensors MB | ppl | delta ppl | mean KLD | 99% KLD | same top token | valid/*.txt mean KLD | quantize s |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
