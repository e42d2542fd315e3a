#!/usr/bin/env bash
# Serving benchmark, side by side in one run: llama.cpp's `llama-server` (built from the
# same llama.cpp source as our engine, scripts/reference/build-llama-cpp.sh with
# LLAMA_REF_SERVER=1) in its default slot setting (--parallel 4) and tuned to the load
# (--parallel N), against `minerva serve` in its default configuration, on the same GGUF
# file with the same threads. The load generator (scripts/bench-serving.py) runs:
#   N = 1, 4, 8, 16 concurrent chat clients (short questions, 128 tokens, temperature 0)
#   8 requests at once sharing a ~400-token system prompt: cold, then warm
# and the table shows medians of REPS runs and the ratios to llama-server. Minerva runs as
# a real server lives, with the other default models (gemma-3-270m, all-minilm-l6-v2)
# loaded beside the benchmarked one and a keep-alive that keeps them there.
# Then the copy-heavy workload (one client repeating, reformatting and quoting text of its
# prompt, 256 tokens): llama-server without and with its n-gram speculative decoding
# (--spec-type ngram-simple) against Minerva with its prompt-lookup drafts off
# (--draft-max 0) and on (the default), single-stream decode tok/s, and whether the
# answers' text is the same.
# Then what monitoring costs: Minerva at N = 8 with its per-request histograms, /metrics
# recorder and dashboard figures (the default) and without them (--no-monitoring),
# alternating, aggregate tok/s medians.
# Then the co-location table (scripts/bench-colocation.py): the model's decode speed alone,
# beside one and two idle models and beside a busy one, and the server's idle CPU.
# llama-server is built with llama.cpp's own compiler flags, as its users build it. The
# optional part "flags" (not in the default PARTS) adds llama-server tuned built with
# Minerva's flags too (LLAMA_REF_MINERVA_FLAGS=1: -mno-avx512fp16, see .cargo/config.toml)
# at each N and the copy workload, to show how much of a difference is that flag.
#   scripts/bench-serving.sh
#   THREADS=2 REPS=3 CLIENTS="1 4 8 16" ROUNDS=2 scripts/bench-serving.sh
#   PARTS="copy" scripts/bench-serving.sh     (any of: serving copy overhead colocation flags)
# Servers listen on 127.0.0.1 only and are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
CLIENTS="${CLIENTS:-1 4 8 16}"
ROUNDS="${ROUNDS:-2}"
PORT="${PORT:-18080}"
PARTS="${PARTS:-serving copy overhead colocation}"
part() { [[ " $PARTS " == *" $1 "* ]]; }
MODEL_ID=smollm2-135m-instruct
MODELS_DIR="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
MODEL_FILE="$MODELS_DIR/$MODEL_ID.gguf"
[ -f "$MODEL_FILE" ] || { echo "$MODEL_FILE is missing: run scripts/fetch-models.sh" >&2; exit 1; }

LLAMA_BIN="$(LLAMA_REF_SERVER=1 scripts/reference/build-llama-cpp.sh | tail -1)"
if part flags; then
  LLAMA_FLAGS_BIN="$(LLAMA_REF_SERVER=1 LLAMA_REF_MINERVA_FLAGS=1 scripts/reference/build-llama-cpp.sh | tail -1)"
fi
cargo build --release --locked --bin minerva >&2
out="$(mktemp -d)"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap 'stop_server; rm -rf "$out"' EXIT

wait_ready() {
  for _ in $(seq 1 300); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "the server exited; log:" >&2; tail -20 "$out/server.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "the server did not become ready" >&2
  exit 1
}

# run LABEL LOADGEN-ARGS -- SERVER-COMMAND...
run() {
  local label="$1"; shift
  local script=scripts/bench-serving.py
  if [ "$label" = colocation ]; then script=scripts/bench-colocation.py; fi
  local load=()
  while [ "$1" != "--" ]; do load+=("$1"); shift; done
  shift
  echo "[bench-serving] $label: $*" >&2
  "$@" > "$out/server.log" 2>&1 &
  server_pid=$!
  wait_ready
  if [ "$label" = colocation ]; then
    python3 "$script" --port "$PORT" --pid "$server_pid" --model "$MODEL_ID" \
      --reps "$REPS" --rounds "$ROUNDS" "${load[@]}" | tee -a "$out/colocation.jsonl" >&2
  else
    python3 "$script" --port "$PORT" --model "$MODEL_ID" --label "$label" \
      --reps "$REPS" --rounds "$ROUNDS" "${load[@]}" | tee -a "$out/results.jsonl" >&2
  fi
  stop_server
}

