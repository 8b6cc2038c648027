#!/usr/bin/env bash
# Regenerate crates/watcher/src/gateway_api/*.rs from the CRDs vendored in
# testdata/gateway-api/<version>/ with kopium (installed here at the pinned version).
set -euo pipefail
cd "$(dirname "$0")/.."
version=v1.6.0
kopium_version=0.24.1
if ! command -v kopium >/dev/null || [ "$(kopium --version)" != "kopium $kopium_version" ]; then
    cargo install --locked kopium --version "$kopium_version"
fi
out=crates/watcher/src/gateway_api
for pair in gatewayclasses:v1 gateways:v1 httproutes:v1 referencegrants:v1beta1 backendtlspolicies:v1; do
    kind=${pair%%:*}
    api=${pair##*:}
    kopium -f "testdata/gateway-api/$version/$kind.yaml" --api-version "$api" -D Default -D PartialEq --smart-derive-elision > "$out/$kind.rs"
done
cargo fmt -p portico-watcher
