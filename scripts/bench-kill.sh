#!/usr/bin/env bash
# kill -9 under load: the release portal (SQLite) and FreeRADIUS (the test fixture) on loopback,
# portal-load at USERS users, the portal killed with SIGKILL after KILL_AFTER seconds and
# started again; sessions use a 15 s window, so those left open by the kill end on their own.
# Once nothing is active or waiting, every session's packets in FreeRADIUS's accounting log are
# counted: each session must have one Start and one Stop (or neither: a Start that never went
# out is rolled back with its session). Packets sent twice (acknowledged, but killed before the
# acknowledgement was recorded: delivery is at least once) and dead letters are reported. Exit
# status 1 on a session without its Stop, a Stop for no session, or anything left waiting; 2 if
# the window cannot be set. SQLite only (it reads the database file; DB/REPLICAS do not apply).
#   USERS=64 KILL_AFTER=3 scripts/bench-kill.sh
USERS=${USERS:-64}
KILL_AFTER=${KILL_AFTER:-3}
source "$(dirname "$0")/bench-common.sh"
sed -i 's/^name = "Benchmark"$/name = "Benchmark"\ndefault_window = "15s"/' "$state/portal.toml"
grep -q '^default_window = "15s"' "$state/portal.toml" || { echo "could not set the window" >&2; exit 2; }
bench_header
start_portal
target/release/portal-load --url "http://127.0.0.1:$http" --users "$USERS" --duration $((KILL_AFTER + 3))s \
  >"$state/load" 2>&1 &
load=$!
sleep "$KILL_AFTER"
kill -9 "$portal_pid"
wait "$portal_pid" 2>/dev/null || true
wait "$load" || true
echo "killed with SIGKILL after ${KILL_AFTER} s of $USERS users: $(head -1 "$state/load" | cut -d, -f2- | sed 's/^ //')"
start_portal
python3 - "$state/portal.db" "$state/acct.log" <<'PY'
import collections, sqlite3, sys, time
db, log = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db)
give_up = time.time() + 120
while True:
    active, = conn.execute("SELECT COUNT(*) FROM access_sessions WHERE state = 'active'").fetchone()
    waiting, = conn.execute(
        "SELECT COUNT(*) FROM accounting_outbox WHERE delivered_at IS NULL AND dead_at IS NULL").fetchone()
    if (active == 0 and waiting == 0) or time.time() > give_up:
        break
    time.sleep(0.5)
dead = conn.execute("SELECT status_type, dead_reason, COUNT(*) FROM accounting_outbox "
                    "WHERE dead_at IS NOT NULL GROUP BY 1, 2").fetchall()
sessions = [sid for sid, in conn.execute("SELECT acct_session_id FROM access_sessions")]
packets = collections.Counter()
for line in open(log):
    fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    packets[(fields.get("sid"), fields.get("status"))] += 1
unpaired = [s for s in sessions if (packets[(s, "Start")] > 0) != (packets[(s, "Stop")] > 0)]
known = set(sessions)
strays = [sid for (sid, status) in packets if status == "Stop" and sid not in known]
twice = collections.Counter(status for (sid, status), n in packets.items() if n > 1)
print(f"{len(sessions)} sessions; still active {active}, packets waiting {waiting}; "
      f"Start without Stop or Stop without Start: {len(unpaired)}; Stops for no session: {len(strays)}; "
      f"sent twice: {twice.get('Start', 0)} Starts, {twice.get('Stop', 0)} Stops; dead letters: {dead or 'none'}")
sys.exit(1 if unpaired or strays or active or waiting else 0)
PY
