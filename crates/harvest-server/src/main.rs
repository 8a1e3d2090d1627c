//! The `harvest` binary.

use clap::Parser;

/// mimalloc: many small, short-lived allocations per request and per event, across
/// threads; it is markedly faster than the system allocator for that pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = harvest_server::cli::Cli::parse();
    match harvest_server::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("harvest: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
