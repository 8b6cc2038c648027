#!/usr/bin/env bash
# The main job: `portico up` on the bundled demo. Installs what is missing (scripts/setup.sh),
# builds the `portico` command and the five services, then runs nats-server, the services,
# HAProxy (127.0.0.1:8080) and Envoy (127.0.0.2:8080) with TLS backends whose certificates
# are made at start, and prints what to curl. Ctrl-C stops everything.
# Extra arguments go to `portico up` (e.g. manifest paths instead of the demo, --http-port).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
echo "== building (release; the first build takes a few minutes)" >&2
cargo build --release --locked --workspace --all-features --bins -q
exec target/release/portico up "$@"
