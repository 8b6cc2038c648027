#!/usr/bin/env bash
# Brings Contour's published API models (the npm package @kubernetes-models/contour,
# generated from Contour's CRDs, with the JSON-schema validators it ships) into
# ~/.cache/portico/contour-models-<version>, for the tests that check every HTTPProxy
# field is implemented or named (crates/resolver/tests/contour_fields.rs) and that every
# status Portico writes passes Contour's schema (crates/watcher/tests/kubernetes.rs,
# through scripts/contour-validate.mjs). Idempotent; prints the package's directory.
set -euo pipefail
VERSION=6.0.0
dest="${PORTICO_CONTOUR_MODELS:-$HOME/.cache/portico/contour-models-$VERSION}"
package="$dest/node_modules/@kubernetes-models/contour"
if [ ! -f "$package/projectcontour.io/v1/HTTPProxySpec.d.ts" ] || [ ! -d "$dest/node_modules/@kubernetes-models/validate" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "contour-models: installing npm with apt-get" >&2
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq npm >&2
  fi
  mkdir -p "$dest"
  # No scripts run; the package and its validators' runtime only.
  (cd "$dest" && npm install --silent --no-audit --no-fund --ignore-scripts \
    "@kubernetes-models/contour@$VERSION" >/dev/null)
fi
echo "$package"
