#!/usr/bin/env bash
# Long fuzz runs of the property tests (input validation, forwarding headers, cookies and
# tokens, redirects, the RADIUS receive path): each target runs for MINUTES (default 10) in
# rounds of fresh random cases; any failure stops the run (proptest saves the shrunk case in
# */proptest-regressions/, commit it). Results go to docs/BENCHMARKS.md by hand.
#   bash scripts/fuzz.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
minutes=${1:-10}
targets=(
  "app validation::fuzz::"
  "radius-portal http::client_ip::fuzz::"
  "radius-portal http::form_token::fuzz::"
  "radius-portal http::flash::fuzz::"
  "radius-portal radius::packet::tests::fuzz::"
)
cargo test -p app --lib --no-run -q
cargo test -p radius-portal --lib --no-run -q
for target in "${targets[@]}"; do
  read -r package filter <<<"$target"
  start=$(date +%s)
  rounds=0
  while [ $(( $(date +%s) - start )) -lt $(( minutes * 60 )) ]; do
    PROPTEST_CASES=20000 cargo test -q -p "$package" --lib "$filter" >/dev/null
    rounds=$((rounds + 1))
  done
  echo "$package $filter: $rounds rounds x 20000 cases per property in $(( $(date +%s) - start )) s, 0 failures"
done
