#!/usr/bin/env bash
# Shared set-up of the benchmarks (sourced): builds the release portal, starts FreeRADIUS (the
# test fixture) on loopback and writes a portal configuration for one organization `bench`, all
# in a temporary directory removed on exit. Gives: $state, $http, $radius_pid, start_portal
# (sets $portal_pid), stop_portal, bench_header.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
cargo build --release -q -p radius-portal -p portal-load
# The pages reference the site's hashed asset names (hash.txt next to the binary): reuse the
# debug site (`cargo leptos build`) rather than a slow WASM release build.
[ -f target/debug/hash.txt ] || cargo leptos build
cp target/debug/hash.txt target/release/hash.txt

state=$(mktemp -d /tmp/portal-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT

free_port() { # $1: tcp or udp
  python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1]=='tcp' else socket.SOCK_DGRAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}
auth=$(free_port udp); acct=$(free_port udp); strict=$(free_port udp); http=$(free_port tcp)

RADIUS_AUTH_PORT=$auth RADIUS_ACCT_PORT=$acct RADIUS_STRICT_PORT=$strict RADIUS_STATE_DIR=$state \
  freeradius -f -d server/tests/fixtures/freeradius -l "$state/radius.log" &
radius_pid=$!
pids+=("$radius_pid")
for _ in $(seq 150); do grep -qs "Ready to process requests" "$state/radius.log" && break; sleep 0.1; done
grep -qs "Ready to process requests" "$state/radius.log" || { cat "$state/radius.log"; exit 1; }

cat >"$state/portal.toml" <<TOML
[http]
listen = "127.0.0.1:$http"
trusted_proxies = ["127.0.0.1"]
[database]
path = "$state/portal.db"
[radius]
bind = "127.0.0.1"
[rate_limit]
login_per_ip = 1000000
login_per_user = 1000000
[log]
filter = "warn"
[[organizations]]
id = "bench"
name = "Benchmark"
[[organizations.servers]]
name = "freeradius"
address = "127.0.0.1"
auth_port = $strict
acct_port = $acct
secret = "testing123"
TOML
start_portal() {
  LEPTOS_SITE_ROOT=target/site target/release/radius-portal --config "$state/portal.toml" serve \
    >"$state/portal.log" 2>&1 &
  portal_pid=$!
  pids+=("$portal_pid")
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$http/healthz" >/dev/null || { cat "$state/portal.log"; exit 1; }
}

# Graceful stop (SIGTERM: accounting is flushed first).
stop_portal() {
  kill -TERM "$portal_pid"
  wait "$portal_pid" || true
}

bench_header() {
  echo "portal $(target/release/radius-portal --version 2>/dev/null || true), FreeRADIUS $(freeradius -v | head -1 | grep -o 'Version [0-9.]*'), $(nproc) cores, $(date -u +%F)"
}
