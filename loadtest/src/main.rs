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
//! - `fanout --ramp` (F3), with `--target harvest` or `--target nats`: the same client
//!   against Harvest and against nats-server's WebSocket listener, the publish rate
//!   stepped up until p99 > 100 ms or any loss; `--report DIR` writes charts.
//! - `idle` (F2): many idle connections; measures the server's RSS per connection.
//! - `flash-sale` (S3, S2): a reservation storm on one flash sale through HTTP, checked
//!   for overselling, per-user limits and idempotency, against `GET /healthz` with the
//!   same client; then the rejection rate once the sale is sold out.
//! - `checkout` (O1): pays holds through `POST /api/v1/holds/{id}/checkout` as fast as
//!   the server takes them; measures paid orders per second and checks the room's order
//!   export for lost and duplicated orders.
//! - `contest` (C1): two live rooms in a PK match of a contest, buyers paying in both at
//!   unequal rates, viewers recording `pk.started`, `pk.score` and `pk.ended`; measures
//!   the time from a payment's answer to the first `pk.score` showing it and the
//!   `pk.score` rate, checks the winner, the final scores and the standings against the
//!   orders paid, and measures the `harvest-contest` engine's events per second in
//!   process.
//!
//! `--json` prints one summary object on stdout; progress bars and a human table go to
//! stderr. Every run also reports this process's own CPU time and marks a run whose
//! client used more than 90% of a core as `client_bound`.

mod chart;
mod checkout;
mod common;
mod contest;
mod fanout;
mod flash;
mod hist;
mod idle;
mod ramp;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the client allocates per request and per frame on every thread; a faster
/// allocator leaves more of the shared machine to the server being measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// S3 and S2: flash-sale reservation storm through HTTP, then rejections once sold out.
    FlashSale(flash::FlashSaleArgs),
    /// O1: paid orders persisted per second through checkout (group commit).
    Checkout(checkout::CheckoutArgs),
    /// C1: a PK match between two rooms with buyers paying; score latency and checks.
    Contest(contest::ContestArgs),
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
            Command::FlashSale(args) => flash::run(args).await,
            Command::Checkout(args) => checkout::run(args).await,
            Command::Contest(args) => contest::run(args).await,
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
        let cli = Cli::try_parse_from(["harvest-loadtest", "flash-sale", "--json"]).unwrap();
        let Command::FlashSale(s) = cli.command else {
            panic!("not flash-sale")
        };
        assert_eq!(
            (s.stock, s.buyers, s.concurrency, s.per_user_limit),
            (10_000, 50_000, 1000, 2)
        );
        assert_eq!(
            (s.quantity_max, s.keys_per_buyer, s.sold_out_phase),
            (1, 1, 50_000)
        );
        assert!(s.json && s.retries > 0.0 && s.healthz_requests.is_none());
        assert_eq!(s.url, "http://127.0.0.1:8080");
        let cli = Cli::try_parse_from([
            "harvest-loadtest",
            "flash-sale",
            "--stock",
            "1000",
            "--buyers",
            "5000",
            "--concurrency",
            "200",
            "--quantity-max",
            "3",
            "--retries",
            "0.2",
            "--hold-ttl-s",
            "600",
            "--duration-limit",
            "60",
            "--sold-out-phase",
            "0",
            "--url",
            "http://127.0.0.1:18080",
        ])
        .unwrap();
        let Command::FlashSale(s) = cli.command else {
            panic!("not flash-sale")
        };
        assert_eq!((s.stock, s.buyers, s.concurrency), (1000, 5000, 200));
        assert_eq!(
            (s.quantity_max, s.hold_ttl_s, s.duration_limit),
            (3, 600, 60)
        );
        assert_eq!((s.retries, s.sold_out_phase), (0.2, 0));
        let cli = Cli::try_parse_from([
            "harvest-loadtest",
            "checkout",
            "--orders",
            "1000",
            "--buyers",
            "100",
            "--concurrency",
            "64",
            "--database",
            "sqlite",
            "--json",
        ])
        .unwrap();
        let Command::Checkout(c) = cli.command else {
            panic!("not checkout")
        };
        assert_eq!((c.orders, c.buyers, c.concurrency), (1000, Some(100), 64));
        assert_eq!(c.database.as_deref(), Some("sqlite"));
        assert!(c.json);
        let cli = Cli::try_parse_from([
            "harvest-loadtest",
            "contest",
            "--duration",
            "20",
            "--rate-a",
            "60",
            "--rate-b",
            "30",
            "--engine-events",
            "2000000",
            "--json",
        ])
        .unwrap();
        let Command::Contest(c) = cli.command else {
            panic!("not contest")
        };
        assert_eq!((c.duration, c.rate_a, c.rate_b), (20, 60.0, 30.0));
        assert_eq!((c.engine_events, c.viewers), (2_000_000, 3));
        assert!(c.json);
    }

    impl Cli {
        fn command_check() {
            <Self as clap::CommandFactory>::command().debug_assert();
        }
    }
}
