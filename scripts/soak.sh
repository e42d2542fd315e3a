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

[ -x "$BIN" ] || { say "no binary at $BIN (cargo build --release --bin minerva)"; exit 1; }
for m in smollm2-135m-instruct.gguf gemma-3-270m.gguf all-minilm-l6-v2; do
  [ -e "$MODELS/$m" ] || { say "$MODELS/$m is missing: run scripts/fetch-models.sh"; exit 1; }
done

home="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$home"
}
trap cleanup EXIT
# Hard links: no copy of the weights (the same filesystem as the default home).
mkdir -p "$home/models"
cp -al "$MODELS/." "$home/models/" 2>/dev/null || cp -a "$MODELS/." "$home/models/"

log="$home/server.log"
say "minerva serve, budget $BUDGET, $CLIENTS clients for ${DURATION}s"
MINERVA_HOME="$home" "$BIN" serve --addr 127.0.0.1:0 --memory-budget "$BUDGET" \
  --max-queued 256 --keep-alive 30s --preload off --warm-start 0 > "$log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 300); do
  port="$(sed -n 's/.*minerva listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)"
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || { say "the server exited:"; tail -20 "$log" >&2; exit 1; }
  sleep 0.2
done
[ -n "$port" ] || { say "the server did not say where it listens"; exit 1; }
until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { say "the server exited:"; tail -20 "$log" >&2; exit 1; }
  sleep 0.2
done

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
