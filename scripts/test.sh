#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: set-up (packages, models, build), then
# formatting, dependency policy (cargo deny), every unit and end-to-end test on the real
# models in release mode, the runtime's tests again in the debug profile, and the official
# OpenAI and Ollama clients, the dashboard in headless Chromium, schemathesis against the
# published API schema, and a one-minute soak against the server; then half a minute of
# fuzzing per parser. Each step's line gives the seconds elapsed since the start, so a CI
# log shows where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
say() { printf '\033[1m[test %5ss]\033[0m %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

scripts/setup.sh
# Redis and HAProxy, which the tests of the shared embedding cache and of load balancing
# start on loopback ports.
scripts/install-services.sh

say "cargo fmt --check"
cargo fmt --all -- --check

if ! command -v cargo-deny >/dev/null; then
  say "installing cargo-deny"
  cargo install cargo-deny --locked
fi
say "cargo deny check (bans: no openssl/md5/ring/quick-js; licenses; sources)"
cargo deny check bans licenses sources

say "cargo test --release --workspace"
cargo test --release --locked --workspace --no-fail-fast

# The debug profile has debug assertions and overflow checks everywhere, as a newcomer's
# `cargo run` does: the runtime (scheduler, pool, registry) must hold up there too.
say "cargo test -p minerva-store -p minerva-workers -p minerva-pool (debug profile)"
cargo test --locked -p minerva-store -p minerva-workers -p minerva-pool

say "the official OpenAI and Ollama Python clients against minerva serve"
scripts/test-openai-client.sh

say "deployment files: Kubernetes overlays rendered and validated offline, HAProxy"
scripts/check-deploy.sh
say "the Containerfile's runtime stage in a debootstrap chroot, serving the default models"
scripts/check-image.sh

# A short soak (the long one: scripts/soak.sh 300 64): mixed load on three models under a
# budget that holds two, clients leaving mid-stream; no error but the designed 429/503,
# no descriptor left open.
say "schemathesis against /openapi.json: 120 s"
scripts/schemathesis.sh 120 25

# Chaos (the long one: scripts/chaos.sh 20): SIGKILL during imports, pulls, loads and a
# shutdown with an embedding-cache file, each followed by verify and a restart; a full
# disk and a read-only models directory on a tmpfs.
say "chaos: 8 rounds"
scripts/chaos.sh 8

say "soak: 60 s, 32 clients"
scripts/soak.sh 60 32

# Fuzz smoke runs (long ones: scripts/fuzz.sh 3600): the GGUF reader, the safetensors
# header reader, the Modelfile parser and model ids, 30 s each.
say "fuzz: 30 s per target"
scripts/fuzz.sh 30
say "done"
