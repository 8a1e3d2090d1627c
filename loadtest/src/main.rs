//! `harvest-loadtest`: the black-box load generator behind the figures in
//! `docs/benchmarks.md` (scenarios of `shared/spec/PERFORMANCE.md`).
//!
//! It drives a running `harvest serve` through its public HTTP API and WebSockets only,
//! over loopback (a non-loopback target needs `--allow-remote`), with bounded durations
//! and request counts:
//!
//! - `fanout` (F1): one live room, many anonymous viewers, commerce events published by
//!   pin toggles at a fixed rate, and chatters; measures commerce loss and latency, chat
//!   and delivery rates, and server and client CPU.
//! - `idle` (F2): many idle connections; measures the server's RSS per connection.
//!
//! `--json` prints one summary object on stdout; progress bars and a human table go to
//! stderr. Every run also reports this process's own CPU time and marks a run whose
//! client used more than 90% of a core as `client_bound`.

mod common;
mod fanout;
mod hist;
mod idle;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator for harvest serve.
#[derive(Debug, Parser)]
#[command(name = "harvest-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// F1: big-room fan-out of commerce events and chat to many viewers.
    Fanout(fanout::FanoutArgs),
    /// F2: many idle connections held open; server memory per connection.
    Idle(idle::IdleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("harvest-loadtest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Fanout(args) => fanout::run(args).await,
            Command::Idle(args) => idle::run(args).await,
        }
    });
    // Connection tasks are aborted by the scenarios; do not wait on stragglers.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harvest-loadtest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_the_spec_commands() {
        Cli::command_check();
        let cli = Cli::try_parse_from([
            "harvest-loadtest",
            "fanout",
            "--viewers",
            "10000",
            "--commerce-rate",
            "20",
            "--chat-rate",
            "500",
            "--duration",
            "60",
            "--json",
        ])
        .unwrap();
        let Command::Fanout(f) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!((f.viewers, f.chatters, f.duration), (10_000, 500, 60));
        assert!(f.target.json);
        let cli =
            Cli::try_parse_from(["harvest-loadtest", "idle", "--connections", "50000"]).unwrap();
        let Command::Idle(i) = cli.command else {
            panic!("not idle")
        };
        assert_eq!((i.connections, i.hold), (50_000, 10));
        assert_eq!(i.target.url, "http://127.0.0.1:8080");
    }

    impl Cli {
        fn command_check() {
            <Self as clap::CommandFactory>::command().debug_assert();
        }
    }
}
