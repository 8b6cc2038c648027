#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, then runs every
# test of the workspace. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== cargo fmt --check" >&2
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "(rustfmt not installed; skipped)" >&2
fi
echo "== cargo clippy" >&2
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --all-features --locked -q -- -D warnings
else
  echo "(clippy not installed; skipped)" >&2
fi
# The parts the tests start: whatever of them is still running after the tests, and was
# not running before, was left behind by a test (issue 10, item 14).
parts() { pgrep -f '(^|/)(haproxy|envoy|nats-server|portico-[a-z-]+)( |$)' | sort || true; }
before=$(parts)
echo "== cargo test" >&2
status=0
cargo test --workspace --all-features --locked "$@" || status=$?
sleep 1
left=$(comm -13 <(echo "$before") <(parts) | grep -v '^$' || true)
if [ -n "$left" ]; then
  echo "== processes left behind by the tests:" >&2
  for pid in $left; do echo "  $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" >&2; done
  kill $left 2>/dev/null || true
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
