#!/usr/bin/env bash
# The portable release: a `minerva` that runs on any x86-64 from v2 (SSE4.2, POPCNT) up.
# Rust code is built for x86-64-v2; llama.cpp's CPU kernels are built once per CPU
# generation (ggml's GGML_CPU_ALL_VARIANTS: SSE4.2 … AVX2 … AVX-512 … AMX) as shared
# libraries, and ggml loads the best one for the CPU it finds (GGML_BACKEND_DL). The
# result is a directory to copy as a whole: the binary finds its libraries beside it
# (rpath $ORIGIN). `minerva doctor` says which variant was chosen.
#   scripts/build-portable.sh          -> target/portable/minerva-x86-64/
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[portable]\033[0m %s\n' "$*" >&2; }
build="target/portable-build"
out="target/portable/minerva-x86-64"
say "building (every CPU variant of ggml: this takes a while)"
CARGO_TARGET_DIR="$build" RUSTFLAGS="-C target-cpu=x86-64-v2 -C link-arg=-Wl,-rpath,\$ORIGIN" \
  cargo build --release --locked -p minerva-cli --features portable
rm -rf "$out"
mkdir -p "$out"
cp "$build/release/minerva" "$out/"
llama="$(ls -td "$build"/release/build/llama-cpp-sys-2-*/out | head -1)"
cp -a "$llama"/lib/lib*.so* "$llama"/backends/*.so "$out/"
# llama.cpp builds RelWithDebInfo (-O2: GCC 12 miscompiles its AMX kernels at -O3); the
# release directory does without the debug sections.
find "$out" -name '*.so*' -type f -exec strip --strip-debug {} +
strip --strip-debug "$out/minerva"
say "$out: $(ls "$out" | tr '\n' ' ')"
"$out/minerva" doctor --kernels-only
