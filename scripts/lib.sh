# Shared by the scripts that run a server or a Python tool (sourced, not run). The caller
# defines `say` and sets `set -euo pipefail`.

# Fails unless the default models are in $MODELS.
require_default_models() {
  local m
  for m in smollm2-135m-instruct.gguf gemma-3-270m.gguf all-minilm-l6-v2; do
    [ -e "$MODELS/$m" ] || { say "$MODELS/$m is missing: run scripts/fetch-models.sh"; exit 1; }
  done
}

# ensure_venv VENV REQUIREMENTS: a virtualenv with the pinned packages, reinstalled only
# when the requirements file changed since the last successful install.
ensure_venv() {
  local venv="$1" req="$2" stamp want
  if [[ ! -x "$venv/bin/python" ]]; then
    say "creating virtualenv $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  stamp="$venv/.requirements.sha256"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    say "installing pinned packages from $req"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
  else
    say "virtualenv $venv is up to date"
  fi
}

# serve_in_temp_home SERVE_ARGS...: `$BIN serve` on a free port in a temporary
# MINERVA_HOME whose models are hard links to $MODELS (no copy of the weights), stopped
# and removed on exit. Sets `home`, `log`, `pid` and `port` once the server answers
# /health.
serve_in_temp_home() {
  home="$(mktemp -d)"
  pid=""
  trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$home"' EXIT
  mkdir -p "$home/models"
  cp -al "$MODELS/." "$home/models/" 2>/dev/null || cp -a "$MODELS/." "$home/models/"
  log="$home/server.log"
  MINERVA_HOME="$home" "$BIN" serve --addr 127.0.0.1:0 "$@" > "$log" 2>&1 &
  pid=$!
  port=""
  local _
  for _ in $(seq 1 300); do
    port="$(sed -n 's/.*minerva listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)"
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || { say "the server exited:"; tail -20 "$log" >&2; exit 1; }
    sleep 0.2
  done
  [ -n "$port" ] || { say "the server did not say where it listens"; exit 1; }
  until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { say "the server exited:"; tail -20 "$log" >&2; exit 1; }
    sleep 0.2
  done
}

# start_postgres DIR: a throwaway PostgreSQL cluster (Debian's package, installed by
# scripts/install-services.sh) in DIR on a free loopback port, password authentication,
# run as the package's `postgres` user when we are root (PostgreSQL refuses root). Sets
# `pg_url` (database `minerva`); `stop_postgres DIR` stops it.
pg_bin() { dirname "$(ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)"; }
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
start_postgres() {
  local dir="$1" bin port
  bin="$(pg_bin)"
  mkdir -p "$dir/data" "$dir/run"
  printf 'minerva-bench' > "$dir/pwfile"
  if [ "$(id -u)" -eq 0 ]; then
    chmod o+x "$(dirname "$dir")"; chmod 755 "$dir"
    chown -R postgres:postgres "$dir/data" "$dir/run" "$dir/pwfile"
  fi
  pg_as_owner "$bin/initdb" -D "$dir/data" -U minerva --auth=scram-sha-256 --pwfile="$dir/pwfile" \
    -E UTF8 --no-sync --no-instructions >/dev/null
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/run/postgres.log" -w -s \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir/run" start
  PGPASSWORD=minerva-bench "$bin/psql" -q -h 127.0.0.1 -p "$port" -U minerva -d postgres -c 'CREATE DATABASE minerva'
  pg_url="postgres://minerva:minerva-bench@127.0.0.1:$port/minerva"
}
stop_postgres() {
  [ -f "$1/data/postmaster.pid" ] && pg_as_owner "$(pg_bin)/pg_ctl" -D "$1/data" -m fast -s stop || true
}
