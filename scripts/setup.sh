#!/usr/bin/env bash
# Everything a fresh Debian machine needs to build and run Minerva: system packages,
# the Rust toolchain (if missing), the default models, and a release build.
#   scripts/setup.sh            # install + fetch models + build
# Idempotent: a second run checks and does (almost) nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# System packages: cmake and libclang for llama.cpp's build and bindgen, a C++ compiler,
# Python's pip for the model packages.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v unzip >/dev/null || need+=(unzip)
command -v python3 >/dev/null || need+=(python3 python3-pip)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  say "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

if ! command -v cargo >/dev/null; then
  say "installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

scripts/fetch-models.sh

say "building minerva (release)"
cargo build --release --locked --bin minerva
say "ready: target/release/minerva"
