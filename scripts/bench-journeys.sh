#!/usr/bin/env bash
# Journey benchmark: the release portal (SQLite) and FreeRADIUS (the test fixture) on loopback,
# driven by portal-load at several user counts. Prints one report per count; record results in
# docs/BENCHMARKS.md with the date and machine.
#   USERS="1 16 64" DURATION=10s scripts/bench-journeys.sh
#   DB=postgres REPLICAS=2 ...  two portal replicas on a throwaway PostgreSQL (bench-common.sh)
#   PERF=1 ...  also records a perf profile of the portal during the last count (needs linux-perf);
#               PERF_SORT=comm,dso sorts it by thread and library instead of by symbol;
#               PERF_KEEP=FILE keeps the recording there for `perf report -i FILE`;
#               PERF_CALL_GRAPH=dwarf PERF_FREQ=99 for call stacks through Rust code.
USERS=${USERS:-"1 16 64"}
DURATION=${DURATION:-10s}
source "$(dirname "$0")/bench-common.sh"
start_portal
bench_header
last=${USERS##* }
for users in $USERS; do
  if [ "${PERF:-}" = 1 ] && [ "$users" = "$last" ]; then
    perf record -F "${PERF_FREQ:-499}" --call-graph "${PERF_CALL_GRAPH:-fp}" -p "$portal_pid" -o "$state/perf.data" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  if [ "$DB" = postgres ]; then commits_before=$(pg_counters); else sqlite_before=$(sqlite_counters); fi
  target/release/portal-load --users "$users" --duration "$DURATION" "${load_targets[@]}" | tee "$state/report"
  journeys=$(grep -o '[0-9]* journeys' "$state/report" | head -1 | cut -d' ' -f1 || true)
  if [ "$DB" != postgres ]; then
    sqlite_after=$(sqlite_counters)
    if [ -n "$sqlite_before" ] && [ -n "$sqlite_after" ] && [ "${journeys:-0}" -gt 0 ]; then
      read -r f0 n0 w0 <<<"$sqlite_before"
      read -r f1 n1 w1 <<<"$sqlite_after"
      awk -v j="$journeys" -v f=$((f1 - f0)) -v n=$((n1 - n0)) -v w=$((w1 - w0)) 'BEGIN {
        printf "sqlite per journey: %.2f commits (%.2f with fsync), %.2f writes\n", (f + n) / j, f / j, w / j }'
    fi
  fi
  if [ "$DB" = postgres ]; then
    echo "postgres: $(( ($(pg_counters) - commits_before) / (journeys > 0 ? journeys : 1) )) transactions per journey"
    if [ -n "${PG_STATEMENTS:-}" ]; then
      echo "postgres statements per journey (all counts so far, by kind):"
      grep -oE '(statement|execute [^:]*): .*' "$state/pg/log" | sed -E 's/^execute [^:]*: /execute: /' \
        | cut -c1-110 | sort | uniq -c | sort -rn \
        | awk -v j="$journeys" '{ n = $1; $1 = ""; printf "%6.2f %s\n", n / (j > 0 ? j : 1), $0 }' | head -40
    fi
  fi
  echo
done
if [ -n "${perf_pid:-}" ]; then
  wait "$perf_pid" || true
  [ -z "${PERF_KEEP:-}" ] || cp "$state/perf.data" "$PERF_KEEP"
  { perf report -i "$state/perf.data" --no-children --sort "${PERF_SORT:-dso,symbol}" --stdio -g none 2>/dev/null \
    | grep -v '^#' | sed 's/ \{2,\}/ /g' | cut -c1-140 | head -60; } || true
fi
