#!/usr/bin/env bash
# The main job, on the bundled example: translate examples/upstream-tls into statuses and
# the resolved model under out/, and print the status table.
# (When the services land, this becomes `portico up`: the whole stack with proxies to curl.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
out="${1:-out}"
cargo run --release --locked -q -p portico-deploy -- translate examples/upstream-tls --out-dir "$out"
echo
echo "The HTTPProxy's status, as Portico would write it back:"
python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[0], indent=2))' "$out/status.json" 2>/dev/null \
  || head -40 "$out/status.json"
echo
echo "Proxy configurations for the same model:"
echo "  haproxy -c -f $out/haproxy/haproxy.cfg && haproxy -db -f $out/haproxy/haproxy.cfg"
echo "  envoy -c $out/envoy/envoy.yaml"
echo "then: curl -H 'Host: shop.example.com' http://127.0.0.1:8080/legacy   # 503, the broken route"
