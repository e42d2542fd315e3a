#!/usr/bin/env bash
# Long contexts, side by side in one run: prefill speed and peak resident memory of
# `minerva bench` and llama.cpp's own `llama-bench` (built from the same llama.cpp source,
# scripts/reference/build-llama-cpp.sh) on the same GGUF file, at several prompt lengths
# and KV cache types (f16 and q8_0 by default; flash attention on, as Minerva runs it).
# Each figure is the median of REPS runs after a warm-up; peak memory is the process's
# maximum RSS (getrusage of the child).
#   scripts/bench-context.sh
#   MODEL=gemma-3-270m LENGTHS="2048 8192 32768" KV_TYPES="f16 q8_0" REPS=3 THREADS=2 scripts/bench-context.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${MODEL:-gemma-3-270m}"
LENGTHS="${LENGTHS:-2048 8192 32768}"
KV_TYPES="${KV_TYPES:-f16 q8_0}"
REPS="${REPS:-3}"
THREADS="${THREADS:-2}"
MODELS_DIR="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
FILE="$MODELS_DIR/$MODEL.gguf"
[ -f "$FILE" ] || { echo "$FILE is missing: run scripts/fetch-models.sh" >&2; exit 1; }

LLAMA_BIN="$(scripts/reference/build-llama-cpp.sh | tail -1)"
cargo build --release --locked --bin minerva >&2
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# peak NAME CMD...: runs CMD with stdout to $out/NAME.json, its peak RSS (KiB) to $out/NAME.rss
peak() {
  local name="$1"; shift
  python3 - "$out/$name" "$@" <<'PY'
import resource, subprocess, sys
base, cmd = sys.argv[1], sys.argv[2:]
with open(base + ".json", "w") as stdout:
    subprocess.run(cmd, stdout=stdout, check=True)
open(base + ".rss", "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
PY
}

for n in $LENGTHS; do
  for kv in $KV_TYPES; do
    echo "[bench-context] $MODEL, $n tokens, $kv KV: minerva bench" >&2
    peak "minerva-$n-$kv" target/release/minerva bench -m "$MODEL" -t "$THREADS" -r "$REPS" \
      --prompt-tokens "$n" --gen-tokens 16 --kv-type "$kv" --json
    echo "[bench-context] $MODEL, $n tokens, $kv KV: llama-bench" >&2
    peak "llama-$n-$kv" "$LLAMA_BIN/llama-bench" -m "$FILE" -t "$THREADS" -r "$REPS" \
      -p "$n" -n 0 -b 2048 -ub 512 -fa 1 -ctk "$kv" -ctv "$kv" -o json
  done
done

python3 - "$out" "$MODEL" "$LENGTHS" "$KV_TYPES" <<'PY'
import json, statistics, sys
out, model, lengths, kv_types = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
print(f"{model}: prefill of an N-token prompt, medians; peak RSS of the whole process")
print("| tokens | KV | minerva tok/s | llama-bench tok/s | ratio | minerva peak MiB | llama-bench peak MiB |")
print("|---|---|---|---|---|---|---|")
for n in lengths:
    for kv in kv_types:
        ours = json.load(open(f"{out}/minerva-{n}-{kv}.json"))["prefill"]["tokens_per_second_median"]
        ref = json.load(open(f"{out}/llama-{n}-{kv}.json"))
        theirs = statistics.median(next(r for r in ref if r["n_prompt"] == int(n))["samples_ts"])
        rss = lambda name: int(open(f"{out}/{name}-{n}-{kv}.rss").read()) / 1024
        print(f"| {n} | {kv} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} | {rss('minerva'):.0f} | {rss('llama'):.0f} |")
PY
