#!/usr/bin/env bash
# Creates the reference Python environment used to generate Minerva's
# embedding fixtures (scripts/reference/make-embedding-fixtures.py):
#
#   scripts/reference/setup-python.sh          # -> <repo>/.venv (gitignored)
#   VENV=/some/dir scripts/reference/setup-python.sh
#
# Installs the fully pinned lock scripts/reference/requirements.txt with
# --no-deps (see the comment at its top for why torch's GPU-only extras are
# left out). Only PyPI is used (plus pip's configured find-links, if any).
#
# Idempotent: when the venv exists, was built from the same requirements.txt
# (sha256 stamp) and `import torch, sentence_transformers` works, it does
# nothing. Otherwise it (re)installs into the existing venv.
# Needs ~4.5 GB of disk; a fresh install takes ~2 minutes on a fast link.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
REQ="$HERE/requirements.txt"
PIP_VERSION="26.3"
STAMP="$VENV/.minerva-reference-requirements.sha256"

say() { printf '\033[1m[setup-python]\033[0m %s\n' "$*" >&2; }
die() { printf '[setup-python] error: %s\n' "$*" >&2; exit 1; }

want_sha="$(sha256sum "$REQ" | cut -d' ' -f1)"

smoke() {
  "$VENV/bin/python" - <<'EOF'
import torch, sentence_transformers, transformers, numpy
torch.set_num_threads(2)
x = torch.ones(2, 3) @ torch.ones(3, 2)
assert x.sum().item() == 12.0
print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"sentence-transformers {sentence_transformers.__version__}, "
      f"transformers {transformers.__version__}, numpy {numpy.__version__}")
EOF
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_sha" ] && versions="$(smoke 2>/dev/null)"; then
  say "up to date: $VENV ($versions)"
  exit 0
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$pyver" in
  3.10|3.11|3.12|3.13) ;;
  *) say "warning: lock resolved on CPython 3.11; $PYTHON is $pyver (wheels may be missing)";;
esac

if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV with $PYTHON ($pyver)"
  "$PYTHON" -m venv "$VENV"
fi

rm -f "$STAMP"
say "installing pip==$PIP_VERSION"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "pip==$PIP_VERSION"
say "installing $REQ (torch + CUDA libs are ~4 GB; this takes a while)"
start=$(date +%s)
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
  --no-deps --only-binary :all: -r "$REQ"
say "pip install took $(( $(date +%s) - start )) s"

smoke || die "smoke test failed: import torch/sentence_transformers does not work in $VENV"
echo "$want_sha" > "$STAMP"
say "ready: $VENV ($(du -sh "$VENV" | cut -f1))"
