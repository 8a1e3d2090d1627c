//! F2, idle connections: many anonymous viewers of one quiet room, held open; the
//! server's RSS before connecting and after all are connected and settled gives the
//! memory per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Api, Connector, Minter, TargetArgs};
use crate::report::{self, Summary, mib, n};

/// Arguments of `harvest-loadtest idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 50_000)]
    pub connections: u64,
    /// How long to hold them once all are connected, in seconds.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Wait after the last connection before reading the server's RSS, in seconds
    /// (part of --hold).
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
    /// Watch this existing room instead of creating one (then no --jwt-secret needed).
    #[arg(long)]
    pub room: Option<String>,
}

/// The F2 figures (PERFORMANCE.md), then context.
#[derive(Debug, Default, Serialize)]
pub struct IdleSummary {
    pub connections: u64,
    pub server_rss_bytes_before: u64,
    pub server_rss_bytes_after: u64,
    pub rss_per_connection_bytes: u64,
    // Context.
    pub connections_requested: u64,
    pub connect_failures: u64,
    pub connect_retries: u64,
    /// Time to open every connection, in seconds.
    pub connect_s: f64,
    /// Connections that ended before the end of the hold.
    pub connections_dropped: u64,
    /// Server RSS at the end of the hold.
    pub server_rss_bytes_end: u64,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    pub client_bound: bool,
    pub encoding: &'static str,
    /// The last connect error, when some failed.
    pub last_connect_error: Option<String>,
}

impl Summary for IdleSummary {
    fn title(&self) -> &'static str {
        "harvest-loadtest idle (F2)"
    }

    fn rows(&self) -> Vec<(&'static str, String, String)> {
        vec![
            (
                "connections",
                n(self.connections),
                format!(
                    "of {} asked, in {:.1} s",
                    n(self.connections_requested),
                    self.connect_s
                ),
            ),
            (
                "connect_failures",
                n(self.connect_failures),
                format!("{} retries", n(self.connect_retries)),
            ),
            (
                "server_rss_bytes_before",
                n(self.server_rss_bytes_before),
                mib(self.server_rss_bytes_before),
            ),
            (
                "server_rss_bytes_after",
                n(self.server_rss_bytes_after),
                mib(self.server_rss_bytes_after),
            ),
            (
                "rss_per_connection_bytes",
                n(self.rss_per_connection_bytes),
                format!("{:.2} KiB", self.rss_per_connection_bytes as f64 / 1024.0),
            ),
            (
                "server_rss_bytes_end",
                n(self.server_rss_bytes_end),
                format!("{}, end of hold", mib(self.server_rss_bytes_end)),
            ),
            (
                "connections_dropped",
                n(self.connections_dropped),
                String::new(),
            ),
            (
                "server_cpu_s",
                format!("{:.2}", self.server_cpu_s),
                String::new(),
            ),
            (
                "client_cpu_s",
                format!("{:.2}", self.client_cpu_s),
                String::new(),
            ),
            ("client_bound", self.client_bound.to_string(), String::new()),
        ]
    }
}

