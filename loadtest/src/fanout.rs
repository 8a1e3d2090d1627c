//! F1, big-room fan-out: thousands of anonymous viewers in one room, a streamer
//! publishing commerce events (pin toggles) at a fixed rate, and chatters sending chat.
//!
//! Commerce latency is measured per (event, viewer) from the moment the pin request was
//! sent (`request_send`, the default) or from the event's server `ts` (`server_ts`) to
//! the moment the viewer's task decoded the frame holding it.
//!
//! Pin requests run a few at a time (`--publish-concurrency`), so the server may
//! sequence two of them in either order. Each event is still matched to its exact
//! request: request k pins product `k mod M` of a bag of M = 4 × concurrency products,
//! which names k modulo M, and the event's seq names k within ± concurrency.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use harvest_proto::ws::{self as wire, ClientFrame, Encoding, Event, EventData};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{self, Api, Clock, Connector, Minter, TargetArgs, Ws, round2};
use crate::hist::{Histogram, ms};
use crate::report::{self, Summary, n, opt_ms};

/// Arguments of `harvest-loadtest fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Anonymous viewer connections.
    #[arg(long, default_value_t = 10_000)]
    pub viewers: u64,
    /// Token-holding chat connections (each sends at most 1 message per second, within
    /// the server's default chat limit of 1/s with a burst of 5).
    #[arg(long, default_value_t = 500)]
    pub chatters: u64,
    /// Commerce room events per second (pin toggles through the HTTP API).
    #[arg(long, default_value_t = 20.0)]
    pub commerce_rate: f64,
    /// Chat messages per second offered by all chatters together.
    #[arg(long, default_value_t = 500.0)]
    pub chat_rate: f64,
    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Longest wait after the run for commerce events still on their way, in seconds.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
    /// Pause between the end of the connect phase and the start of the run, in seconds.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Pin requests in flight at once (a tick finding all of them busy is skipped and
    /// counted in `commerce_skipped`).
    #[arg(long, default_value_t = 16)]
    pub publish_concurrency: u64,
    /// What commerce latency is measured from.
    #[arg(long, value_enum, default_value_t = LatencyFrom::RequestSend)]
    pub latency_from: LatencyFrom,
    /// Spread the viewers round-robin over these nodes (repeat the option; include
    /// `--url` to keep viewers there too) instead of connecting them all to `--url`.
    /// Publishing and chat stay on `--url`; server CPU and RSS are summed over every
    /// node.
    #[arg(long = "viewer-url", value_name = "URL")]
    pub viewer_urls: Vec<String>,
    /// F3: `--target nats`, `--ramp` and their options.
    #[command(flatten)]
    pub ramp: crate::ramp::RampArgs,
}

/// The start point of the commerce latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyFrom {
    /// When the pin request was sent (client clock, monotonic).
    RequestSend,
    /// The event's `ts` (server clock, same machine), against the client's wall clock.
    ServerTs,
}

impl LatencyFrom {
    fn as_str(self) -> &'static str {
        match self {
            Self::RequestSend => "request_send",
            Self::ServerTs => "server_ts",
        }
    }
}

impl FanoutArgs {
    fn check(&self) -> anyhow::Result<()> {
        self.target.check()?;
        if !(1..=1_000_000).contains(&self.viewers) {
            bail!("--viewers must be in 1..=1000000");
        }
        if self.chatters > 100_000 {
            bail!("--chatters must be at most 100000");
        }
        if !(self.commerce_rate > 0.0 && self.commerce_rate <= 1000.0) {
            bail!("--commerce-rate must be in (0, 1000] events/s");
        }
        if !(self.chat_rate >= 0.0 && self.chat_rate <= self.chatters as f64) {
            bail!(
                "--chat-rate must be in 0..=--chatters ({}): each chatter sends at most 1 message/s",
                self.chatters
            );
        }
        if !(1..=3600).contains(&self.duration) {
            bail!("--duration must be in 1..=3600 seconds");
        }
        if !(1..=64).contains(&self.publish_concurrency) {
            bail!("--publish-concurrency must be in 1..=64");
        }
        if self.drain > 60 || self.settle > 60 {
            bail!("--drain and --settle must be at most 60 seconds");
        }
        Ok(())
    }
}

