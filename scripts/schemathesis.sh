#!/usr/bin/env bash
# Schemathesis (PyPI) against a live `minerva serve`: it reads /openapi.json and sends
# generated requests to every route, valid and invalid ones, checking that none gets a
# 5xx, that every response has a documented status, content type and a body matching the
# schema, and that invalid bodies are refused. The server runs in a temporary MINERVA_HOME
# whose models are hard links to the default ones (pulls, deletes and copies touch only
# it); after the run it must still answer /health and a chat, and its log must hold no
# panic.
#   scripts/schemathesis.sh [MAX_SECONDS=120] [MAX_EXAMPLES=25]
# The report (JUnit XML and the NDJSON of every case) is kept in target/schemathesis/.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_TIME="${1:-120}"
MAX_EXAMPLES="${2:-25}"
BIN="${MINERVA_BIN:-target/release/minerva}"
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
venv=target/schemathesis-venv
req=tests/schemathesis/requirements.txt
say() { printf '\033[1m[schemathesis]\033[0m %s\n' "$*" >&2; }

source scripts/lib.sh
[ -x "$BIN" ] || { say "no binary at $BIN (cargo build --release --bin minerva)"; exit 1; }
require_default_models
ensure_venv "$venv" "$req"

# Generation is capped so that a generated max_tokens of 10^18 costs a second, not hours:
# the run tests what the server accepts and answers, not how long it can write. Offline:
# a generated pull of a valid name ("if") must not reach a real registry (it would answer
# the designed 502 of an unreachable upstream); pulls are refused with a 400 instead, and
# tested against a local hub elsewhere.
serve_in_temp_home --offline --threads 1 --max-tokens 16 --request-timeout 60 --preload off --warm-start 0
base="http://127.0.0.1:$port"

rm -rf target/schemathesis && mkdir -p target/schemathesis
say "schemathesis $("$venv/bin/schemathesis" --version | awk '{print $NF}') against $base/openapi.json, ${MAX_TIME}s, at most $MAX_EXAMPLES cases per route"
rc=0
# /v1/monitor/events never ends (one snapshot a second); its shape is the one of
# /v1/monitor, which is tested.
"$venv/bin/schemathesis" run "$base/openapi.json" \
  --wait-for-schema 30 \
  --checks all \
  --exclude-checks positive_data_acceptance,ignored_auth \
  --exclude-path /v1/monitor/events \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --request-timeout 90 \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --workers 2 \
  --report junit,ndjson --report-dir target/schemathesis \
  || rc=$?

# The server must have come through it: alive, healthy, answering a chat, no panic.
if ! kill -0 "$pid" 2>/dev/null; then
  say "the server died during the run:"; tail -40 "$log" >&2; exit 1
fi
python3 - "$base" <<'PY' || { say "the server is not healthy after the run"; tail -40 "$log" >&2; exit 1; }
import json, sys, urllib.request
base = sys.argv[1]
with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
    assert r.status == 200
body = json.dumps({"model": "smollm2-135m-instruct", "max_tokens": 4,
                   "messages": [{"role": "user", "content": "Hi"}]}).encode()
req = urllib.request.Request(f"{base}/v1/chat/completions", body, {"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    reply = json.load(r)
assert reply["choices"][0]["message"]["content"] is not None
PY
if grep -q "panicked" "$log"; then
  say "the server log has a panic:"; grep -B2 -A8 "panicked" "$log" | head -60 >&2; exit 1
fi
cases="$(grep -c '"ScenarioFinished"' target/schemathesis/*.ndjson 2>/dev/null || echo '?')"
say "server healthy after the run (scenarios: $cases; reports in target/schemathesis/)"
exit "$rc"
