#!/usr/bin/env bash
# Session-count benchmarks: the release portal (SQLite) with FreeRADIUS (the test fixture) on
# loopback. Record results in docs/BENCHMARKS.md with the date and machine.
#   1. EXPIRING sessions due at the same instant: how long after the deadline the last Stop is
#      acknowledged by FreeRADIUS.
#   2. DISABLED: an organization with that many open sessions disabled (`org disable`): how
#      long until every session is stopped, and until every Stop is acknowledged.
#   3. ACTIVE sessions held: the portal's resident memory and CPU while idle, then after a short
#      journey load.
#   EXPIRING=10000 DISABLED=10000 ACTIVE=100000 scripts/bench-sessions.sh
EXPIRING=${EXPIRING:-10000}
DISABLED=${DISABLED:-10000}
ACTIVE=${ACTIVE:-100000}
source "$(dirname "$0")/bench-common.sh"
cargo build --release -q -p radius-portal --example seed_sessions
seed() { target/release/examples/seed_sessions "$state/portal.db" bench freeradius "$1" "$2"; }
now_ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$portal_pid/stat"; }
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$portal_pid/status"; }
bench_header

# The portal creates the database and seeds the organization; the sessions are added offline.
start_portal
stop_portal

# 1. Same-instant expiry: seeded while the portal is down, due a little after it is back.
due=$(( $(now_ms) + 15000 ))
seed "$EXPIRING" "$due"
start_portal
python3 - "$state/portal.db" "$due" "$EXPIRING" <<'PY'
import sqlite3, sys, time
db, due, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if time.time() * 1000 > due - 2000:
    sys.exit("seeding took too long: the sessions were due before the portal was back")
conn = sqlite3.connect(db)
query = """SELECT COUNT(*), MAX(o.delivered_at) FROM accounting_outbox o
           JOIN access_sessions s ON s.id = o.access_session_id
           WHERE o.status_type = 2 AND o.delivered_at IS NOT NULL AND s.expires_at = ?"""
give_up = due / 1000 + 120
while True:
    done, last = conn.execute(query, (due,)).fetchone()
    if done >= n or time.time() > give_up:
        break
    time.sleep(0.1)
print(f"{n} sessions due at one instant: {done} Stops acknowledged, the last "
      f"{(last or due) - due} ms after the deadline")
PY
stop_portal

# 2. An organization disabled with its sessions open: the worker's stop job.
seed "$DISABLED" $(( $(now_ms) + 3600000 ))
start_portal
disabled_at=$(now_ms)
"$portal_bin" --config "$state/portal.toml" org disable bench >/dev/null
python3 - "$state/portal.db" "$disabled_at" <<'PY'
import sqlite3, sys, time
db, at = sys.argv[1], int(sys.argv[2])
conn = sqlite3.connect(db)
stopped = acked = None
give_up = time.time() + 300
while time.time() < give_up:
    active, = conn.execute("SELECT COUNT(*) FROM access_sessions WHERE state = 'active'").fetchone()
    if active == 0 and stopped is None:
        stopped = int(time.time() * 1000) - at
    pending, = conn.execute("""SELECT COUNT(*) FROM accounting_outbox WHERE status_type = 2
                               AND delivered_at IS NULL AND dead_at IS NULL""").fetchone()
    if stopped is not None and pending == 0:
        acked = int(time.time() * 1000) - at
        break
    time.sleep(0.05)
n, = conn.execute("SELECT COUNT(*) FROM accounting_outbox WHERE status_type = 2 AND delivered_at IS NOT NULL "
                 "AND event_at >= ?", (at,)).fetchone()
print(f"organization disabled with its sessions open: every session stopped after {stopped} ms, "
      f"{n} Stops acknowledged after {acked} ms")
PY
stop_portal
"$portal_bin" --config "$state/portal.toml" org enable bench >/dev/null

# 3. Many active sessions: memory and idle CPU.
seed "$ACTIVE" $(( $(now_ms) + 3600000 ))
start_portal
sleep 5
ticks=$(cpu_ticks)
sleep 10
idle_ms=$(( ($(cpu_ticks) - ticks) * 1000 / $(getconf CLK_TCK) ))
echo "$ACTIVE active sessions: RSS $(rss_mib) MiB after start-up, idle CPU ${idle_ms} ms over 10 s"
target/release/portal-load --url "http://127.0.0.1:$http" --users 16 --duration 5s >/dev/null
echo "after 5 s of 16-user journeys: RSS $(rss_mib) MiB"