/// The F1 figures (PERFORMANCE.md), then context.
#[derive(Debug, Default, Serialize)]
pub struct FanoutSummary {
    /// Nodes the viewers were spread over (1 unless `--viewer-url` was given).
    pub viewer_nodes: u64,
    pub viewers_connected: u64,
    pub commerce_sent: u64,
    pub commerce_expected: u64,
    pub commerce_received: u64,
    pub commerce_lost: u64,
    pub commerce_p50_ms: Option<f64>,
    pub commerce_p99_ms: Option<f64>,
    pub commerce_max_ms: Option<f64>,
    pub chat_offered: u64,
    pub chat_received_per_viewer_per_s: f64,
    pub deliveries_per_s: f64,
    pub server_rss_bytes: u64,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    pub client_bound: bool,
    pub connect_failures: u64,
    // Context.
    /// `request_send` or `server_ts`.
    pub commerce_latency_from: &'static str,
    /// (event, viewer) pairs the latency percentiles are computed from.
    pub commerce_latency_samples: u64,
    pub encoding: &'static str,
    pub viewers_requested: u64,
    pub chatters_connected: u64,
    /// Publish ticks (`commerce_rate × duration`).
    pub commerce_offered: u64,
    /// Ticks skipped because every pin request slot was busy (the server fell behind).
    pub commerce_skipped: u64,
    /// Pin requests made.
    pub commerce_attempted: u64,
    pub commerce_errors: u64,
    /// Chat messages the server refused (`rate_limited` and others).
    pub chat_refused: u64,
    /// Room events that arrived out of sequence at a viewer (must be 0).
    pub seq_gaps: u64,
    /// Viewers whose connection ended before the end of the run.
    pub viewers_disconnected: u64,
    pub connect_retries: u64,
    /// Length of the run (the chat and delivery rates are per second of it).
    pub duration_s: f64,
    /// Length of the window the CPU figures cover: the run plus the drain.
    pub measured_s: f64,
    pub server_cpu_cores: f64,
    pub client_cpu_cores: f64,
    /// WebSocket frames received by the viewers per second of the run (the server
    /// batches several events into one frame when a viewer has a backlog).
    pub frames_per_s: f64,
    /// Commerce latency from the event's server `ts` (the fan-out part alone).
    pub commerce_server_ts_p50_ms: Option<f64>,
    pub commerce_server_ts_p99_ms: Option<f64>,
    /// Round trip of the pin requests (the publish path through HTTP and SQL).
    pub pin_rtt_p50_ms: Option<f64>,
    pub pin_rtt_p99_ms: Option<f64>,
    /// CPU time of the whole machine over the measured window (/proc/stat), and the
    /// part of it used by neither the server nor this client (other processes).
    pub machine_cpu_s: f64,
    pub machine_softirq_s: f64,
    pub other_cpu_s: f64,
}

impl Summary for FanoutSummary {
    fn title(&self) -> &'static str {
        "harvest-loadtest fanout (F1)"
    }

    fn rows(&self) -> Vec<(&'static str, String, String)> {
        let pct = |a: u64, b: u64| {
            if b == 0 {
                String::new()
            } else {
                format!("{:.3}% of expected", a as f64 * 100.0 / b as f64)
            }
        };
        vec![
            (
                "viewers_connected",
                n(self.viewers_connected),
                format!(
                    "of {} (+{} chatters)",
                    n(self.viewers_requested),
                    n(self.chatters_connected)
                ),
            ),
            (
                "connect_failures",
                n(self.connect_failures),
                format!("{} retries", n(self.connect_retries)),
            ),
            (
                "commerce_sent",
                n(self.commerce_sent),
                format!(
                    "{} offered, {} skipped, {} errors",
                    n(self.commerce_offered),
                    n(self.commerce_skipped),
                    n(self.commerce_errors)
                ),
            ),
            (
                "commerce_expected",
                n(self.commerce_expected),
                "sent x viewers".into(),
            ),
            (
                "commerce_received",
                n(self.commerce_received),
                pct(self.commerce_received, self.commerce_expected),
            ),
            (
                "commerce_lost",
                n(self.commerce_lost),
                format!(
                    "{} seq gaps, {} viewers disconnected",
                    self.seq_gaps, self.viewers_disconnected
                ),
            ),
            (
                "commerce_p50_ms",
                opt_ms(self.commerce_p50_ms),
                format!("from {}", self.commerce_latency_from),
            ),
            (
                "commerce_p99_ms",
                opt_ms(self.commerce_p99_ms),
                format!("{} samples", n(self.commerce_latency_samples)),
            ),
            (
                "commerce_max_ms",
                opt_ms(self.commerce_max_ms),
                String::new(),
            ),
            (
                "commerce_server_ts_p99_ms",
                opt_ms(self.commerce_server_ts_p99_ms),
                format!(
                    "p50 {}: from the event's server ts (fan-out alone)",
                    opt_ms(self.commerce_server_ts_p50_ms)
                ),
            ),
            (
                "pin_rtt_p99_ms",
                opt_ms(self.pin_rtt_p99_ms),
                format!(
                    "p50 {}: pin request round trip",
                    opt_ms(self.pin_rtt_p50_ms)
                ),
            ),
            (
                "chat_offered",
                n(self.chat_offered),
                format!("{} refused", n(self.chat_refused)),
            ),
            (
                "chat_received_per_viewer_per_s",
                format!("{:.2}", self.chat_received_per_viewer_per_s),
                String::new(),
            ),
            (
                "deliveries_per_s",
                format!("{:.0}", self.deliveries_per_s),
                format!(
                    "events received by viewers, in {:.0} frames/s",
                    self.frames_per_s
                ),
            ),
            (
                "server_rss_bytes",
                n(self.server_rss_bytes),
                report::mib(self.server_rss_bytes),
            ),
            (
                "server_cpu_s",
                format!("{:.2}", self.server_cpu_s),
                format!(
                    "{:.2} cores over {:.1} s",
                    self.server_cpu_cores, self.measured_s
                ),
            ),
            (
                "client_cpu_s",
                format!("{:.2}", self.client_cpu_s),
                format!("{:.2} cores", self.client_cpu_cores),
            ),
            (
                "other_cpu_s",
                format!("{:.2}", self.other_cpu_s),
                format!(
                    "machine total {:.2} s (softirq {:.2} s) less server and client",
                    self.machine_cpu_s, self.machine_softirq_s
                ),
            ),
            (
                "client_bound",
                self.client_bound.to_string(),
                if self.client_bound {
                    "the client used > 90% of a core: these figures say little about the server"
                        .into()
                } else {
                    String::new()
                },
            ),
        ]
    }
}

