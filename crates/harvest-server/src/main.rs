//! The `harvest` binary.

use clap::Parser;

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
