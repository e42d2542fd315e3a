#!/usr/bin/env bash
# Runs the official OpenAI and Ollama Python clients, unmodified, against `minerva serve`,
# and the dashboard in headless Chromium (screenshots in target/test-artifacts/):
# a virtualenv at target/openai-venv with the pinned packages of
# tests/openai/requirements.txt (from PyPI), then pytest on tests/openai/.
# MINERVA_BIN names the binary under test (default target/release/minerva; build it with
# `cargo build --release --bin minerva`). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[openai-client]\033[0m %s\n' "$*" >&2; }
start=$(date +%s)

venv=target/openai-venv
req=tests/openai/requirements.txt
export MINERVA_BIN="${MINERVA_BIN:-target/release/minerva}"
MINERVA_BIN="$(realpath "$MINERVA_BIN")"
if [[ ! -x "$MINERVA_BIN" ]]; then
  say "no executable minerva binary at $MINERVA_BIN (cargo build --release --bin minerva)"
  exit 1
fi

# The dashboard's browser test drives Debian's Chromium through Debian's ChromeDriver
# (the same version, so nothing is fetched from the network).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  say "installing chromium and chromium-driver (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi

source scripts/lib.sh
ensure_venv "$venv" "$req"
say "$("$venv/bin/python" -c 'import openai, pytest; print(f"openai {openai.__version__}, pytest {pytest.__version__}")')"

say "pytest tests/openai (MINERVA_BIN=$MINERVA_BIN)"
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of tests/openai
rc=0
"$venv/bin/python" -m pytest tests/openai -v -p no:cacheprovider "$@" || rc=$?
say "finished in $(( $(date +%s) - start )) s (exit $rc)"
exit "$rc"