/// State shared by the publisher, the viewers and the chatters.
struct Shared {
    clock: Clock,
    encoding: Encoding,
    latency_from: LatencyFrom,
    /// The room's last seq before the run; commerce event k (from 0) is `base + k + 1`.
    base_seq: AtomicU64,
    /// Send time (µs on `clock`) of pin request k; 0 = not sent.
    send_us: Box<[AtomicU64]>,
    /// The pinned products' ids and their index (M of them).
    products: HashMap<String, u64>,
    /// The run window on `clock`, µs; `end` is u64::MAX until the run starts.
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    /// Commerce latency from the pin request's send time.
    from_send: Histogram,
    /// Commerce latency from the event's server `ts`.
    from_ts: Histogram,
    /// Round trip of the pin requests.
    pin_rtt: Histogram,
    viewer_commerce: Box<[AtomicU32]>,
    viewer_connected: Box<[AtomicBool]>,
    commerce_received: AtomicU64,
    chat_in_window: AtomicU64,
    events_in_window: AtomicU64,
    frames_in_window: AtomicU64,
    seq_gaps: AtomicU64,
    decode_errors: AtomicU64,
    viewers_disconnected: AtomicU64,
    chat_offered: AtomicU64,
    chat_refused: AtomicU64,
    stopping: AtomicBool,
}

impl Shared {
    fn in_window(&self, now_us: u64) -> bool {
        now_us >= self.window_start_us.load(Ordering::Relaxed)
            && now_us <= self.window_end_us.load(Ordering::Relaxed)
    }

    /// Records a commerce event's latency from its server `ts` and, when its seq maps
    /// to a pin request, from the request's send time.
    fn record_latency(
        &self,
        event: &Event,
        product_id: Option<&str>,
        (now_us, now_unix_us): (u64, i64),
        offset: &mut i64,
    ) {
        let from_ts = now_unix_us.saturating_sub(event.ts.saturating_mul(1000));
        self.from_ts.record(u64::try_from(from_ts).unwrap_or(0));
        let (Some(seq), Some(&product)) =
            (event.seq, product_id.and_then(|id| self.products.get(id)))
        else {
            return;
        };
        let base = self.base_seq.load(Ordering::Acquire);
        let Some(k) = request_of(seq, base, *offset, product, self.products.len() as u64) else {
            return;
        };
        *offset = k as i64 - (seq - base - 1) as i64;
        let Some(slot) = self.send_us.get(k as usize) else {
            return;
        };
        let sent = slot.load(Ordering::Acquire);
        if sent != 0 {
            self.from_send.record(now_us.saturating_sub(sent));
        }
    }

    /// The histogram of the headline commerce latency.
    fn latency(&self) -> &Histogram {
        match self.latency_from {
            LatencyFrom::RequestSend => &self.from_send,
            LatencyFrom::ServerTs => &self.from_ts,
        }
    }
}

/// The pin request (numbered from 0) that room event `seq` answers, when request k
/// pins product `k mod m`: the product gives k modulo m, and `seq - base - 1 + offset`
/// gives k give or take the requests in flight (reordered), which must stay under
/// m / 2. `offset` is the difference seen at the viewer's previous match: it follows
/// the requests that failed without being sequenced.
pub(crate) fn request_of(seq: u64, base: u64, offset: i64, product: u64, m: u64) -> Option<u64> {
    let k0 = i64::try_from(seq.checked_sub(base + 1)?).ok()? + offset;
    let (m, product) = (i64::try_from(m).ok()?, i64::try_from(product).ok()?);
    if m == 0 {
        return None;
    }
    let r = (product - k0).rem_euclid(m);
    let k = if r <= m / 2 { k0 + r } else { k0 + r - m };
    u64::try_from(k).ok()
}

/// RSS and CPU time summed over the nodes.
async fn sample_nodes(apis: &[Api]) -> anyhow::Result<common::ServerSample> {
    let mut total = common::ServerSample {
        rss_bytes: 0,
        cpu_s: 0.0,
    };
    for api in apis {
        let s = api.server_sample().await?;
        total.rss_bytes += s.rss_bytes;
        total.cpu_s += s.cpu_s;
    }
    Ok(total)
}

