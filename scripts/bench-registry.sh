#!/usr/bin/env bash
# Import throughput and hashing time of the registry on the default models: `minerva
# import` (copy + SHA-256 in one pass) of each default model into a fresh MINERVA_HOME,
# then `minerva verify` (re-hash all three), REPS times each; prints medians. The source
# files are read from the page cache after the first run (warm-cache figures).
#   scripts/bench-registry.sh            REPS=5 scripts/bench-registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${REPS:-3}"
MODELS_DIR="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
cargo build --release --locked --bin minerva >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for rep in $(seq "$REPS"); do
  home="$work/home$rep"
  for model in smollm2-135m-instruct.gguf gemma-3-270m.gguf all-minilm-l6-v2; do
    # "imported PATH into DEST in 0.66 s (386 MB/s)"
    target/release/minerva --home "$home" import "$MODELS_DIR/$model" \
      | sed -n "s/^imported .* in \([0-9.]*\) s (\([0-9]*\) MB\/s)$/import $model \1 \2/p"
  done
  target/release/minerva --home "$home" verify \
    | sed -n 's/^hashed \([0-9]*\) models (\([0-9.]*\) MB) in \([0-9.]*\) s (\([0-9]*\) MB\/s)$/verify all \3 \4/p'
  rm -rf "$home"
done > "$work/runs"

python3 - "$work/runs" "$REPS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    what, model, seconds, rate = line.split()
    runs[(what, model)].append((float(seconds), float(rate)))
print(f"| step | model | seconds (median of {sys.argv[2]}) | MB/s (median) |")
print("|---|---|---|---|")
for (what, model), values in runs.items():
    print(f"| {what} | {model} | {statistics.median(s for s, _ in values):.2f} | {statistics.median(r for _, r in values):.0f} |")
PY
