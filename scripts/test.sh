#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: set-up (packages, models, build), then
# formatting, dependency policy (cargo deny), and every unit and end-to-end test on the
# real models in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[test]\033[0m %s\n' "$*" >&2; }

scripts/setup.sh

say "cargo fmt --check"
cargo fmt --all -- --check

if ! command -v cargo-deny >/dev/null; then
  say "installing cargo-deny"
  cargo install cargo-deny --locked
fi
say "cargo deny check (bans: no openssl/md5/ring/quick-js; licenses; sources)"
cargo deny check bans licenses sources

say "cargo test --release --workspace"
cargo test --release --locked --workspace

say "the official OpenAI Python client against minerva serve"
scripts/test-openai-client.sh
