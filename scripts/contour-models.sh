#!/usr/bin/env bash
# Brings Contour's published API models (the npm package @kubernetes-models/contour,
# generated from Contour's CRDs) into ~/.cache/portico/contour-models, for the test that
# checks every HTTPProxy field is either implemented or named in a warning
# (crates/resolver/tests/contour_fields.rs). Idempotent; prints the package directory.
set -euo pipefail
VERSION=6.0.0
dest="${PORTICO_CONTOUR_MODELS:-$HOME/.cache/portico/contour-models-$VERSION}"
if [ ! -f "$dest/package/projectcontour.io/v1/HTTPProxySpec.d.ts" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "contour-models: installing npm with apt-get" >&2
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq npm >&2
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # npm pack downloads the published tarball only (no install, no scripts run).
  (cd "$tmp" && npm pack --silent "@kubernetes-models/contour@$VERSION" >/dev/null)
  mkdir -p "$dest"
  tar -xzf "$tmp"/kubernetes-models-contour-"$VERSION".tgz -C "$dest"
fi
echo "$dest/package"
