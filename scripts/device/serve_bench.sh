#!/usr/bin/env bash
# Runs ON THE GPU MACHINE after scripts/device/run.sh has built build-device:
#   bash scripts/device/serve_bench.sh [MODEL_DIR ...]
# The serving experiment of docs/bench-serve.md: each model (default: a
# random Llama-3-8B-shaped BF16 checkpoint with kite-ref's tokenizer) behind
# `kite serve`, then `kite bench serve` with 1,000 prompts of a synthetic
# ShareGPT-like length mix (scripts/bench/synthetic_sharegpt.py, seed 0),
# request rate inf, --ignore-eos; once with the whole GPU and once with
# --gpu-memory-utilization set so weights + KV fit 24 GB. Results (vLLM's
# JSON keys) in $OUT/serve_*.json, a summary table on stdout.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
K=./build-device/kite
SHARED=${KITE_SHARED:-.shared-lite}
TOK=$SHARED/models/kite-ref
DATA=/tmp/synthetic_sharegpt.json
[ -f $DATA ] || python3 scripts/bench/synthetic_sharegpt.py $SHARED/text/calib.txt $DATA --n 3000 --seed 0
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  M=/tmp/llama3-8b-tok
  [ -f $M/config.json ] || $K make-model --shape llama3-8b --random --dtype bf16 --tokenizer $TOK $M 2>>"$OUT/serve_bench.log"
  MODELS=($M)
fi
total_gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{print $1/1024}')
util24=$(awk -v t="$total_gib" 'BEGIN{printf "%.3f", 24/t}')
for m in "${MODELS[@]}"; do
  for mode in full 24gb; do
    util=0.9
    [ $mode = 24gb ] && util=$util24
    name=$(basename "$m")-$mode
    $K serve --model "$m" --served-model-name bench --port 8111 --host 127.0.0.1 --max-model-len 2048 \
      --gpu-memory-utilization "$util" >"$OUT/serve_$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do grep -q "on http://" "$OUT/serve_$name.log" && break; sleep 1; done
    $K bench serve --port 8111 --model bench --tokenizer "$TOK" --dataset-name sharegpt --dataset-path $DATA \
      --num-prompts 1000 --request-rate inf --ignore-eos --save-result --no-plots --disable-tqdm \
      --percentile-metrics ttft,tpot,itl,e2el --result-dir "$OUT" --result-filename "serve_$name.json" \
      >"$OUT/bench_$name.txt" 2>&1
    kill -TERM $pid; wait $pid
    grep -E "kv cache|KV cache|weights" "$OUT/serve_$name.log" | head -3
    python3 - "$OUT/serve_$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {r['completed']} | {r['output_throughput']:.0f} | {r['total_token_throughput']:.0f} | "
      f"{r['mean_ttft_ms']:.0f} | {r['median_ttft_ms']:.0f} | {r['mean_tpot_ms']:.1f} | {r['p99_itl_ms']:.1f} | "
      f"{r.get('avg_power_w', float('nan')):.0f} | {r.get('output_tokens_per_joule', float('nan')):.2f} |")
PY
  done
done