/// Runs the scenario.
pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    args.target.check()?;
    if !(1..=1_000_000).contains(&args.connections) {
        bail!("--connections must be in 1..=1000000");
    }
    if args.hold > 3600 || args.settle > args.hold.max(1) {
        bail!("--hold must be at most 3600 s and --settle at most --hold");
    }
    common::check_nofile(args.connections)?;
    let target = common::Target::resolve(&args.target.url, args.target.allow_remote).await?;
    let anonymous = Api::new(&target, None)?;
    anonymous.check_reachable().await?;

    let (room_id, owner) = match &args.room {
        Some(room) => (room.clone(), None),
        None => {
            let secret = args.target.jwt_secret.as_deref().context(
                "idle needs --jwt-secret (or HARVEST_JWT_SECRET) to create its room, or --room ID",
            )?;
            let run_id = common::run_id();
            let minter = Minter::new(
                secret,
                Duration::from_secs(3600 + args.hold + args.target.connect_timeout),
            )?;
            let api = Api::new(
                &target,
                Some(minter.token(
                    &format!("lt-streamer-{run_id}"),
                    "Load-test streamer",
                    &["streamer"],
                )?),
            )?;
            let room = api
                .create_live_room(&format!("Idle load test {run_id}"), &[])
                .await
                .context(
                    "setup: creating and starting the room (is --jwt-secret the server's secret?)",
                )?;
            (room, Some(api))
        }
    };
    // Let the setup's allocations settle before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = anonymous.server_sample().await?;
    let client_before = common::client_cpu_s();
    let started = Instant::now();

    let connector = Connector::new(&target, &args.target);
    let url = target.ws_url(&room_id, None);
    let dropped = Arc::new(AtomicU64::new(0));
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut tasks = JoinSet::new();
    for _ in 0..args.connections {
        let (connector, url, dropped, holding) = (
            connector.clone(),
            url.clone(),
            dropped.clone(),
            holding.clone(),
        );
        tasks.spawn(async move {
            let Some((mut ws, _)) = connector.open(&url).await else {
                return;
            };
            // Read (and drop) whatever comes: viewer counts, pings.
            while let Some(Ok(message)) = ws.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
            if holding.load(Ordering::Relaxed) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let bar = report::bar(args.connections, "connect");
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(args.target.connect_timeout + 30);
    loop {
        let stats = &connector.stats;
        let done = stats.connected.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
        bar.set_position(done);
        bar.set_message(format!(
            "{} failed, {} retries",
            stats.failed.load(Ordering::Relaxed),
            stats.retries.load(Ordering::Relaxed)
        ));
        if done >= args.connections || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    let connect_s = started.elapsed().as_secs_f64();
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = anonymous.server_sample().await?;
    let connections =
        connector.stats.connected.load(Ordering::Relaxed) - dropped.load(Ordering::Relaxed);
    let rest = Duration::from_secs(args.hold).saturating_sub(hold_started.elapsed());
    let bar = report::bar(rest.as_secs(), "hold");
    let hold_end = tokio::time::Instant::now() + rest;
    while tokio::time::Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(
            rest.as_secs().saturating_sub(
                hold_end
                    .duration_since(tokio::time::Instant::now())
                    .as_secs(),
            ),
        );
    }
    bar.finish();
    let end = anonymous.server_sample().await?;
    let client_cpu_s = common::client_cpu_s() - client_before;
    let elapsed = started.elapsed().as_secs_f64();
    holding.store(false, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Some(api) = owner
        && let Err(e) = api.end_room(&room_id).await
    {
        report::note(None, format!("could not end room {room_id}: {e:#}"));
    }

    let summary = IdleSummary {
        connections,
        server_rss_bytes_before: before.rss_bytes,
        server_rss_bytes_after: after.rss_bytes,
        rss_per_connection_bytes: rss_per_connection(
            before.rss_bytes,
            after.rss_bytes,
            connections,
        ),
        connections_requested: args.connections,
        connect_failures: connector.stats.failed.load(Ordering::Relaxed),
        connect_retries: connector.stats.retries.load(Ordering::Relaxed),
        connect_s: (connect_s * 100.0).round() / 100.0,
        connections_dropped: dropped.load(Ordering::Relaxed),
        server_rss_bytes_end: end.rss_bytes,
        server_cpu_s: ((end.cpu_s - before.cpu_s).max(0.0) * 100.0).round() / 100.0,
        client_cpu_s: (client_cpu_s * 100.0).round() / 100.0,
        client_bound: client_cpu_s > 0.9 * elapsed,
        encoding: if args.target.protobuf {
            "protobuf"
        } else {
            "json"
        },
        last_connect_error: connector.stats.last_error(),
    };
    report::emit(&summary, args.target.json)
}

/// Bytes of server RSS per connection (0 when nothing connected or RSS fell).
fn rss_per_connection(before: u64, after: u64, connections: u64) -> u64 {
    if connections == 0 {
        return 0;
    }
    after.saturating_sub(before) / connections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_every_f2_figure() {
        let value = serde_json::to_value(IdleSummary::default()).unwrap();
        let object = value.as_object().unwrap();
        for name in [
            "connections",
            "server_rss_bytes_before",
            "server_rss_bytes_after",
            "rss_per_connection_bytes",
        ] {
            assert!(object.contains_key(name), "missing {name}");
        }
    }

    #[test]
    fn per_connection_memory() {
        assert_eq!(rss_per_connection(100, 8292, 2), 4096);
        assert_eq!(rss_per_connection(100, 50, 2), 0);
        assert_eq!(rss_per_connection(100, 200, 0), 0);
    }
}
