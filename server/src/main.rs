//! `radius-portal` binary: see `radius_portal::cli`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    radius_portal::cli::main().await
}
