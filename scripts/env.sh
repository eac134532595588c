# Sourced by the scripts: the tools setup.sh installed, and the LEPTOS_* variables cargo-leptos sets
# when it compiles the server. `cargo test` uses the same ones so it reuses cargo-leptos' build of
# the dependencies instead of rebuilding leptos (it reads LEPTOS_OUTPUT_NAME at compile time).
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"
export LEPTOS_OUTPUT_NAME=radius-portal
# CI builds a fresh clone once: incremental state would only cost time and ~13 GB of disk.
case "${CI:-}" in "" | false | 0) ;; *) export CARGO_INCREMENTAL=0 ;; esac
