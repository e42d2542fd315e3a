#!/usr/bin/env bash
# Refreshes the dashboard's one third-party asset, the uPlot charting library, from the
# npm registry: `npm pack` fetches the pinned version, its integrity is checked against
# the hash below, and the minified build, its CSS and its licence are copied into
# crates/minerva-server/assets/dashboard/vendor/ (committed; the binary embeds them, so
# the dashboard works offline and the build needs no npm).
#   scripts/update-dashboard-vendor.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.6.32
integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
out=crates/minerva-server/assets/dashboard/vendor

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$version" >/dev/null)
tarball="$work/uplot-$version.tgz"
got="sha512-$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")"
if [[ "$got" != "$integrity" ]]; then
  echo "uplot@$version: integrity $got, expected $integrity" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
mkdir -p "$out"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$out/"
cp "$work/package/LICENSE" "$out/uPlot.LICENSE"
echo "uplot@$version copied to $out"
