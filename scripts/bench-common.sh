#!/usr/bin/env bash
# Shared set-up of the benchmarks (sourced): builds the release portal, starts FreeRADIUS (the
# test fixture) on loopback and writes a portal configuration for one organization `bench`, all
# in a temporary directory removed on exit. Gives: $state, $http, $radius_pid, start_portal
# (sets $portal_pid, and $portal_pids / $portal_urls for every replica), stop_portal,
# bench_header, $load_targets (portal-load's --url and --cpu arguments for every process).
#   DB=postgres  a throwaway PostgreSQL cluster (durable: fsync on) instead of a SQLite file;
#                its CPU (postmaster and backends) is reported as `postgres`;
#                PG_STATEMENTS=1 also logs every statement and prints them per journey, by kind
#   REPLICAS=2   that many portal processes on the one database (PostgreSQL only), the load
#                spread over them
#   PORTAL_BIN=path  another build of the portal (A/B comparisons in one sitting: copy a
#                release binary elsewhere; the current site's hash.txt is put beside it, since
#                the portal refuses to start with asset names the site does not have)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
cargo build --release -q -p radius-portal -p portal-load
# The pages reference the site's hashed asset names (hash.txt next to the binary): reuse the
# debug site (`cargo leptos build`) rather than a slow WASM release build.
[ -f target/debug/hash.txt ] || cargo leptos build
cp target/debug/hash.txt target/release/hash.txt
[ -z "${PORTAL_BIN:-}" ] || cp target/debug/hash.txt "$(dirname "$PORTAL_BIN")/hash.txt"

portal_bin=${PORTAL_BIN:-target/release/radius-portal}
DB=${DB:-sqlite}
REPLICAS=${REPLICAS:-1}
[ "$DB" = postgres ] || [ "$REPLICAS" = 1 ] || { echo "REPLICAS > 1 needs DB=postgres" >&2; exit 2; }
state=$(mktemp -d /tmp/portal-bench.XXXXXX)
pids=()
pg_ctl_cmd=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ ${#pg_ctl_cmd[@]} -eq 0 ] || "${pg_ctl_cmd[@]}" -D "$state/pg/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

free_port() { # $1: tcp or udp
  python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1]=='tcp' else socket.SOCK_DGRAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}
auth=$(free_port udp); acct=$(free_port udp); strict=$(free_port udp); http=$(free_port tcp)
metrics=$(free_port tcp)

RADIUS_AUTH_PORT=$auth RADIUS_ACCT_PORT=$acct RADIUS_STRICT_PORT=$strict RADIUS_STATE_DIR=$state \
  freeradius -f -d server/tests/fixtures/freeradius -l "$state/radius.log" &
radius_pid=$!
pids+=("$radius_pid")
for _ in $(seq 150); do grep -qs "Ready to process requests" "$state/radius.log" && break; sleep 0.1; done
grep -qs "Ready to process requests" "$state/radius.log" || { cat "$state/radius.log"; exit 1; }

database="path = \"$state/portal.db\""
if [ "$DB" = postgres ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  pg_port=$(free_port tcp)
  mkdir -p "$state/pg"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chmod 755 "$state"; chown postgres "$state/pg"; as_pg=(runuser -u postgres --); fi
  pg_ctl_cmd=("${as_pg[@]}" "$pg_bin/pg_ctl")
  (cd "$state/pg" && "${as_pg[@]}" "$pg_bin/initdb" -D "$state/pg/data" -U postgres -A trust -E UTF8 \
    --locale=C.UTF-8 >/dev/null)
  (cd "$state/pg" && "${pg_ctl_cmd[@]}" -D "$state/pg/data" -l "$state/pg/log" -w start \
    -o "-p $pg_port -k $state/pg -c listen_addresses=127.0.0.1 -c max_connections=200 ${PG_STATEMENTS:+-c log_statement=all}" >/dev/null)
  "${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres portal
  database="url = \"postgres://postgres@127.0.0.1:$pg_port/portal\""
fi

cat >"$state/portal.toml" <<TOML
[http]
listen = "127.0.0.1:$http"
trusted_proxies = ["127.0.0.1"]
[database]
$database
[radius]
bind = "127.0.0.1"
[rate_limit]
login_per_ip = 1000000
login_per_user = 1000000
[log]
filter = "warn"
[metrics]
listen = "127.0.0.1:$metrics"
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
  portal_pids=(); portal_urls=(); load_targets=()
  for replica in $(seq "$REPLICAS"); do
    local port=$http config=$state/portal.toml
    if [ "$replica" -gt 1 ]; then
      port=$(free_port tcp); config=$state/portal-$replica.toml
      sed -e "s/^listen = \"127.0.0.1:$http\"/listen = \"127.0.0.1:$port\"/" \
        -e "s/^listen = \"127.0.0.1:$metrics\"/listen = \"127.0.0.1:$(free_port tcp)\"/" \
        "$state/portal.toml" >"$config"
    fi
    LEPTOS_SITE_ROOT=target/site "$portal_bin" --config "$config" serve \
      >"$state/portal-$replica.log" 2>&1 &
    portal_pids+=($!); pids+=($!)
    for _ in $(seq 300); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$state/portal-$replica.log"; exit 1; }
    portal_urls+=("http://127.0.0.1:$port")
    local label=portal; [ "$REPLICAS" = 1 ] || label=portal$replica
    load_targets+=(--url "http://127.0.0.1:$port" --cpu "$label=${portal_pids[-1]}")
  done
  portal_pid=${portal_pids[0]}
  load_targets+=(--cpu "freeradius=$radius_pid")
  if [ "$DB" = postgres ]; then
    load_targets+=(--cpu "postgres=$(head -1 "$state/pg/data/postmaster.pid")")
  fi
}

# PostgreSQL: transactions committed and statements run so far in the portal's database.
pg_counters() {
  "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d portal -Atc \
    "SELECT xact_commit FROM pg_stat_database WHERE datname = 'portal'"
}

# SQLite (the first replica): transactions committed under synchronous=FULL (an fsync each)
# and NORMAL, and the writes stored, so far, from the portal's metrics; nothing if they
# cannot be read.
sqlite_counters() {
  local text
  text=$(curl -fs "http://127.0.0.1:$metrics/metrics") || { echo "metrics unreadable" >&2; return 0; }
  awk '
    /^portal_database_commits_total\{synchronous="full"\}/ { f = $2 }
    /^portal_database_commits_total\{synchronous="normal"\}/ { n = $2 }
    /^portal_database_writes_total / { w = $2 }
    END { print f + 0, n + 0, w + 0 }' <<<"$text"
}

# Graceful stop (SIGTERM: accounting is flushed first).
stop_portal() {
  for pid in "${portal_pids[@]}"; do kill -TERM "$pid"; done
  for pid in "${portal_pids[@]}"; do wait "$pid" || true; done
}

bench_header() {
  local db=$DB
  [ "$DB" != postgres ] || db="PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}')"
  echo "portal $("$portal_bin" --version 2>/dev/null || true), FreeRADIUS $(freeradius -v | head -1 | grep -o 'Version [0-9.]*'), $db, $REPLICAS replica(s), $(nproc) cores, $(date -u +%F)"
}
