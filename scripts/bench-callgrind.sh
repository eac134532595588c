#!/usr/bin/env bash
# Where one user's journey spends its instructions: the release portal under callgrind
# (valgrind; Debian's `valgrind` package), driven by portal-load at one user on the fixture
# FreeRADIUS. Instruction counts are exact and repeatable where perf's samples on this VM are
# coarse; they leave out the kernel, and under valgrind SHA-256 runs in software (no SHA-NI).
# Prints the instructions per journey and the largest inclusive and exclusive items.
#   DURATION=20s scripts/bench-callgrind.sh
#   CALLGRIND_KEEP=FILE keeps the profile for `callgrind_annotate FILE`
DURATION=${DURATION:-20s}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
source "$(dirname "$0")/bench-common.sh"
real_bin=$(readlink -f "$portal_bin")
cat >"$state/portal-under-callgrind" <<SH
#!/usr/bin/env bash
[ "\${1:-}" != --version ] || exec "$real_bin" "\$@"
exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$state/callgrind.%p" "$real_bin" "\$@"
SH
chmod +x "$state/portal-under-callgrind"
portal_bin=$state/portal-under-callgrind
start_portal
bench_header
# Warm up uninstrumented (the first requests fill caches and pools), then count.
target/release/portal-load --users 1 --duration 5s "${load_targets[@]}" >/dev/null
callgrind_control -i on "$portal_pid" >/dev/null
target/release/portal-load --users 1 --duration "$DURATION" "${load_targets[@]}" | tee "$state/report"
callgrind_control -i off "$portal_pid" >/dev/null
callgrind_control -d "$portal_pid" >/dev/null
profile=$(ls "$state"/callgrind.*.1 2>/dev/null | head -1)
[ -n "$profile" ] || { echo "no profile written" >&2; exit 1; }
[ -z "${CALLGRIND_KEEP:-}" ] || cp "$profile" "$CALLGRIND_KEEP"
journeys=$(grep -o '[0-9]* journeys' "$state/report" | head -1 | cut -d' ' -f1)
per_journey() {
  awk -v j="$journeys" '$1 ~ /^[0-9,]+$/ { n = $1; gsub(",", "", n); $1 = ""; sub(/\([ 0-9.%]*\)/, "");
    printf "%9.0f %s\n", n / j, substr($0, 1, 110) }'
}
echo "instructions per journey, inclusive (largest first):"
callgrind_annotate --inclusive=yes "$profile" 2>/dev/null | sed -n '/PROGRAM TOTALS/,$p' | per_journey | head -"${TOP:-40}"
echo
echo "instructions per journey, exclusive:"
callgrind_annotate "$profile" 2>/dev/null | sed -n '/PROGRAM TOTALS/,$p' | per_journey | sed -n '2,$p' | head -"${TOP:-40}"
