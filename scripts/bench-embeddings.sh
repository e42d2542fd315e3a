#!/usr/bin/env bash
# Minerva's embeddings beside sentence-transformers on the same all-MiniLM-L6-v2
# directory, in one run (scripts/bench-embeddings.py says what is measured):
#   scripts/bench-embeddings.sh
#   RUNS=5 CLIENTS=16 scripts/bench-embeddings.sh
# The reference venv comes from scripts/reference/setup-python.sh (VENV=... to reuse one).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
CLIENTS="${CLIENTS:-8}"
PORT="${PORT:-18431}"
VENV="${VENV:-$PWD/.venv}"
MODELS_DIR="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
MODEL=all-minilm-l6-v2

VENV="$VENV" scripts/reference/setup-python.sh >&2
cargo build --release --locked --bin minerva >&2
out="$(mktemp -d)"
server_pid=""
cleanup() {
  for pid in "$server_pid" "${reduced_pids[@]}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$out"
}
trap cleanup EXIT

# Throughput is measured without the cache (repeated runs would be hits); the Zipf
# workload starts its own servers with the default cache.
target/release/minerva serve --addr "127.0.0.1:$PORT" --embedding-cache-bytes 0 2>"$out/server.log" &
server_pid=$!
# The reduced-precision paths beside it: int8 everywhere (VNNI where the CPU has it),
# bf16 where the CPU has AVX512-BF16.
dtypes=(int8)
if grep -q avx512_bf16 /proc/cpuinfo; then dtypes+=(bf16); fi
reduced_args=()
reduced_pids=()
offset=10
for dtype in "${dtypes[@]}"; do
  target/release/minerva serve --addr "127.0.0.1:$((PORT + offset))" --embedding-cache-bytes 0 \
    --embedding-dtype "$dtype" 2>"$out/server-$dtype.log" &
  reduced_pids+=($!)
  reduced_args+=(--dtype-port "$dtype=$((PORT + offset))")
  offset=$((offset + 10))
done

"$VENV/bin/python" scripts/bench-embeddings.py \
  --model-dir "$MODELS_DIR/$MODEL" --model "$MODEL" --minerva target/release/minerva \
  --port "$PORT" --cache-port "$((PORT + 1))" --sentences-file "$out/sentences.json" \
  --runs "$RUNS" --clients "$CLIENTS" "${reduced_args[@]}"

# How far from the machine's limit: the encoder's rate beside the f32 matrix-product rate
# on the model's own shapes, and each dtype's cosine to sentence-transformers.
echo
echo "### The encoder against the machine's matrix-product rate (\`minerva bench embed\`)"
echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) threads;" \
  "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|avx512_vnni|avx_vnni|amx_bf16|amx_int8|amx_tile)$' | tr '\n' ' ')"
echo
for dtype in f32 "${dtypes[@]}"; do
  target/release/minerva bench embed -m "$MODEL" --dtype "$dtype" \
    --reference crates/minerva-engine/tests/fixtures/embeddings/all-minilm-l6-v2.json
  echo
done
