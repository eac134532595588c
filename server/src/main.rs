//! `radius-portal` binary: see `radius_portal::cli`.

/// mimalloc rather than glibc's malloc: many small, short-lived allocations per request
/// (docs/BENCHMARKS.md, "Journeys").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // A panic's message comes after the log's lines before it, not ahead of them.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        radius_portal::telemetry::flush(std::time::Duration::from_secs(2));
        report(info);
    }));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let variable = std::env::var("TOKIO_WORKER_THREADS").ok();
    let (workers, warning) = radius_portal::startup::worker_threads(variable.as_deref(), cores);
    if let Some(warning) = warning {
        radius_portal::eprint_line!("{warning}");
    }
    let code = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let code = runtime.block_on(radius_portal::cli::main());
            // Not waiting for ever on work still blocked (a read of a hung disk): what the
            // stop had to do is done or stored by now (a code review).
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
        Err(e) => {
            radius_portal::eprint_line!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    };
    // The log's last lines (why it stopped) are written before the process ends — unless
    // nobody reads them.
    radius_portal::telemetry::flush(std::time::Duration::from_secs(2));
    code
}
