#!/usr/bin/env bash
# `minerva bench` beside llama.cpp's own `llama-bench` (built from the same llama.cpp
# source, scripts/reference/build-llama-cpp.sh) on the same GGUF files, in one run, with
# the same threads and repetitions; prints both medians and their ratio.
#   scripts/bench-vs-llama.sh [model-id ...]     (default: both default LLMs)
#   THREADS=2 REPS=5 scripts/bench-vs-llama.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
REPS="${REPS:-5}"
MODELS_DIR="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
ids=("$@")
[ ${#ids[@]} -gt 0 ] || ids=(smollm2-135m-instruct gemma-3-270m)

LLAMA_BIN="$(scripts/reference/build-llama-cpp.sh | tail -1)"
cargo build --release --locked --bin minerva >&2
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

for id in "${ids[@]}"; do
  echo "[bench] $id: minerva bench" >&2
  target/release/minerva bench -m "$id" -t "$THREADS" -r "$REPS" --json > "$out/$id.minerva.json"
  echo "[bench] $id: llama-bench" >&2
  "$LLAMA_BIN/llama-bench" -m "$MODELS_DIR/$id.gguf" -t "$THREADS" -p 512 -n 128 -r "$REPS" -o json > "$out/$id.llama.json"
done

python3 - "$out" "${ids[@]}" <<'PY'
import json, statistics, sys
out, ids = sys.argv[1], sys.argv[2:]
print("| model | test | minerva tok/s (median) | llama-bench tok/s (median) | ratio |")
print("|---|---|---|---|---|")
for mid in ids:
    ours = json.load(open(f"{out}/{mid}.minerva.json"))
    ref = json.load(open(f"{out}/{mid}.llama.json"))
    for test, key, n_prompt, n_gen in (("pp512", "prefill", 512, 0), ("tg128", "decode", 0, 128)):
        row = next(r for r in ref if r["n_prompt"] == n_prompt and r["n_gen"] == n_gen)
        theirs = statistics.median(row["samples_ts"])
        mine = ours[key]["tokens_per_second_median"]
        print(f"| {mid} | {test} | {mine:.1f} | {theirs:.1f} | {mine / theirs:.2f} |")
PY
