#!/usr/bin/env bash
# What the shared embedding cache buys a cluster: two `minerva serve` replicas on one
# redis-server (loopback). N distinct sentences are embedded one request at a time on
# replica A (computed, then written to Redis), again on A (its own cache), then on
# replica B (a miss in its own cache, a hit in Redis); prints the median and p95 latency
# of each pass, and the ratio of each to computing. A loopback Redis: across machines add
# the network's round trip to the Redis pass.
# Then the hit rate on a Zipf workload (Z requests over a vocabulary of sentences, each
# request sent to either replica at random): two replicas with Redis, two replicas each
# with only its own cache, and one replica taking the whole workload.
#   scripts/bench-shared-cache.sh [N=300] [Z=3000]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-300}"
Z="${2:-3000}"
BIN="${MINERVA_BIN:-target/release/minerva}"
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
say() { printf '\033[1m[bench-shared-cache]\033[0m %s\n' "$*" >&2; }
source scripts/lib.sh
require_default_models
scripts/install-services.sh
[ -x "$BIN" ] || cargo build --release --locked --bin minerva >&2

work="$(mktemp -d)"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!)
ports=()
# a and b share Redis; c and d (and c alone) have only their own caches.
for replica in a b c d; do
  port="$(free_port)"
  mkdir -p "$work/$replica"
  ln -s "$MODELS" "$work/$replica/models"
  shared=()
  case "$replica" in a|b) shared=(--embedding-cache "redis://127.0.0.1:$redis_port/0") ;; esac
  MINERVA_HOME="$work/$replica" "$BIN" serve --addr "127.0.0.1:$port" --offline --preload off --warm-start 0 \
    "${shared[@]}" > "$work/$replica.log" 2>&1 &
  pids+=($!)
  ports+=("$port")
done

python3 - "$N" "$Z" "${ports[@]}" <<'PY'
import json, random, statistics, sys, time, urllib.request

n, z, a, b, c, d = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:7]

def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        vector = json.load(r)["data"][0]["embedding"]
    return (time.perf_counter() - started) * 1e3, vector

def wait(port):
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"replica on {port} did not start")

for port in (a, b, c, d):
    wait(port)
    post(port, {"model": "all-minilm-l6-v2", "input": "warm-up: load the model"})
sentences = [f"Sentence {i}: the shared cache keeps vector number {i} for every replica." for i in range(n)]

def run(port):
    times, vectors = [], []
    for s in sentences:
        ms, v = post(port, {"model": "all-minilm-l6-v2", "input": s})
        times.append(ms)
        vectors.append(v)
    return times, vectors

computed, va = run(a)
time.sleep(0.5)  # the background writes to Redis land
local, _ = run(a)
shared, vb = run(b)
assert va == vb, "a Redis hit differs from the computed vector"
stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{b}/v1/embeddings/stats"))["cache"]["shared"]
assert stats["hits"] >= n, stats

def p95(xs):
    return sorted(xs)[int(0.95 * (len(xs) - 1))]

base = statistics.median(computed)
print(f"{n} single-sentence requests, all-MiniLM-L6-v2, Redis on loopback")
print(f"{'pass':<34}{'median ms':>10}{'p95 ms':>9}{'vs computed':>13}")
for name, xs in [("computed (replica A)", computed), ("own cache (replica A again)", local),
                 ("Redis hit (replica B)", shared)]:
    print(f"{name:<34}{statistics.median(xs):>10.2f}{p95(xs):>9.2f}{statistics.median(xs) / base:>12.2f}x")
print(f"replica B: {stats['hits']} Redis hits, {stats['misses']} misses, {stats['errors']} errors; vectors identical")

# Zipf: request i names sentence k with probability proportional to 1/k^1.1, over a
# vocabulary of z sentences (seeded, so every setup sees the same sequence).
rng = random.Random(7)
vocabulary = [f"Zipf sentence {k}: a query a user may well send again." for k in range(z)]
weights = [1 / (k + 1) ** 1.1 for k in range(z)]
workload = rng.choices(range(z), weights, k=z)
sides = [rng.random() < 0.5 for _ in workload]

def counters(port):
    cache = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/embeddings/stats"))["cache"]
    shared = cache.get("shared") or {"hits": 0}
    return cache["hits"], shared["hits"]

def play(ports):
    before = [counters(p) for p in ports]
    for k, side in zip(workload, sides):
        post(ports[side % len(ports)], {"model": "all-minilm-l6-v2", "input": vocabulary[k]})
    after = [counters(p) for p in ports]
    local = sum(x[0] - y[0] for x, y in zip(after, before))
    shared = sum(x[1] - y[1] for x, y in zip(after, before))
    return local, shared

distinct = len(set(workload))
print(f"\nZipf (s = 1.1): {z} requests over {z} sentences, {distinct} distinct (the best any cache can do: "
      f"{1 - distinct / z:.1%} hits); each request to either replica at random")
print(f"{'setup':<40}{'own-cache hits':>15}{'Redis hits':>12}{'hit rate':>10}")
for name, ports in [("two replicas sharing Redis", (a, b)), ("two replicas, own caches only", (c, d)),
                    ("one replica alone", (c,))]:
    if name == "one replica alone":
        # c has seen the previous pass: send a fresh vocabulary through it.
        vocabulary = [v.replace("Zipf sentence", "Zipf query") for v in vocabulary]
    local, shared = play(ports)
    print(f"{name:<40}{local:>15}{shared:>12}{(local + shared) / z:>10.1%}")
PY
