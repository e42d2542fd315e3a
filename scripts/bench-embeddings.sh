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
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$out"
}
trap cleanup EXIT

# Throughput is measured without the cache (repeated runs would be hits); the Zipf
# workload starts its own servers with the default cache.
target/release/minerva serve --addr "127.0.0.1:$PORT" --embedding-cache-bytes 0 2>"$out/server.log" &
server_pid=$!

"$VENV/bin/python" scripts/bench-embeddings.py \
  --model-dir "$MODELS_DIR/$MODEL" --model "$MODEL" --minerva target/release/minerva \
  --port "$PORT" --cache-port "$((PORT + 1))" --sentences-file "$out/sentences.json" \
  --runs "$RUNS" --clients "$CLIENTS"
