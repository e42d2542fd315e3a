#!/usr/bin/env bash
# LoRA adapter serving: 8 concurrent chat clients (short questions, 128 tokens,
# temperature 0) on SmolLM2 alone, then spread over 1, 2 and 4 adapters (rank 8 on the
# query and value projections, made by `minerva adapter init`: untrained, so the answers
# are the base's and every request costs what a trained adapter's does), on one server.
# Then every client with two adapters at once (`BASE+A+B`). Prints aggregate tok/s (median
# of REPS runs) and the ratio to the base alone.
#
#   scripts/bench-adapters.sh            (REPS=3 CLIENTS=8 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[bench-adapters]\033[0m %s\n' "$*" >&2; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
BIN=target/release/minerva
REPS="${REPS:-3}"
CLIENTS="${CLIENTS:-8}"
THREADS="${THREADS:-2}"
BASE=smollm2-135m-instruct
require_default_models
cargo build --release --locked --bin minerva >&2
serve_in_temp_home --threads "$THREADS" --keep-alive=-1
for i in 0 1 2 3; do
  MINERVA_HOME="$home" "$BIN" adapter init "$BASE" --name "bench-$i" --seed "$i" >&2
done
results="$home/results.jsonl"
for k in 0 1 2 4; do
  say "$CLIENTS clients over $k adapters"
  python3 scripts/bench-serving.py --port "$port" --model "$BASE" --label "adapters=$k" \
    --clients "$CLIENTS" --reps "$REPS" --adapters "$k" | tee -a "$results" >&2
done
# Two adapters on every request (BASE+A+B): one setting, so the clients batch together.
say "$CLIENTS clients, each with 2 adapters at once"
python3 scripts/bench-serving.py --port "$port" --model "$BASE+bench-0+bench-1" --label "stacked=2" \
  --clients "$CLIENTS" --reps "$REPS" | tee -a "$results" >&2
say "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx2|avx512f|avx512_bf16|avx512_vnni|amx_int8|amx_bf16' | tr '\n' ' ')"
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
base = statistics.median(r["tok_s"] for r in by["adapters=0"])
print("| clients' models | tok/s (median) | TTFT p95 s (median) | vs base alone |")
print("|---|---|---|---|")
for label, runs in by.items():
    tok = statistics.median(r["tok_s"] for r in runs)
    ttft = statistics.median(r["ttft_p95"] for r in runs)
    if label == "adapters=0":
        name = "base alone"
    elif label.startswith("stacked="):
        name = "2 adapters on every request"
    else:
        name = "spread over " + label.replace("adapters=", "") + " adapter(s)"
    print(f"| {name} | {tok:.1f} | {ttft:.3f} | {tok / base:.2f}x |")
PY
