#!/usr/bin/env bash
# The release build, with the server optimised by the profile of its own journey benchmark
# (profile-guided optimisation): 13-16 % less CPU per journey at 1 and 16 users than the plain
# release build (docs/BENCHMARKS.md, session 47). Optional: `cargo leptos build --release` is the
# release build everything else uses; this one takes ~30 minutes on 2 cores (three builds of
# the server and the site, and a minute of load against FreeRADIUS).
#   scripts/build-pgo.sh
# Gives target/pgo/release/radius-portal with target/pgo/release/hash.txt beside it and the
# site in target/site — deploy them as the release build's (README, "Running for real").
# Needs FreeRADIUS (scripts/setup.sh --test installs it) and llvm-profdata of the LLVM version
# rustc is built with (Debian's llvm-NN, installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/env.sh

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=llvm-profdata-$llvm
if ! command -v "$profdata" >/dev/null; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "llvm-$llvm"
fi

pgo=$PWD/target/pgo
rm -rf "$pgo/profiles"
mkdir -p "$pgo/profiles"
echo "== instrumented build (target/pgo)"
CARGO_TARGET_DIR=$pgo RUSTFLAGS="-Cprofile-generate=$pgo/profiles/build" \
  cargo build --release -q -p radius-portal

echo "== training: the journey benchmark at 1, 16 and 64 users against the instrumented portal"
LLVM_PROFILE_FILE="$pgo/profiles/portal-%p-%m.profraw" PORTAL_BIN=$pgo/release/radius-portal \
  USERS="1 16 64" DURATION=${PGO_DURATION:-8s} scripts/bench-journeys.sh | grep -E 'users,|failed'
ls "$pgo"/profiles/portal-*.profraw >/dev/null
"$profdata" merge -o "$pgo/journeys.profdata" "$pgo"/profiles/portal-*.profraw

echo "== optimised build"
CARGO_TARGET_DIR=$pgo RUSTFLAGS="-Cprofile-use=$pgo/journeys.profdata" \
  cargo build --release -q -p radius-portal

echo "== the site (cargo leptos build --release), its asset names beside the binary"
cargo leptos build --release --precompress
cp target/release/hash.txt "$pgo/release/hash.txt"
echo "done: $pgo/release/radius-portal (site: target/site)"