llama_server() { # PARALLEL
  # exec: the background job's PID is the server's, so stop_server stops it (a leftover
  # server would keep the port and the CPU for the next run).
  exec "${LLAMA_SERVER_BIN:-$LLAMA_BIN}/llama-server" -m "$MODEL_FILE" -t "$THREADS" --parallel "$1" \
    --host 127.0.0.1 --port "$PORT" --alias "$MODEL_ID" --no-webui "${@:2}"
}

minerva_server() {
  exec target/release/minerva serve --addr "127.0.0.1:$PORT" --threads "$THREADS" --keep-alive=-1 "$@"
}
: > "$out/results.jsonl"
: > "$out/colocation.jsonl"

if part serving; then
  # shellcheck disable=SC2086
  run "llama-server --parallel 4" --clients $CLIENTS --burst -- llama_server 4
  for n in $CLIENTS; do
    [ "$n" = 4 ] && continue
    run "llama-server tuned" --clients "$n" -- llama_server "$n"
  done
  # tuned for N=4 is the default setting
  grep '"N=4"' "$out/results.jsonl" | sed 's/"llama-server --parallel 4"/"llama-server tuned"/' >> "$out/results.jsonl" || true
  run "llama-server tuned" --burst -- llama_server 8
  # shellcheck disable=SC2086
  run "minerva" --clients $CLIENTS --burst --load gemma-3-270m all-minilm-l6-v2 -- minerva_server
fi
if part copy; then
  run "llama-server" --copy -- llama_server 1
  run "llama-server ngram" --copy -- llama_server 1 --spec-type ngram-simple
  run "minerva draft off" --copy --load gemma-3-270m all-minilm-l6-v2 -- minerva_server --draft-max 0
  run "minerva" --copy --load gemma-3-270m all-minilm-l6-v2 -- minerva_server
fi
if part flags; then
  for n in $CLIENTS; do
    LLAMA_SERVER_BIN="$LLAMA_FLAGS_BIN" run "llama-server tuned, Minerva's flags" --clients "$n" -- llama_server "$n"
  done
  LLAMA_SERVER_BIN="$LLAMA_FLAGS_BIN" run "llama-server, Minerva's flags" --copy -- llama_server 1
fi
if part overhead; then
  # Alternating, one run each per repetition, so that a drift of the machine hits both.
  for _ in $(seq 1 "$REPS"); do
    REPS=1 run "monitoring on" --clients 8 --load gemma-3-270m all-minilm-l6-v2 -- minerva_server
    REPS=1 run "monitoring off" --clients 8 --load gemma-3-270m all-minilm-l6-v2 -- minerva_server --no-monitoring
  done
fi
if part colocation; then
  # The co-location run states which models are loaded itself.
  run colocation --clients 1 8 -- minerva_server --preload off
fi

python3 - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
overhead = [r for r in rows if r["label"].startswith("monitoring ")]
rows = [r for r in rows if not r["label"].startswith("monitoring ")]
def med(label, scenario, key):
    vals = [r[key] for r in rows if r["label"] == label and r["scenario"] == scenario]
    return statistics.median(vals) if vals else float("nan")
scenarios = []
for r in rows:
    if r["scenario"] not in scenarios and not r["scenario"].startswith("copy"):
        scenarios.append(r["scenario"])
