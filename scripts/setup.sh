#!/usr/bin/env bash
# Installs what Portico's build and tests need, only what is missing (idempotent).
# Sourced by scripts/test.sh and scripts/run.sh; safe to run on its own.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v git >/dev/null 2>&1 || need_apt+=(git)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

# Rust: the crates need rustc 1.85 or newer. Debian's own cargo is too old, and rustup's
# download site is not a package registry, so a missing toolchain is reported, not fetched.
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust 1.85+ with rustup (https://rustup.rs), then re-run." >&2
  exit 69
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rustc_minor:-0}" -lt 85 ]; then
  echo "setup: $(rustc --version) is too old; Portico needs rustc 1.85 or newer (rustup update)." >&2
  exit 69
fi
