#!/usr/bin/env bash
# Installs what is missing, builds, and runs the portal in demo mode: SQLite under data/demo and a
# built-in demo RADIUS server on loopback. Prints the URL and the demo users.
# PORTAL_HTTP_LISTEN=127.0.0.1:8080 scripts/demo.sh   to use another address.
# The release build: what production runs (the debug build's WASM is ~3x the session page's
# budget; tests use the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo leptos build --release --precompress
exec target/release/radius-portal demo "$@"
