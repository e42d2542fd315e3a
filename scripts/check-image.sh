#!/usr/bin/env bash
# Checks the Containerfile's runtime stage where no container engine runs: a Debian
# bookworm root made with debootstrap (the image's base), the stage's RUN steps executed
# in it as written, this checkout's release binary copied where the stage's COPY puts it
# (the build stage is what scripts/setup.sh does on this Debian machine), then the image's
# ENTRYPOINT and CMD run in the chroot as the stage's USER with the default models under
# its volume: the server must answer /health, an embedding and a chat, and run as that
# user. Needs root (debootstrap, chroot, mounts); skipped otherwise. The root is kept in
# target/image-root and rebuilt when the Containerfile changes.
#   scripts/check-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${MINERVA_BIN:-target/release/minerva}"
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$PWD/target/image-root"
say() { printf '\033[1m[image]\033[0m %s\n' "$*" >&2; }

source scripts/lib.sh
if [ "$(id -u)" -ne 0 ]; then
  say "skipped: debootstrap, chroot and mounts need root"
  exit 0
fi
[ -x "$BIN" ] || { say "no binary at $BIN (cargo build --release --bin minerva)"; exit 1; }
require_default_models
command -v debootstrap >/dev/null || {
  say "installing debootstrap (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
}

# The final stage: everything after the last FROM, continuation lines joined.
stage="$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' Containerfile \
  | sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | grep -v '^\s*#')"
instruction() { printf '%s\n' "$stage" | sed -n "s/^$1 //p"; }
user="$(instruction USER | cut -d: -f1)"
home="$(instruction ENV | sed -n 's/^MINERVA_HOME=//p')"
dest="$(instruction COPY | awk '{print $NF}')"
entrypoint="$(instruction ENTRYPOINT | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))')"
cmd="$(instruction CMD | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))')"
[ -n "$user" ] && [ -n "$home" ] && [ -n "$dest" ] || { say "the Containerfile's runtime stage lacks USER, ENV MINERVA_HOME or COPY"; exit 1; }
[ "$user" != 0 ] && [ "$user" != root ] || { say "the image must not run as root"; exit 1; }

cleanup() {
  [ -n "${pid:-}" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  for m in "$root$home/models" "$root/proc" "$root/dev"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  return 0
}
trap cleanup EXIT

stamp="$(sha256sum Containerfile | cut -d' ' -f1)"
if [ "$(cat "$root/.containerfile.sha256" 2>/dev/null || true)" != "$stamp" ]; then
  rm -rf "$root"
  say "debootstrap bookworm (minbase) into $root"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" > target/image-debootstrap.log 2>&1 \
    || { tail -20 target/image-debootstrap.log >&2; exit 1; }
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  while IFS= read -r step; do
    say "RUN $step"
    chroot "$root" /bin/sh -ec "$step" > target/image-run.log 2>&1 || { tail -20 target/image-run.log >&2; exit 1; }
  done < <(instruction RUN)
  echo "$stamp" > "$root/.containerfile.sha256"
fi

say "COPY $BIN -> $dest"
install -m 0755 "$BIN" "$root$dest"
# The volume: the default models, read-only (bind mount), under a home the user owns.
mkdir -p "$root$home/models"
chown "$user" "$root$home"
mount --bind "$MODELS" "$root$home/models"
mount -o remount,bind,ro "$root$home/models"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# CMD binds 0.0.0.0:8080 in a container's own network; here the chroot shares this
# machine's, so the same command listens on a free loopback port instead.
cmd="$(printf '%s' "$cmd" | sed "s/--addr [^ ]*/--addr 127.0.0.1:$port/")"
say "as $user: $entrypoint $cmd"
chroot --userspec="$user:$user" "$root" /usr/bin/env -i MINERVA_HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin \
  $entrypoint $cmd --offline --threads 1 --preload off --warm-start 0 > target/image-serve.log 2>&1 &
pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 150); do
  curl -sf "$base/health" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { say "the server exited:"; tail -20 target/image-serve.log >&2; exit 1; }
  sleep 0.2
done
curl -sf "$base/health" >/dev/null || { say "no /health answer"; exit 1; }
running_as="$(ps -o uid= -p "$(pgrep -P "$pid" -f minerva || echo "$pid")" | tr -d ' ')"
[ "$running_as" = "$user" ] || { say "the server runs as uid $running_as, not $user"; exit 1; }
curl -sf "$base/v1/embeddings" -H 'content-type: application/json' \
  -d '{"model":"all-minilm-l6-v2","input":"from the image"}' | python3 -c \
  'import json,sys; assert len(json.load(sys.stdin)["data"][0]["embedding"]) == 384'
curl -sf "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":3}' \
  | python3 -c 'import json,sys; assert json.load(sys.stdin)["usage"]["completion_tokens"] >= 1'
say "the image's steps work: $(du -sh --exclude=proc --exclude=dev --exclude="${home#/}/models" "$root" 2>/dev/null | cut -f1) root, serving as uid $user from a read-only models volume"
