//! `radius-portal` binary: see `radius_portal::cli`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match radius_portal::cli::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