scenarios.sort(key=lambda s: (not s.startswith("N="), int(s[2:]) if s.startswith("N=") else s))
systems = [("llama-server --parallel 4", "llama p4"), ("llama-server tuned", "llama tuned"), ("minerva", "minerva")]
def serving_table():
    print("Medians of runs; tok/s = aggregate generated tokens per second; TTFT and latency in seconds.")
    print()
    head = "| scenario |"
    for _, short in systems:
        head += f" {short} tok/s | {short} TTFT mean | {short} TTFT p95 | {short} latency |"
    head += " tok/s vs tuned | TTFT p95 vs p4 | TTFT mean vs p4 | TTFT mean vs tuned |"
    print(head)
    print("|" + "---|" * (1 + 4 * len(systems) + 4))
    for s in scenarios:
        line = f"| {s} |"
        for label, _ in systems:
            line += " {:.1f} | {:.3f} | {:.3f} | {:.2f} |".format(*(med(label, s, k) for k in ("tok_s", "ttft_mean", "ttft_p95", "latency_mean")))
        ratio = lambda a, b: a / b if b == b and b > 0 else float("nan")
        line += " {:.2f}x | {:.2f}x | {:.2f}x | {:.2f}x |".format(
            ratio(med("minerva", s, "tok_s"), med("llama-server tuned", s, "tok_s")),
            ratio(med("minerva", s, "ttft_p95"), med("llama-server --parallel 4", s, "ttft_p95")),
            ratio(med("minerva", s, "ttft_mean"), med("llama-server --parallel 4", s, "ttft_mean")),
            ratio(med("minerva", s, "ttft_mean"), med("llama-server tuned", s, "ttft_mean")),
        )
        print(line)
if scenarios:
    serving_table()
flagged = "llama-server tuned, Minerva's flags"
if any(r["label"] == flagged for r in rows):
    print()
    print("llama-server tuned built with Minerva's compiler flags (-mno-avx512fp16), medians:")
    print()
    print("| scenario | llama tuned tok/s | llama tuned, Minerva's flags tok/s | minerva tok/s | minerva vs llama with Minerva's flags | TTFT mean: llama with Minerva's flags / minerva | TTFT mean vs it |")
    print("|---|---|---|---|---|---|---|")
    ratio = lambda a, b: a / b if b == b and b > 0 else float("nan")
    for s in scenarios:
        if not s.startswith("N="):
            continue
        a, b, m = (med(l, s, "tok_s") for l in ("llama-server tuned", flagged, "minerva"))
        tb, tm = med(flagged, s, "ttft_mean"), med("minerva", s, "ttft_mean")
        print(f"| {s} | {a:.1f} | {b:.1f} | {m:.1f} | {ratio(m, b):.2f}x | {tb:.3f} / {tm:.3f} | {ratio(tm, tb):.2f}x |")
if overhead:
    on = [r["tok_s"] for r in overhead if r["label"] == "monitoring on"]
    off = [r["tok_s"] for r in overhead if r["label"] == "monitoring off"]
    print()
    print(f"What monitoring costs, N=8, aggregate tok/s ({len(on)} and {len(off)} runs, alternating):")
    print()
    print("| minerva | runs | median tok/s | min | max |")
    print("|---|---|---|---|---|")
    for label, vals in (("monitoring on (default)", on), ("--no-monitoring", off)):
        print(f"| {label} | {len(vals)} | {statistics.median(vals):.1f} | {min(vals):.1f} | {max(vals):.1f} |")
    print()
    print(f"on / off: {statistics.median(on) / statistics.median(off):.3f}x")
copies = [r for r in rows if r["scenario"] == "copy N=1"]
if copies:
    print()
    print("Copy-heavy workload, one client, 256 tokens, temperature 0: single-stream decode tok/s (medians).")
    print()
    labels = ["llama-server", "llama-server ngram", "minerva draft off", "minerva"]
    if any(r["label"] == "llama-server, Minerva's flags" for r in copies):
        labels.insert(2, "llama-server, Minerva's flags")
    decode = {l: statistics.median([r["decode_tok_s"] for r in copies if r["label"] == l] or [float("nan")]) for l in labels}
    ttft = {l: statistics.median([r["ttft_mean"] for r in copies if r["label"] == l] or [float("nan")]) for l in labels}
    digest = {l: {r["text_digest"] for r in copies if r["label"] == l} for l in labels}
    print("| system | decode tok/s | TTFT mean | minerva vs it | same text as minerva |")
    print("|---|---|---|---|---|")
    for l in labels:
        ratio = decode["minerva"] / decode[l] if decode[l] == decode[l] and decode[l] > 0 else float("nan")
        same = "yes" if digest[l] and digest[l] == digest["minerva"] else "no"
        print(f"| {l} | {decode[l]:.1f} | {ttft[l]:.3f} | {ratio:.2f}x | {same} |")
PY
if part colocation; then
  echo
  echo "Co-location: $MODEL_ID's decode speed beside the other default models (medians of $REPS runs)"
  echo
  python3 scripts/bench-colocation.py --table "$out/colocation.jsonl"
fi
