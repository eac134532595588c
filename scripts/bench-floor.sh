#!/usr/bin/env bash
# The floor under the portal's CPU ratio to FreeRADIUS: portal-floor (loadgen/src/bin), a
# server that only answers the journey's five HTTP requests with fixed pages and makes its
# three RADIUS exchanges (no storage, no checks), against the release portal, in alternate
# runs on the same FreeRADIUS. Record results in docs/BENCHMARKS.md.
#   USERS="1 16" DURATION=8s ROUNDS=2 scripts/bench-floor.sh
#   FLOORS="--threads 0;--threads 2;--threads 2 --fsync" several floors (portal-floor's
#       arguments, `;` between them; a bare --fsync gets a file in the run's directory)
USERS=${USERS:-"1 16"}
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-2}
FLOORS=${FLOORS:-"--threads 0"}
source "$(dirname "$0")/bench-common.sh"
floor_ports=(); floor_pids=(); floor_names=()
IFS=';' read -ra floors <<<"$FLOORS"
for i in "${!floors[@]}"; do
  port=$(free_port tcp)
  # shellcheck disable=SC2086 # the floor's arguments, split on purpose
  args=(${floors[$i]/%--fsync/--fsync $state/floor-$i.log})
  target/release/portal-floor --listen "127.0.0.1:$port" --auth "127.0.0.1:$strict" \
    --acct "127.0.0.1:$acct" "${args[@]}" >"$state/floor-$i.out" 2>&1 &
  floor_pids+=($!); pids+=($!); floor_ports+=("$port"); floor_names+=("floor${i}")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
  echo "floor$i: portal-floor ${args[*]}"
done
start_portal
bench_header
for round in $(seq "$ROUNDS"); do
  for users in $USERS; do
    for i in "${!floors[@]}"; do
      echo "== round $round, $users user(s): floor$i"
      target/release/portal-load --strict --users "$users" --duration "$DURATION" \
        --url "http://127.0.0.1:${floor_ports[$i]}" --cpu "floor$i=${floor_pids[$i]}" \
        --cpu "freeradius=$radius_pid"
    done
    echo "== round $round, $users user(s): the portal"
    target/release/portal-load --strict --users "$users" --duration "$DURATION" "${load_targets[@]}"
  done
done
