//! `radius-portal` binary: see `radius_portal::cli`.

/// mimalloc rather than glibc's malloc: many small, short-lived allocations per request
/// (docs/BENCHMARKS.md, "Journeys").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    radius_portal::cli::main().await
}
