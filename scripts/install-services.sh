#!/usr/bin/env bash
# The servers the tests start themselves on loopback ports, as Debian packages: Redis (the
# shared embedding cache), PostgreSQL (the shared registry) and HAProxy (model-aware load
# balancing of replicas). Only the
# binaries are needed: the packages' own system services are not used (and stopped where
# the package started them, so they hold no port).
#   scripts/install-services.sh
set -euo pipefail
say() { printf '\033[1m[services]\033[0m %s\n' "$*" >&2; }

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v haproxy >/dev/null || need+=(haproxy)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # policy-rc.d 101: the packages' post-install scripts do not start their services.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" || { $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
postgres=$(ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)
say "redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), $(haproxy -v | head -1 | cut -d' ' -f1-3), $("$postgres" --version)"