/// Runs the scenario.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    if args.ramp.selected() {
        return crate::ramp::run(args).await;
    }
    args.check()?;
    let json = args.target.json;
    let connections = args.viewers + args.chatters;
    common::check_nofile(connections)?;
    let target = common::Target::resolve(&args.target.url, args.target.allow_remote).await?;
    Api::new(&target, None)?.check_reachable().await?;
    let mut viewer_targets = Vec::new();
    for url in &args.viewer_urls {
        let t = common::Target::resolve(url, args.target.allow_remote).await?;
        Api::new(&t, None)?.check_reachable().await?;
        viewer_targets.push(t);
    }
    if viewer_targets.is_empty() {
        viewer_targets.push(target.clone());
    }
    // Every node whose CPU and memory the run accounts for.
    let mut node_addrs = vec![target.addr];
    let mut node_apis = vec![Api::new(&target, None)?];
    for t in &viewer_targets {
        if !node_addrs.contains(&t.addr) {
            node_addrs.push(t.addr);
            node_apis.push(Api::new(t, None)?);
        }
    }
    let secret = args.target.jwt_secret.as_deref().context(
        "fanout needs --jwt-secret (or HARVEST_JWT_SECRET): the secret the server signs tokens \
         with, to mint the streamer's and the chatters' tokens",
    )?;
    let run_id = common::run_id();
    let ttl = Duration::from_secs(args.target.connect_timeout + args.duration + 3600);
    let minter = Minter::new(secret, ttl)?;
    let streamer = format!("lt-streamer-{run_id}");
    let api = Api::new(
        &target,
        Some(minter.token(&streamer, "Load-test streamer", &["streamer"])?),
    )?;

    // Server-side state: M products in the bag of a live room.
    let (room_id, product_ids) = api
        .live_room_with_bag(
            &run_id,
            (4 * args.publish_concurrency).max(2),
            &format!("Load test {run_id}"),
        )
        .await?;
    report::note(
        None,
        format!(
            "room {room_id}: connecting {} viewers and {} chatters to {}",
            args.viewers, args.chatters, target.base
        ),
    );

    let capacity = (args.commerce_rate * args.duration as f64).ceil() as usize + 16;
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        encoding: args.target.encoding(),
        latency_from: args.latency_from,
        base_seq: AtomicU64::new(0),
        send_us: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        products: product_ids.iter().cloned().zip(0..).collect(),
        window_start_us: AtomicU64::new(u64::MAX),
        window_end_us: AtomicU64::new(u64::MAX),
        from_send: Histogram::new(),
        from_ts: Histogram::new(),
        pin_rtt: Histogram::new(),
        viewer_commerce: (0..args.viewers).map(|_| AtomicU32::new(0)).collect(),
        viewer_connected: (0..args.viewers).map(|_| AtomicBool::new(false)).collect(),
        commerce_received: AtomicU64::new(0),
        chat_in_window: AtomicU64::new(0),
        events_in_window: AtomicU64::new(0),
        frames_in_window: AtomicU64::new(0),
        seq_gaps: AtomicU64::new(0),
        decode_errors: AtomicU64::new(0),
        viewers_disconnected: AtomicU64::new(0),
        chat_offered: AtomicU64::new(0),
        chat_refused: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    });

    // Connect: chatters first, then viewers, with bounded concurrency and rate.
    let connector = Connector::new(&target, &args.target);
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    let mut tasks = JoinSet::new();
    let chat_period = if args.chat_rate > 0.0 {
        Some(Duration::from_secs_f64(
            args.chatters as f64 / args.chat_rate,
        ))
    } else {
        None
    };
    let run_len = Duration::from_secs(args.duration);
    for i in 0..args.chatters {
        let token = minter.token(
            &format!("lt-chatter-{run_id}-{i}"),
            &format!("chatter {i}"),
            &["viewer"],
        )?;
        let url = target.ws_url(&room_id, Some(&token));
        let (connector, shared, start_rx) = (connector.clone(), shared.clone(), start_rx.clone());
        let offset = Duration::from_secs_f64(i as f64 / args.chat_rate.max(1e-9));
        tasks.spawn(async move {
            if let Some((ws, _)) = connector.open(&url).await {
                chatter(ws, shared, start_rx, chat_period, offset, run_len, i).await;
            }
        });
    }
    let viewer_urls: Vec<String> = viewer_targets
        .iter()
        .map(|t| t.ws_url(&room_id, None))
        .collect();
    for i in 0..args.viewers {
        let url = viewer_urls[i as usize % viewer_urls.len()].clone();
        let (connector, shared) = (connector.clone(), shared.clone());
        tasks.spawn(async move {
            if let Some((ws, first)) = connector.open(&url).await {
                viewer(ws, first, shared, i as usize).await;
            }
        });
    }
    let bar = report::bar(connections, "connect");
    let connect_deadline =
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
        if done >= connections || tokio::time::Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    let viewers_connected = shared
        .viewer_connected
        .iter()
        .filter(|c| c.load(Ordering::Relaxed))
        .count() as u64;
    let all_connected = connector.stats.connected.load(Ordering::Relaxed);
    let connect_failures = connector.stats.failed.load(Ordering::Relaxed);
    if let Some(e) = connector.stats.last_error() {
        report::note(
            None,
            format!("{connect_failures} connections failed; last error: {e}"),
        );
    }
    if viewers_connected == 0 {
        tasks.shutdown().await;
        let _ = api.end_room(&room_id).await;
        bail!("no viewer could connect to {}", target.base);
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    // Run.
    let base = api
        .last_seq(&room_id)
        .await
        .context("reading the room's last seq")?;
    shared.base_seq.store(base, Ordering::Release);
    let server_before = sample_nodes(&node_apis).await?;
    let client_before = common::client_cpu_s();
    let machine_before = common::machine_cpu_s();
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let start_us = shared.clock.now_us() + 100_000;
    shared.window_start_us.store(start_us, Ordering::Relaxed);
    shared
        .window_end_us
        .store(start_us + args.duration * 1_000_000, Ordering::Relaxed);
    let _ = start_tx.send(Some(start));
    let end = start + run_len;
    // The publisher runs on a thread of its own so the viewers' work does not delay
    // its requests (and so inflate the measured latency).
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let (api, room_id, product_ids, shared) = (
            api.fresh()?,
            room_id.clone(),
            product_ids.clone(),
            shared.clone(),
        );
        let concurrency = args.publish_concurrency as usize;
        let rate = args.commerce_rate;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the publisher's runtime")?;
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let outcome = runtime.block_on(publish(
                    Publisher {
                        api,
                        room_id,
                        product_ids,
                        shared,
                        concurrency,
                    },
                    start,
                    end,
                    rate,
                ));
                let _ = done_tx.send(outcome);
            })
            .context("cannot start the publisher's thread")?;
    }

    let bar = report::bar(args.duration, "run");
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let elapsed = start.elapsed().as_secs_f64().max(0.001);
        bar.set_position(elapsed as u64);
        bar.set_message(format!(
            "commerce {} recv, chat {:.1}/viewer/s, {:.0} deliveries/s",
            n(shared.commerce_received.load(Ordering::Relaxed)),
            shared.chat_in_window.load(Ordering::Relaxed) as f64
                / viewers_connected as f64
                / elapsed,
            shared.events_in_window.load(Ordering::Relaxed) as f64 / elapsed,
        ));
    }
    bar.finish();
    let outcome = tokio::time::timeout(Duration::from_secs(15), done_rx)
        .await
        .context("the publisher did not stop")?
        .context("the publisher failed")?;

    // Drain: wait for the commerce events still on their way.
    let published = api
        .last_seq(&room_id)
        .await
        .context("reading the room's last seq")?
        .saturating_sub(base);
    let drain_end = tokio::time::Instant::now() + Duration::from_secs(args.drain);
    loop {
        let (alive, received) = alive_received(&shared, published);
        if received >= alive * published || tokio::time::Instant::now() >= drain_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let measured_s = start.elapsed().as_secs_f64();
    let client_cpu_s = common::client_cpu_s() - client_before;
    let (machine_cpu_s, softirq_s) = {
        let (busy, softirq) = common::machine_cpu_s();
        (busy - machine_before.0, softirq - machine_before.1)
    };
    let server_after = sample_nodes(&node_apis).await?;

    shared.stopping.store(true, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Err(e) = api.end_room(&room_id).await {
        report::note(None, format!("could not end room {room_id}: {e:#}"));
    }

    let commerce_received: u64 = shared
        .viewer_commerce
        .iter()
        .map(|c| u64::from(c.load(Ordering::Relaxed)).min(published))
        .sum();
    let commerce_expected = published * viewers_connected;
    let duration_s = args.duration as f64;
    let server_cpu_s = (server_after.cpu_s - server_before.cpu_s).max(0.0);
    let latency = shared.latency();
    let samples = latency.count();
    let decode_errors = shared.decode_errors.load(Ordering::Relaxed);
    if decode_errors > 0 {
        report::note(None, format!("{decode_errors} frames could not be decoded"));
    }
    if let Some(e) = &outcome.last_error {
        report::note(
            None,
            format!("{} pin requests failed; last error: {e}", outcome.errors),
        );
    }
    let summary = FanoutSummary {
        viewers_connected,
        commerce_sent: outcome.sent,
        commerce_expected,
        commerce_received,
        commerce_lost: commerce_expected - commerce_received,
        commerce_p50_ms: latency.quantile(0.50).map(ms),
        commerce_p99_ms: latency.quantile(0.99).map(ms),
        commerce_max_ms: (samples > 0).then(|| ms(latency.max())),
        chat_offered: shared.chat_offered.load(Ordering::Relaxed),
        chat_received_per_viewer_per_s: round2(
            shared.chat_in_window.load(Ordering::Relaxed) as f64
                / viewers_connected as f64
                / duration_s,
        ),
        deliveries_per_s: round2(
            shared.events_in_window.load(Ordering::Relaxed) as f64 / duration_s,
        ),
        viewer_nodes: viewer_targets.len() as u64,
        server_rss_bytes: server_after.rss_bytes,
        server_cpu_s: round2(server_cpu_s),
        client_cpu_s: round2(client_cpu_s),
        client_bound: client_cpu_s > 0.9 * measured_s,
        connect_failures,
        commerce_latency_from: args.latency_from.as_str(),
        commerce_latency_samples: samples,
        encoding: if args.target.protobuf {
            "protobuf"
        } else {
            "json"
        },
        viewers_requested: args.viewers,
        chatters_connected: all_connected - viewers_connected,
        commerce_offered: outcome.offered,
        commerce_skipped: outcome.skipped,
        commerce_attempted: outcome.attempted,
        commerce_errors: outcome.errors,
        chat_refused: shared.chat_refused.load(Ordering::Relaxed),
        seq_gaps: shared.seq_gaps.load(Ordering::Relaxed),
        viewers_disconnected: shared.viewers_disconnected.load(Ordering::Relaxed),
        connect_retries: connector.stats.retries.load(Ordering::Relaxed),
        duration_s,
        measured_s: round2(measured_s),
        server_cpu_cores: round2(server_cpu_s / measured_s),
        client_cpu_cores: round2(client_cpu_s / measured_s),
        frames_per_s: round2(shared.frames_in_window.load(Ordering::Relaxed) as f64 / duration_s),
        commerce_server_ts_p50_ms: shared.from_ts.quantile(0.50).map(ms),
        commerce_server_ts_p99_ms: shared.from_ts.quantile(0.99).map(ms),
        pin_rtt_p50_ms: shared.pin_rtt.quantile(0.50).map(ms),
        pin_rtt_p99_ms: shared.pin_rtt.quantile(0.99).map(ms),
        machine_cpu_s: round2(machine_cpu_s),
        machine_softirq_s: round2(softirq_s),
        other_cpu_s: round2((machine_cpu_s - server_cpu_s - client_cpu_s).max(0.0)),
    };
    report::emit(&summary, json)
}

/// Connected viewers still open, and the commerce events they received (capped at
/// `published` each).
fn alive_received(shared: &Shared, published: u64) -> (u64, u64) {
    let mut alive = 0;
    let mut received = 0;
    for (connected, count) in shared
        .viewer_connected
        .iter()
        .zip(shared.viewer_commerce.iter())
    {
        if connected.load(Ordering::Relaxed) {
            alive += 1;
            received += u64::from(count.load(Ordering::Relaxed)).min(published);
        }
    }
    (alive, received)
}

#[derive(Default)]
struct PublishOutcome {
    offered: u64,
    skipped: u64,
    attempted: u64,
    sent: u64,
    errors: u64,
    last_error: Option<String>,
}

struct Publisher {
    api: Api,
    room_id: String,
    product_ids: Vec<String>,
    shared: Arc<Shared>,
    concurrency: usize,
}

/// Pins the next product of the bag at `rate` per second from `start` to `end`, with at
/// most `concurrency` requests in flight, recording each request's send time.
async fn publish(
    publisher: Publisher,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    rate: f64,
) -> PublishOutcome {
    let publisher = Arc::new(publisher);
    let outcome = Arc::new(std::sync::Mutex::new(PublishOutcome::default()));
    let mut ticker = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // In-flight requests in send order: request k + concurrency waits for request k, so
    // the server's order of any two requests differs from theirs by less than
    // `concurrency` places.
    let mut window = std::collections::VecDeque::new();
    let mut k = 0u64;
    loop {
        ticker.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        while window
            .front()
            .is_some_and(|r: &tokio::task::JoinHandle<()>| r.is_finished())
        {
            window.pop_front();
        }
        if window.len() >= publisher.concurrency {
            if let Ok(mut o) = outcome.lock() {
                o.offered += 1;
                o.skipped += 1;
            }
            continue;
        };
        let Some(send_slot) = publisher.shared.send_us.get(k as usize) else {
            break;
        };
        if let Ok(mut o) = outcome.lock() {
            o.offered += 1;
            o.attempted += 1;
        }
        send_slot.store(publisher.shared.clock.now_us().max(1), Ordering::Release);
        let (publisher, outcome) = (publisher.clone(), outcome.clone());
        let product = &publisher.product_ids[k as usize % publisher.product_ids.len()];
        let product = product.clone();
        window.push_back(tokio::spawn(async move {
            let sent_at = std::time::Instant::now();
            let answer = publisher.api.pin(&publisher.room_id, Some(&product)).await;
            publisher
                .shared
                .pin_rtt
                .record(sent_at.elapsed().as_micros() as u64);
            if let Ok(mut o) = outcome.lock() {
                match answer {
                    Ok(()) => o.sent += 1,
                    Err(e) => {
                        o.errors += 1;
                        o.last_error = Some(format!("{e:#}"));
                    }
                }
            }
        }));
        k += 1;
    }
    // Requests time out after HTTP_TIMEOUT, so this ends.
    for request in window {
        let _ = request.await;
    }
    let mut outcome = outcome
        .lock()
        .map(|mut o| std::mem::take(&mut *o))
        .unwrap_or_default();
    outcome.offered = outcome.offered.max(outcome.attempted);
    outcome
}

/// An anonymous viewer: counts commerce events (and their latency) and chat messages.
async fn viewer(mut ws: Ws, first: Vec<Event>, shared: Arc<Shared>, index: usize) {
    shared.viewer_connected[index].store(true, Ordering::Relaxed);
    let mut last_seq = match first.first().map(|e| &e.data) {
        Some(EventData::SessionWelcome(w)) => w.last_seq,
        _ => 0,
    };
    let now = (shared.clock.now_us(), common::unix_us());
    let mut offset = 0;
    count_events(&shared, index, &first, now, &mut last_seq, &mut offset);
    while let Some(message) = ws.next().await {
        let message = match message {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(m) => m,
        };
        let now = (shared.clock.now_us(), common::unix_us());
        match common::decode(shared.encoding, &message) {
            None => {}
            Some(Ok(events)) => {
                count_events(&shared, index, &events, now, &mut last_seq, &mut offset);
            }
            Some(Err(_)) => {
                shared.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if !shared.stopping.load(Ordering::Relaxed) {
        shared.viewer_connected[index].store(false, Ordering::Relaxed);
        shared.viewers_disconnected.fetch_add(1, Ordering::Relaxed);
    }
}

fn count_events(
    shared: &Shared,
    index: usize,
    events: &[Event],
    (now_us, now_unix_us): (u64, i64),
    last_seq: &mut u64,
    offset: &mut i64,
) {
    let mut commerce = 0;
    let mut chat = 0;
    for event in events {
        if let Some(seq) = event.seq {
            if seq != *last_seq + 1 {
                shared.seq_gaps.fetch_add(1, Ordering::Relaxed);
            }
            *last_seq = seq;
        }
        match &event.data {
            EventData::ProductPinned(pinned) => {
                commerce += 1;
                let product = pinned.product.as_ref().map(|p| p.id.as_str());
                shared.record_latency(event, product, (now_us, now_unix_us), offset);
            }
            EventData::ChatMessage(_) => chat += 1,
            _ => {}
        }
    }
    if commerce > 0 {
        shared.viewer_commerce[index].fetch_add(commerce, Ordering::Relaxed);
        shared
            .commerce_received
            .fetch_add(u64::from(commerce), Ordering::Relaxed);
    }
    if shared.in_window(now_us) {
        shared.chat_in_window.fetch_add(chat, Ordering::Relaxed);
        shared
            .events_in_window
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        shared.frames_in_window.fetch_add(1, Ordering::Relaxed);
    }
}

/// A chatter: once the run starts, sends one `chat.send` every `period` (first one at
/// `offset`) until the run ends; reads its socket to count refusals.
async fn chatter(
    ws: Ws,
    shared: Arc<Shared>,
    mut start_rx: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    period: Option<Duration>,
    offset: Duration,
    run_len: Duration,
    index: u64,
) {
    let (mut sink, mut stream) = ws.split();
    let reader_shared = shared.clone();
    let reader = async move {
        while let Some(Ok(message)) = stream.next().await {
            let refused = match (&message, reader_shared.encoding) {
                // Cheap filter: only frames holding an error event are decoded.
                (Message::Text(text), Encoding::Json) => {
                    text.as_str().contains("\"type\":\"error\"")
                        && refusals(wire::decode_json_frame(text.as_bytes())) > 0
                }
                (Message::Binary(bytes), Encoding::Protobuf) => {
                    refusals(wire::decode_proto_frame(bytes)) > 0
                }
                (Message::Close(_), _) => break,
                _ => false,
            };
            if refused {
                reader_shared.chat_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let writer = async move {
        let Some(period) = period else {
            return std::future::pending().await;
        };
        let start = loop {
            if let Some(start) = *start_rx.borrow_and_update() {
                break start;
            }
            if start_rx.changed().await.is_err() {
                return;
            }
        };
        let end = start + run_len;
        let mut ticker = tokio::time::interval_at(start + offset, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0u64;
        loop {
            ticker.tick().await;
            if tokio::time::Instant::now() >= end {
                break;
            }
            let frame = ClientFrame::ChatSend(wire::ChatSend {
                text: format!("lt {index} #{sent}: are the kiwis sweet?"),
                r#ref: None,
            });
            let message = match shared.encoding {
                Encoding::Json => {
                    match String::from_utf8(wire::encode_client_json(&frame).to_vec()) {
                        Ok(text) => Message::text(text),
                        Err(_) => break,
                    }
                }
                Encoding::Protobuf => Message::binary(wire::encode_client_proto(&frame)),
            };
            if sink.send(message).await.is_err() {
                break;
            }
            sent += 1;
            shared.chat_offered.fetch_add(1, Ordering::Relaxed);
        }
        // Keep the connection open until the run is torn down.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

/// How many `error` events refusing a frame a decoded frame holds.
fn refusals(frame: Result<Vec<Event>, wire::EventDecodeError>) -> usize {
    frame
        .map(|events| {
            events
                .iter()
                .filter(|e| matches!(e.data, EventData::ErrorEvent(_)))
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names PERFORMANCE.md fixes for F1.
    const F1_FIGURES: [&str; 16] = [
        "viewers_connected",
        "commerce_sent",
        "commerce_expected",
        "commerce_received",
        "commerce_lost",
        "commerce_p50_ms",
        "commerce_p99_ms",
        "commerce_max_ms",
        "chat_offered",
        "chat_received_per_viewer_per_s",
        "deliveries_per_s",
        "server_rss_bytes",
        "server_cpu_s",
        "client_cpu_s",
        "client_bound",
        "connect_failures",
    ];

    #[test]
    fn summary_has_every_f1_figure() {
        let value = serde_json::to_value(FanoutSummary::default()).unwrap();
        let object = value.as_object().unwrap();
        for name in F1_FIGURES {
            assert!(object.contains_key(name), "missing {name}");
        }
        assert!(object["client_bound"].is_boolean());
        assert!(
            object["commerce_p99_ms"].is_null(),
            "no samples: null, not 0"
        );
    }

    #[test]
    fn events_map_to_their_request_despite_reordering_and_failures() {
        // m = 8 products, base seq 100: request k pins product k % 8.
        assert_eq!(request_of(101, 100, 0, 0, 8), Some(0));
        assert_eq!(request_of(110, 100, 0, 1, 8), Some(9));
        // Requests 9 and 10 sequenced in the opposite order.
        assert_eq!(request_of(110, 100, 0, 2, 8), Some(10));
        assert_eq!(request_of(111, 100, 0, 1, 8), Some(9));
        // Request 3 failed unsequenced: later seqs lag their request by one.
        assert_eq!(request_of(104, 100, 0, 4, 8), Some(4));
        assert_eq!(request_of(105, 100, 0, 5, 8), Some(5));
        // Before the run, or a product of no request: no match.
        assert_eq!(request_of(100, 100, 0, 0, 8), None);
        assert_eq!(request_of(101, 100, 0, 7, 8), None);
        assert_eq!(request_of(101, 100, 0, 0, 0), None);
        // Twelve requests failed unsequenced: past m / 2 without the offset, exact with
        // the offset of the previous match.
        assert_eq!(request_of(151, 100, 0, 6, 8), Some(54));
        assert_eq!(request_of(151, 100, 12, 6, 8), Some(62));
    }

    fn product(id: &str) -> wire::Product {
        wire::Product {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn viewers_count_and_time_commerce_events() {
        let shared = Shared {
            clock: Clock::new(),
            encoding: Encoding::Json,
            latency_from: LatencyFrom::RequestSend,
            base_seq: AtomicU64::new(10),
            send_us: (0..4).map(|_| AtomicU64::new(0)).collect(),
            products: [("p0".to_owned(), 0), ("p1".to_owned(), 1)].into(),
            window_start_us: AtomicU64::new(0),
            window_end_us: AtomicU64::new(u64::MAX),
            from_send: Histogram::new(),
            from_ts: Histogram::new(),
            pin_rtt: Histogram::new(),
            viewer_commerce: Box::new([AtomicU32::new(0)]),
            viewer_connected: Box::new([AtomicBool::new(true)]),
            commerce_received: AtomicU64::new(0),
            chat_in_window: AtomicU64::new(0),
            events_in_window: AtomicU64::new(0),
            frames_in_window: AtomicU64::new(0),
            seq_gaps: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            viewers_disconnected: AtomicU64::new(0),
            chat_offered: AtomicU64::new(0),
            chat_refused: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        };
        shared.send_us[0].store(1_000, Ordering::Relaxed);
        shared.send_us[1].store(2_000, Ordering::Relaxed);
        let pinned = |seq, id: &str| {
            Event::room(
                seq,
                1,
                wire::ProductPinned {
                    product: Some(product(id)),
                },
            )
        };
        let chat = Event::unsequenced(
            0,
            wire::ChatMessage {
                id: "m".into(),
                user_id: "u".into(),
                name: "n".into(),
                text: "t".into(),
            },
        );
        let mut last = 10;
        let mut offset = 0;
        // Request 0 (p0) at seq 11; request 1 (p1) at seq 12.
        count_events(
            &shared,
            0,
            &[pinned(11, "p0"), chat.clone()],
            (6_000, 4_000),
            &mut last,
            &mut offset,
        );
        count_events(
            &shared,
            0,
            &[pinned(12, "p1")],
            (9_000, 4_000),
            &mut last,
            &mut offset,
        );
        assert_eq!(shared.from_send.count(), 2);
        let p50 = shared.from_send.quantile(0.5).unwrap();
        assert!((5_000..=5_000 + 5_000 / 64).contains(&p50), "{p50}");
        assert_eq!(shared.from_send.max(), 7_000);
        assert_eq!(shared.from_ts.max(), 3_000, "ts 1 ms, received at 4 ms");
        // A gap and an unknown product: counted, not timed from a send.
        count_events(
            &shared,
            0,
            &[pinned(14, "other")],
            (9_000, 4_000),
            &mut last,
            &mut offset,
        );
        assert_eq!(last, 14);
        assert_eq!(shared.seq_gaps.load(Ordering::Relaxed), 1);
        assert_eq!(shared.from_send.count(), 2);
        assert_eq!(shared.viewer_commerce[0].load(Ordering::Relaxed), 3);
        assert_eq!(shared.chat_in_window.load(Ordering::Relaxed), 1);
        assert_eq!(shared.events_in_window.load(Ordering::Relaxed), 4);
    }
}
