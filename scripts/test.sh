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
echo "== cargo test" >&2
cargo test --workspace --all-features --locked "$@"
