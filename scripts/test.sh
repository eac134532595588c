#!/usr/bin/env bash
# Runs every test tier: format + lints, unit and integration tests (real FreeRADIUS), and
# Playwright end-to-end tests (Debian Chromium against the real portal and FreeRADIUS).
# Installs whatever is missing first (scripts/setup.sh --test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/env.sh

step() { printf '\n\033[1;34m== %s\033[0m\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "build (cargo leptos build: server + WASM + CSS)"
cargo leptos build

step "lints (server and app with ssr; app with hydrate on wasm32)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p app --no-default-features --features hydrate --target wasm32-unknown-unknown -- -D warnings

step "deployment files (hadolint, kubernetes-validate, systemd-analyze)"
bash scripts/lint-deploy.sh

step "unit + integration tests (FreeRADIUS started per test)"
cargo test --workspace

step "end-to-end tests (Playwright, Debian Chromium)"
npx playwright test -c end2end/playwright.config.ts
