#!/usr/bin/env bash
# Soak: `minerva serve` under a mixed load for a while, with a memory budget that holds two
# of the three default models (so eviction and reloads happen all the time), in a
# temporary MINERVA_HOME whose models are hard links to the default ones.
#   scripts/soak.sh [DURATION_SECONDS=300] [CLIENTS=64]
# The load (scripts/soak.py): streamed and plain chats on SmolLM2, completions on Gemma 3,
# embeddings (one input and batches), tokenize, load/unload and keep_alive 0, a fifth of
# the streams dropped by their client after the first chunk. Prints requests by status,
# p50/p99 latency per route, RSS and open descriptors every 10 s, and fails on an error
# other than the designed 429/503, on RSS growth (runs of 3 minutes or more) or on
# descriptors left open. The JSON report is kept as target/soak-report.json.
# The test suite runs `scripts/soak.sh 60 32`.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-300}"
CLIENTS="${2:-64}"
BUDGET="${SOAK_BUDGET:-800MiB}"
BIN="${MINERVA_BIN:-target/release/minerva}"
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
say() { printf '\033[1m[soak]\033[0m %s\n' "$*" >&2; }

source scripts/lib.sh
[ -x "$BIN" ] || { say "no binary at $BIN (cargo build --release --bin minerva)"; exit 1; }
require_default_models

say "minerva serve, budget $BUDGET, $CLIENTS clients for ${DURATION}s"
serve_in_temp_home --memory-budget "$BUDGET" --max-queued 256 --keep-alive 30s --preload off --warm-start 0

mkdir -p target
rc=0
python3 scripts/soak.py --port "$port" --pid "$pid" --duration "$DURATION" --clients "$CLIENTS" > target/soak-report.json || rc=$?
if ! kill -0 "$pid" 2>/dev/null; then
  say "the server died during the soak:"; tail -30 "$log" >&2; exit 1
fi
if grep -q "panicked" "$log"; then
  say "the server panicked:"; grep -m5 -A5 "panicked" "$log" >&2; exit 1
fi
say "report: target/soak-report.json"
exit "$rc"
