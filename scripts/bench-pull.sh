#!/usr/bin/env bash
# Pull throughput beside curl, in one run, on the same file from the same local server:
#   scripts/bench-pull.sh [MODEL_FILE] [RUNS]
# A local HTTP server (Python's http.server) serves MODEL_FILE (default: the Gemma 3 GGUF
# of the default models); each run times `minerva pull URL --sha256 …` (download, SHA-256,
# registration) into a fresh MINERVA_HOME, `curl -o` alone, and `curl -o` followed by
# `sha256sum` (what a user does by hand). Prints medians and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS_DIR="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
FILE="${1:-$MODELS_DIR/gemma-3-270m.gguf}"
RUNS="${2:-5}"
PORT="${PORT:-18471}"
cargo build --release --locked --bin minerva >&2
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www"
ln "$FILE" "$work/www/model.gguf" 2>/dev/null || cp "$FILE" "$work/www/model.gguf"
sha=$(sha256sum "$work/www/model.gguf" | cut -d' ' -f1)
bytes=$(stat -c %s "$work/www/model.gguf")
(cd "$work/www" && exec python3 -m http.server "$PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
server_pid=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
url="http://127.0.0.1:$PORT/model.gguf"

seconds() { local start end; start=$(date +%s.%N); "$@" >/dev/null 2>&1; end=$(date +%s.%N); awk -v a="$start" -v b="$end" 'BEGIN {print b - a}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
: >"$work/minerva"; : >"$work/curl"; : >"$work/curl_sha"
for run in $(seq "$RUNS"); do
  rm -rf "$work/home" "$work/out.gguf"
  MINERVA_HOME="$work/home" seconds target/release/minerva pull "$url" --sha256 "$sha" --as "bench-$run" >>"$work/minerva"
  seconds curl -sf -o "$work/out.gguf" "$url" >>"$work/curl"
  rm -f "$work/out.gguf"
  seconds sh -c "curl -sf -o '$work/out.gguf' '$url' && sha256sum '$work/out.gguf'" >>"$work/curl_sha"
done
m=$(median <"$work/minerva"); c=$(median <"$work/curl"); cs=$(median <"$work/curl_sha")
mbs() { awk -v b="$bytes" -v s="$1" 'BEGIN {printf "%.1f", b / 1e6 / s}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo
echo "### Pull throughput: $(basename "$FILE") ($((bytes / 1000000)) MB) from a local http.server, medians of $RUNS runs"
echo
echo "| client | seconds | MB/s | minerva's time / this |"
echo "|---|---|---|---|"
printf '| minerva pull (download, SHA-256, register) | %.3f | %s | 1.00x |\n' "$m" "$(mbs "$m")"
printf '| curl -o | %.3f | %s | %sx |\n' "$c" "$(mbs "$c")" "$(ratio "$m" "$c")"
printf '| curl -o && sha256sum | %.3f | %s | %sx |\n' "$cs" "$(mbs "$cs")" "$(ratio "$m" "$cs")"
echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
