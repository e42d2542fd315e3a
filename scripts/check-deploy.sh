#!/usr/bin/env bash
# Checks the deployment files offline: every Kustomize overlay of deploy/kubernetes is
# rendered (kubectl kustomize) and validated against the Kubernetes API schemas of the
# oldest and newest versions we support (kubernetes-validate from PyPI, strict: unknown
# fields are errors); the custom resources (ServiceMonitor, PrometheusRule, InferencePool),
# which those schemas do not cover, are checked for consistency with the rest (selectors,
# ports, the Redis URL, the picker's pool) and every metric the alert rules and the
# endpoint picker read is checked against a live `minerva serve`'s /metrics. The HAProxy
# configuration is checked with `haproxy -c`.
#   scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${MINERVA_BIN:-target/release/minerva}"
MODELS="${MINERVA_HOME:-$HOME/.local/share/minerva}/models"
KUBERNETES_VERSIONS=(1.30.0 1.34.0)
venv=target/deploy-venv
say() { printf '\033[1m[deploy]\033[0m %s\n' "$*" >&2; }

source scripts/lib.sh
command -v kubectl >/dev/null || { say "kubectl (with its built-in kustomize) is needed to render the overlays"; exit 1; }
[ -x "$BIN" ] || { say "no binary at $BIN (cargo build --release --bin minerva)"; exit 1; }
require_default_models
ensure_venv "$venv" tests/deploy/requirements.txt

say "haproxy -c deploy/haproxy/haproxy.cfg"
MINERVA_LB_BIND=127.0.0.1:18080 MINERVA_REPLICA_1=127.0.0.1:18081 MINERVA_REPLICA_2=127.0.0.1:18082 \
  haproxy -c -q -f deploy/haproxy/haproxy.cfg

# What a scrape of a server that has served a chat and an embedding holds.
serve_in_temp_home --offline --threads 1 --max-tokens 4 --preload off --warm-start 0
base="http://127.0.0.1:$port"
curl -sf "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":2}' >/dev/null
curl -sf "$base/v1/embeddings" -H 'content-type: application/json' \
  -d '{"model":"all-minilm-l6-v2","input":"Hi"}' >/dev/null
mkdir -p target/deploy
curl -sf "$base/metrics" > target/deploy/metrics.txt

for overlay in deploy/kubernetes/overlays/*/; do
  name="$(basename "$overlay")"
  out="target/deploy/$name.yaml"
  kubectl kustomize "$overlay" > "$out"
  say "$name: $(grep -c '^kind:' "$out") resources rendered to $out"
  for version in "${KUBERNETES_VERSIONS[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" 2>&1 \
      | grep -v "Couldn't find schema for kind \(InferencePool\|PrometheusRule\|ServiceMonitor\)" >&2 || true
    "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$version" "$out" >/dev/null \
      || { say "$name is not valid Kubernetes $version"; exit 1; }
  done
  "$venv/bin/python" tests/deploy/consistency.py "$out" target/deploy/metrics.txt | sed "s/^/[deploy] $name: /" >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
done
say "all overlays valid for Kubernetes ${KUBERNETES_VERSIONS[*]}"
