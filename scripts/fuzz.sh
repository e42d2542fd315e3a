#!/usr/bin/env bash
# Fuzzes Minerva's input parsers with cargo fuzz (libFuzzer, AddressSanitizer): the GGUF
# reader and validator, the safetensors header reader, the Modelfile parser, model ids
# (which become file names), the chat-template renderer on hostile templates, the
# streaming detokenizer's UTF-8 assembly, the prefix cache's matching and eviction, a
# sentence-transformers model directory (config readers, safetensors, tokenizer, load
# and a pass), and every route's request parsing through the real router. Built with
# debug assertions and overflow checks. Each target starts from its committed seed corpus
# (fuzz/corpus/TARGET: real headers, hostile cases of the tests) and writes what it
# finds to target/fuzz-corpus/TARGET; a crash stops the run with the input saved under
# fuzz/artifacts/TARGET/ (fix it, and add a regression test named after it).
#   scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
# The test suite runs every target for 30 s. cargo-fuzz is installed from crates.io when
# missing; the machine's stable toolchain builds the sanitizer flags (RUSTC_BOOTSTRAP).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf safetensors_header modelfile model_id chat_template utf8_stream prefix_cache embedding_dir routes)
say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

summary=()
for target in "${TARGETS[@]}"; do
  mkdir -p "target/fuzz-corpus/$target"
  say "$target for ${SECONDS_PER_TARGET}s"
  log="target/fuzz-$target.log"
  rc=0
  (cd fuzz && cargo fuzz run --release --debug-assertions "$target" "../target/fuzz-corpus/$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
      -print_final_stats=1) > "$log" 2>&1 || rc=$?
  # The embedding_dir and routes targets keep a model directory and a server home in
  # the temporary directory (libFuzzer exits without destructors).
  rm -rf "${TMPDIR:-/tmp}"/minerva-fuzz-*
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  if [ "$rc" -ne 0 ]; then
    say "$target FAILED (exit $rc):"
    grep -E "ERROR|panicked|Test unit written|SUMMARY" "$log" | head -20 >&2
    exit 1
  fi
  summary+=("$target: $runs executions in ${SECONDS_PER_TARGET}s, no crash")
done
for line in "${summary[@]}"; do say "$line"; done
