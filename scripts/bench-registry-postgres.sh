#!/usr/bin/env bash
# What the shared registry costs against the embedded one: `minerva bench registry` on a
# fresh SQLite file and on a throwaway PostgreSQL (loopback, default durability settings),
# both filled with the default models and a lived-in access log; prints p50/p95 of the
# calls a load and a request make, and the ratio. Across machines, add the network's
# round trip to each PostgreSQL call.
#   scripts/bench-registry-postgres.sh [CALLS=400]
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS="${1:-400}"
BIN="${MINERVA_BIN:-target/release/minerva}"
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
say() { printf '\033[1m[bench-registry-postgres]\033[0m %s\n' "$*" >&2; }
source scripts/lib.sh
require_default_models
scripts/install-services.sh
[ -x "$BIN" ] || cargo build --release --locked --bin minerva >&2

work="$(mktemp -d)"
trap 'stop_postgres "$work/pg"; rm -rf "$work"' EXIT
start_postgres "$work/pg"
say "PostgreSQL at ${pg_url/:minerva-bench@/@}; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
mkdir -p "$work/home"
ln -s "$MODELS" "$work/home/models"
MINERVA_HOME="$work/home" "$BIN" bench registry --against "$pg_url" --calls "$CALLS"
