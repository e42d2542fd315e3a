#!/usr/bin/env bash
# Chaos: SIGKILL at random moments of an import, a pull (from a local HTTP server that
# sends the file slowly), a model load and a server stopping with an embedding-cache file,
# each followed by the checks a user would make (minerva verify, the listing against the
# files, no temporary data left, a restarted server answering); then a full disk and a
# read-only models directory on a tmpfs (when the process may mount one: root).
#   scripts/chaos.sh [ROUNDS=20] [SEED=1]
# The test suite runs `scripts/chaos.sh 8`.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${1:-20}"
SEED="${2:-1}"
BIN="$(realpath "${MINERVA_BIN:-target/release/minerva}")"
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
say() { printf '\033[1m[chaos]\033[0m %s\n' "$*" >&2; }

[ -x "$BIN" ] || { say "no binary at $BIN (cargo build --release --bin minerva)"; exit 1; }
for m in smollm2-135m-instruct.gguf gemma-3-270m.gguf all-minilm-l6-v2; do
  [ -e "$MODELS/$m" ] || { say "$MODELS/$m is missing: run scripts/fetch-models.sh"; exit 1; }
done
say "$ROUNDS rounds (import, pull, load, cache in turn), seed $SEED"
mkdir -p target
python3 scripts/chaos.py --bin "$BIN" --models "$MODELS" --rounds "$ROUNDS" --seed "$SEED" | tee target/chaos-report.txt
