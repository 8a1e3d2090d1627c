//! F3, against a peer: one room (Harvest) or one subject (nats-server's WebSocket
//! listener), many subscribers, and a publisher whose rate is stepped up (100, 200, 400,
//! ... msgs/s, 10 s per step) until the p99 delivery latency passes 100 ms or a message
//! is lost. The figure is `max_rate_at_p99_100ms`: the highest step that passed.
//!
//! The same client measures both targets the same way: the publisher stamps message k
//! with its send time on a monotonic clock, and a subscriber's latency is the time from
//! that stamp to the moment its task parsed the message.
//!
//! - Harvest: message k is a `test.message` room event published through the
//!   admin-only test publish path (`POST /api/v1/admin/rooms/{id}/test-events`, served
//!   when the server runs with `HARVEST_TEST_PUBLISH=true`), whose text holds `k`, the
//!   send time and padding up to `--message-bytes`, like the NATS payload; the event
//!   takes the hub, the bus and the room event log like any room event. With
//!   `--harvest-publish pin` it is a `product.pinned` room event published through
//!   `POST /api/v1/rooms/{id}/pin` (a few in flight), exactly as F1 does, and the
//!   event's seq names k (see `fanout::request_of`). Subscribers are anonymous viewers
//!   of the room's WebSocket.
//! - NATS: message k is `PUB <subject> <bytes>` with a payload holding `k`, the send
//!   time and padding up to `--message-bytes`; subscribers speak the NATS text protocol
//!   over WebSocket (`CONNECT`, `SUB`, `PING`/`PONG`, `MSG`).
//!
//! After each step the publisher stops and waits (at most `--step-drain` seconds) for
//! the step's messages still on their way, so every step is judged on its own messages.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use harvest_proto::ws::{Event, EventData};
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::common::{self, Api, Clock, Connector, Minter, Target, Ws, round2};
use crate::fanout::{FanoutArgs, request_of};
use crate::hist::{Histogram, ms};
use crate::report::{self, Summary, n, opt_ms};

/// Which server `fanout` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// `harvest serve` (`--url`).
    Harvest,
    /// nats-server's WebSocket listener (`--nats-url`).
    Nats,
}

impl Peer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Harvest => "harvest",
            Self::Nats => "nats",
        }
    }
}

/// How F3 publishes to Harvest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HarvestPublish {
    /// `POST /api/v1/admin/rooms/{id}/test-events`: `test.message` room events.
    TestEvents,
    /// `POST /api/v1/rooms/{id}/pin`: `product.pinned` room events.
    Pin,
}

/// The F3 options of `harvest-loadtest fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct RampArgs {
    /// Server to measure: `harvest` (F1, or F3 with --ramp) or `nats` (F3 client against
    /// nats-server's WebSocket listener; a single step at --commerce-rate without --ramp).
    #[arg(long = "target", value_enum, default_value_t = Peer::Harvest)]
    pub peer: Peer,
    /// F3: step the publish rate up until p99 > --p99-limit-ms or any loss; reports
    /// `max_rate_at_p99_100ms`.
    #[arg(long)]
    pub ramp: bool,
    /// WebSocket URL of nats-server's `websocket {}` listener (no TLS).
    #[arg(long, default_value = "ws://127.0.0.1:9222")]
    pub nats_url: String,
    /// NATS subject every subscriber subscribes to and the publisher publishes on.
    #[arg(long, default_value = "harvest.f3")]
    pub subject: String,
    /// Payload size in bytes (sequence number, send time and padding): the NATS
    /// payload, or the text of Harvest's `test.message`.
    #[arg(long, default_value_t = 200)]
    pub message_bytes: usize,
    /// How F3 publishes to Harvest: `test-events` (the admin-only test publish path; the
    /// server needs HARVEST_TEST_PUBLISH=true) or `pin` (product pins through the API,
    /// with their SQL writes).
    #[arg(long, value_enum, default_value_t = HarvestPublish::TestEvents)]
    pub harvest_publish: HarvestPublish,
    /// First publish rate of the ramp, messages per second.
    #[arg(long, default_value_t = 100.0)]
    pub ramp_start: f64,
    /// Each step's rate is the previous one times this.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_factor: f64,
    /// Highest rate the ramp tries (a bound on the run's length and message count).
    #[arg(long, default_value_t = 51_200.0)]
    pub ramp_max: f64,
    /// Length of each step, in seconds.
    #[arg(long, default_value_t = 10)]
    pub step: u64,
    /// Longest wait after a step for its messages still on their way, in seconds.
    #[arg(long, default_value_t = 5)]
    pub step_drain: u64,
    /// A step passes when its p99 is at most this (and nothing was lost).
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// The server's process id, to sample its CPU time and RSS from /proc (Harvest's
    /// own /metrics are used when this is not given).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write an HTML report with SVG charts (latency over time, the ramp curve) to
    /// this folder; F3 results of other targets already in it are charted alongside.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl RampArgs {
    /// Whether `fanout` runs this scenario instead of F1.
    pub fn selected(&self) -> bool {
        self.ramp || self.peer == Peer::Nats
    }

    /// The step rates: the ramp, or one step at `fixed` for `duration` seconds.
    fn rates(&self, fixed: f64) -> Vec<f64> {
        if !self.ramp {
            return vec![fixed];
        }
        let mut rates = Vec::new();
        let mut rate = self.ramp_start;
        while rate <= self.ramp_max * (1.0 + 1e-9) && rates.len() < 64 {
            rates.push(rate);
            rate *= self.ramp_factor;
        }
        rates
    }

    fn check(&self) -> anyhow::Result<()> {
        if !(self.ramp_start > 0.0 && self.ramp_start <= self.ramp_max) {
            bail!("--ramp-start must be in (0, --ramp-max]");
        }
        if !(..=200_000.0).contains(&self.ramp_max) {
            bail!("--ramp-max must be at most 200000 msgs/s");
        }
        if !(self.ramp_factor >= 1.1 && self.ramp_factor <= 10.0) {
            bail!("--ramp-factor must be in 1.1..=10");
        }
        if !(1..=600).contains(&self.step) {
            bail!("--step must be in 1..=600 seconds");
        }
        if self.step_drain > 60 {
            bail!("--step-drain must be at most 60 seconds");
        }
        if !(32..=65_536).contains(&self.message_bytes) {
            bail!("--message-bytes must be in 32..=65536");
        }
        if self.subject.is_empty() || self.subject.contains(char::is_whitespace) {
            bail!("--subject must be one NATS subject without spaces");
        }
        if self.p99_limit_ms.is_nan() || self.p99_limit_ms <= 0.0 {
            bail!("--p99-limit-ms must be positive");
        }
        Ok(())
    }
}

/// One step of the ramp.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepSummary {
    /// Offered publish rate, messages per second.
    pub rate: f64,
    /// Messages published (for Harvest: pin requests the server answered 200).
    pub published: u64,
    /// Published per second of the step.
    pub achieved_rate: f64,
    /// Publish ticks skipped because every request slot was busy (Harvest).
    pub skipped: u64,
    pub publish_errors: u64,
    pub subscribers: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Messages received by all subscribers per second of the step.
    pub deliveries_per_s: f64,
    /// WebSocket frames the subscribers received per second (several messages share a
    /// frame when the server batches).
    #[serde(default)]
    pub frames_per_s: f64,
    pub server_cpu_cores: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub client_cpu_cores: f64,
    pub client_bound: bool,
    pub passed: bool,
    /// Why the step failed (empty when it passed).
    pub verdict: String,
}

/// One second of the run (by send time): what was sent and how fast it arrived.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Second {
    pub t_s: u64,
    pub sent: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The F3 figure, then context.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RampSummary {
    pub max_rate_at_p99_100ms: f64,
    pub target: String,
    /// Whether the step that passed last, or the one that stopped the ramp, was
    /// client-bound (the client used more than 90% of a core).
    pub client_bound: bool,
    pub subscribers_requested: u64,
    pub subscribers_connected: u64,
    pub connect_failures: u64,
    pub connect_s: f64,
    /// Mean bytes of payload per delivered message as the subscribers saw it (NATS:
    /// the payload; Harvest: the JSON event inside the frame).
    pub message_bytes: f64,
    pub p99_limit_ms: f64,
    pub step_s: u64,
    pub stop_reason: String,
    pub steps: Vec<StepSummary>,
    pub timeline: Vec<Second>,
    pub load_avg_1m_before: Option<f64>,
}

impl Summary for RampSummary {
    fn title(&self) -> &'static str {
        "harvest-loadtest fanout --ramp (F3)"
    }

    fn rows(&self) -> Vec<(&'static str, String, String)> {
        let mut rows = vec![
            ("target", self.target.clone(), String::new()),
            (
                "subscribers_connected",
                n(self.subscribers_connected),
                format!(
                    "of {}, {} failed, in {:.1} s",
                    n(self.subscribers_requested),
                    n(self.connect_failures),
                    self.connect_s
                ),
            ),
            (
                "message_bytes",
                format!("{:.0}", self.message_bytes),
                "mean payload per delivered message".into(),
            ),
        ];
        for step in &self.steps {
            rows.push((
                "step",
                format!("{:.0}/s", step.rate),
                format!(
                    "{} p50 {} p99 {} max {} ms, lost {}, {:.0} deliveries/s in {:.0} frames/s, server {} client {:.2} cores{}",
                    if step.passed { "pass" } else { "FAIL" },
                    opt_ms(step.p50_ms),
                    opt_ms(step.p99_ms),
                    opt_ms(step.max_ms),
                    n(step.lost),
                    step.deliveries_per_s,
                    step.frames_per_s,
                    step.server_cpu_cores
                        .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                    step.client_cpu_cores,
                    if step.verdict.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", step.verdict)
                    }
                ),
            ));
        }
        rows.push((
            "max_rate_at_p99_100ms",
            format!("{:.0}", self.max_rate_at_p99_100ms),
            format!("msgs/s; stopped: {}", self.stop_reason),
        ));
        rows.push((
            "client_bound",
            self.client_bound.to_string(),
            if self.client_bound {
                "the client used > 90% of a core near the limit".into()
            } else {
                String::new()
            },
        ));
        rows
    }
}

/// Per-step tallies the subscribers update.
struct StepTally {
    latency: Histogram,
    received: AtomicU64,
}

/// State shared by the publisher and the subscribers.
struct Shared {
    clock: Clock,
    /// Start of the ramp on `clock`, µs.
    origin_us: AtomicU64,
    /// Send time of message k (µs on `clock`; 0 = not sent).
    sent_us: Box<[AtomicU64]>,
    /// Step of message k.
    step_of: Box<[AtomicU8]>,
    steps: Box<[StepTally]>,
    /// Latency by the second of the send time.
    seconds: Box<[Histogram]>,
    seconds_sent: Box<[AtomicU64]>,
    frames: AtomicU64,
    payload_bytes: AtomicU64,
    deliveries: AtomicU64,
    alive: AtomicU64,
    disconnected: AtomicU64,
    stopping: AtomicBool,
    // Harvest only.
    base_seq: AtomicU64,
    products: HashMap<String, u64>,
}

impl Shared {
    /// Records message k received at `now_us`, sent at `sent_us` (0: look it up).
    fn record(&self, k: u64, sent_us: u64, now_us: u64) {
        let Some(slot) = self.sent_us.get(k as usize) else {
            return;
        };
        let sent = if sent_us != 0 {
            sent_us
        } else {
            slot.load(Ordering::Acquire)
        };
        if sent == 0 {
            return;
        }
        let latency = now_us.saturating_sub(sent);
        let step = self.step_of[k as usize].load(Ordering::Relaxed) as usize;
        if let Some(tally) = self.steps.get(step) {
            tally.latency.record(latency);
            tally.received.fetch_add(1, Ordering::Relaxed);
        }
        let origin = self.origin_us.load(Ordering::Relaxed);
        let second = (sent.saturating_sub(origin) / 1_000_000) as usize;
        if let Some(h) = self.seconds.get(second) {
            h.record(latency);
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs F3 (or one fixed-rate step against NATS).
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let ramp = args.ramp.clone();
    ramp.check()?;
    if !(1..=1_000_000).contains(&args.viewers) {
        bail!("--viewers must be in 1..=1000000");
    }
    if !(1..=64).contains(&args.publish_concurrency) {
        bail!("--publish-concurrency must be in 1..=64");
    }
    args.target.check()?;
    let rates = ramp.rates(args.commerce_rate);
    let step_s = if ramp.ramp { ramp.step } else { args.duration };
    if !(1..=3600).contains(&step_s) {
        bail!("--duration must be in 1..=3600 seconds");
    }
    let load_before = common::load_avg_1m();
    common::check_nofile(args.viewers + 8)?;

    // Capacity: every message of every step, and every second of the run.
    let capacity: usize = rates
        .iter()
        .map(|r| (r * step_s as f64).ceil() as usize + 64)
        .sum();
    let run_seconds = rates.len() * (step_s + ramp.step_drain + 3) as usize + 8;

    let mut setup = match ramp.peer {
        Peer::Harvest => Setup::harvest(&args).await?,
        Peer::Nats => Setup::nats(&args).await?,
    };
    let clock = Clock::new();
    let shared = Arc::new(Shared {
        clock,
        origin_us: AtomicU64::new(0),
        sent_us: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        step_of: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
        steps: rates
            .iter()
            .map(|_| StepTally {
                latency: Histogram::new(),
                received: AtomicU64::new(0),
            })
            .collect(),
        seconds: (0..run_seconds).map(|_| Histogram::new()).collect(),
        seconds_sent: (0..run_seconds).map(|_| AtomicU64::new(0)).collect(),
        frames: AtomicU64::new(0),
        payload_bytes: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        alive: AtomicU64::new(0),
        disconnected: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        base_seq: AtomicU64::new(0),
        products: setup.product_ids.iter().cloned().zip(0..).collect(),
    });

    // Connect the subscribers.
    report::note(
        None,
        format!(
            "{}: connecting {} subscribers to {}",
            ramp.peer.as_str(),
            args.viewers,
            setup.describe()
        ),
    );
    let connect_started = std::time::Instant::now();
    let mut tasks = JoinSet::new();
    let stats = setup.connect_all(&args, &shared, &mut tasks).await?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let connected = shared.alive.load(Ordering::Relaxed);
    if connected == 0 {
        tasks.shutdown().await;
        setup.cleanup().await;
        bail!(
            "no subscriber could connect to {}{}",
            setup.describe(),
            stats
                .1
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    // The ramp runs on a thread of its own (publisher, drains, verdicts) so the
    // subscribers' work does not delay the publisher's sends.
    if let Some(room) = &setup.room_id {
        let base = setup
            .api
            .as_ref()
            .context("no API")?
            .last_seq(room)
            .await
            .context("reading the room's last seq")?;
        shared.base_seq.store(base, Ordering::Release);
    }
    let publisher = setup.publisher(&args).await?;
    let probe = setup.probe(&ramp)?;
    shared
        .origin_us
        .store(shared.clock.now_us(), Ordering::Relaxed);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let plan = Plan {
        rates: rates.clone(),
        step: Duration::from_secs(step_s),
        drain: Duration::from_secs(ramp.step_drain),
        p99_limit_us: (ramp.p99_limit_ms * 1000.0) as u64,
        stop_on_fail: ramp.ramp,
    };
    {
        let shared = shared.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the publisher's runtime")?;
        std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let outcome = runtime.block_on(run_ramp(publisher, probe, shared, plan));
                let _ = done_tx.send(outcome);
            })
            .context("cannot start the publisher's thread")?;
    }
    let ramp_bound = Duration::from_secs(rates.len() as u64 * (step_s + ramp.step_drain + 30) + 60);
    let outcome = tokio::time::timeout(ramp_bound, done_rx)
        .await
        .context("the ramp did not finish in time")?
        .context("the publisher failed")?;
    shared.stopping.store(true, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    setup.cleanup().await;
    let (steps, stop_reason) = outcome?;

    let max_rate = steps
        .iter()
        .take_while(|s| s.passed)
        .map(|s| s.rate)
        .fold(0.0, f64::max);
    let passed = steps.iter().take_while(|s| s.passed).count();
    let deciding = steps
        .get(passed.saturating_sub(1))
        .into_iter()
        .chain(steps.get(passed));
    let client_bound = deciding.into_iter().any(|s| s.client_bound);
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let timeline = shared
        .seconds
        .iter()
        .zip(shared.seconds_sent.iter())
        .enumerate()
        .map(|(t, (h, sent))| Second {
            t_s: t as u64,
            sent: sent.load(Ordering::Relaxed),
            p50_ms: h.quantile(0.5).map(ms),
            p99_ms: h.quantile(0.99).map(ms),
        })
        .collect::<Vec<_>>();
    let last_used = timeline
        .iter()
        .rposition(|s| s.sent > 0 || s.p99_ms.is_some())
        .map_or(0, |i| i + 1);
    let summary = RampSummary {
        max_rate_at_p99_100ms: max_rate,
        target: ramp.peer.as_str().into(),
        client_bound,
        subscribers_requested: args.viewers,
        subscribers_connected: connected,
        connect_failures: stats.0,
        connect_s: round2(connect_s),
        message_bytes: round2(
            shared.payload_bytes.load(Ordering::Relaxed) as f64 / deliveries.max(1) as f64,
        ),
        p99_limit_ms: ramp.p99_limit_ms,
        step_s,
        stop_reason,
        steps,
        timeline: timeline.into_iter().take(last_used).collect(),
        load_avg_1m_before: load_before,
    };
    if let Some(dir) = &ramp.report {
        let page = crate::chart::write_report(dir, &summary)?;
        report::note(None, format!("report: {}", page.display()));
    }
    report::emit(&summary, args.target.json)
}

/// What the ramp thread needs to know.
struct Plan {
    rates: Vec<f64>,
    step: Duration,
    drain: Duration,
    p99_limit_us: u64,
    stop_on_fail: bool,
}

/// Samples the server's CPU time and RSS.
enum Probe {
    Pid(u32),
    Metrics(Api),
    None,
}

impl Probe {
    async fn sample(&self) -> Option<(f64, u64)> {
        match self {
            Self::Pid(pid) => proc_sample(*pid),
            Self::Metrics(api) => api
                .server_sample()
                .await
                .ok()
                .map(|s| (s.cpu_s, s.rss_bytes)),
            Self::None => None,
        }
    }
}

/// CPU seconds (user + system, USER_HZ = 100) and RSS bytes of a process, from /proc.
fn proc_sample(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some(((utime + stime) / 100.0, rss_pages * 4096))
}

/// Runs every step; returns the steps and why the ramp stopped.
async fn run_ramp(
    mut publisher: Publisher,
    probe: Probe,
    shared: Arc<Shared>,
    plan: Plan,
) -> anyhow::Result<(Vec<StepSummary>, String)> {
    let mut steps = Vec::new();
    let mut next_k = 0u64;
    let mut stop = String::from("reached --ramp-max");
    if !plan.stop_on_fail {
        stop = "single step".into();
    }
    for (i, &rate) in plan.rates.iter().enumerate() {
        let bar = report::bar(plan.step.as_secs(), "step");
        bar.set_prefix(format!("{rate:.0}/s"));
        let server_before = probe.sample().await;
        let client_before = common::client_cpu_s();
        let frames_before = shared.frames.load(Ordering::Relaxed);
        let subscribers = shared.alive.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        let outcome = publisher
            .publish_step(&shared, i, rate, plan.step, &mut next_k, &bar)
            .await;
        let published = outcome.sent;
        let expected = published * subscribers;
        // Drain: wait for the step's messages still on their way.
        let drain_end = tokio::time::Instant::now() + plan.drain;
        loop {
            let received = shared.steps[i].received.load(Ordering::Relaxed);
            if received >= expected || tokio::time::Instant::now() >= drain_end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let client_cores = (common::client_cpu_s() - client_before) / elapsed;
        let server_after = probe.sample().await;
        let tally = &shared.steps[i];
        let received = tally.received.load(Ordering::Relaxed).min(expected);
        let lost = expected - received;
        let p99 = tally.latency.quantile(0.99);
        let achieved = published as f64 / plan.step.as_secs_f64();
        let mut reasons = Vec::new();
        if lost > 0 {
            reasons.push(format!("{} lost", n(lost)));
        }
        match p99 {
            Some(p) if p > plan.p99_limit_us => {
                reasons.push(format!(
                    "p99 {:.1} ms > {:.0} ms",
                    ms(p),
                    plan.p99_limit_us as f64 / 1000.0
                ));
            }
            None => reasons.push("nothing received".into()),
            _ => {}
        }
        if outcome.errors > 0 {
            reasons.push(format!(
                "{} publish errors ({})",
                outcome.errors,
                outcome.last_error.as_deref().unwrap_or("?")
            ));
        }
        if achieved < 0.95 * rate {
            reasons.push(format!(
                "publisher reached {achieved:.0}/s of {rate:.0}/s ({} skipped: the server fell behind)",
                outcome.skipped
            ));
        }
        let step = StepSummary {
            rate,
            published,
            achieved_rate: round2(achieved),
            skipped: outcome.skipped,
            publish_errors: outcome.errors,
            subscribers,
            expected,
            received,
            lost,
            p50_ms: tally.latency.quantile(0.5).map(ms),
            p90_ms: tally.latency.quantile(0.9).map(ms),
            p99_ms: p99.map(ms),
            max_ms: (tally.latency.count() > 0).then(|| ms(tally.latency.max())),
            deliveries_per_s: round2(received as f64 / plan.step.as_secs_f64()),
            frames_per_s: round2(
                (shared.frames.load(Ordering::Relaxed) - frames_before) as f64 / elapsed,
            ),
            server_cpu_cores: match (server_before, server_after) {
                (Some(a), Some(b)) => Some(round2((b.0 - a.0).max(0.0) / elapsed)),
                _ => None,
            },
            server_rss_bytes: server_after.map(|s| s.1),
            client_cpu_cores: round2(client_cores),
            client_bound: client_cores > common::CLIENT_BOUND_CORES,
            passed: reasons.is_empty(),
            verdict: reasons.join("; "),
        };
        bar.finish_and_clear();
        report::note(
            None,
            format!(
                "{:>8.0}/s  {}  p50 {:>8} p99 {:>8} ms  lost {}  server {} client {:.2} cores{}",
                rate,
                if step.passed { "pass" } else { "FAIL" },
                opt_ms(step.p50_ms),
                opt_ms(step.p99_ms),
                n(step.lost),
                step.server_cpu_cores
                    .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                step.client_cpu_cores,
                if step.verdict.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", step.verdict)
                }
            ),
        );
        let failed = !step.passed;
        let verdict = step.verdict.clone();
        steps.push(step);
        if failed && plan.stop_on_fail {
            stop = format!("{rate:.0}/s failed: {verdict}");
            break;
        }
        if publisher.broken() {
            stop = "the publisher's connection closed".into();
            break;
        }
    }
    publisher.close().await;
    Ok((steps, stop))
}

#[derive(Default)]
struct StepOutcome {
    sent: u64,
    skipped: u64,
    errors: u64,
    last_error: Option<String>,
}

/// Sends messages at a fixed rate for one step.
enum Publisher {
    Harvest(HarvestPublisher),
    Nats(NatsPublisher),
}

struct HarvestPublisher {
    api: Api,
    room_id: String,
    product_ids: Vec<String>,
    concurrency: usize,
    /// Publish `test.message` events with this payload size (else pins).
    test_events: Option<usize>,
}

struct NatsPublisher {
    ws: Ws,
    subject: String,
    message_bytes: usize,
    pongs: u64,
    broken: bool,
}

/// How often the publisher wakes up to send what is due.
const TICK: Duration = Duration::from_millis(1);

impl Publisher {
    fn broken(&self) -> bool {
        matches!(self, Self::Nats(p) if p.broken)
    }

    async fn close(self) {
        if let Self::Nats(mut p) = self {
            let _ = p.ws.close(None).await;
        }
    }

    async fn publish_step(
        &mut self,
        shared: &Arc<Shared>,
        step: usize,
        rate: f64,
        length: Duration,
        next_k: &mut u64,
        bar: &indicatif::ProgressBar,
    ) -> StepOutcome {
        match self {
            Self::Harvest(p) => {
                p.publish_step(shared, step, rate, length, next_k, bar)
                    .await
            }
            Self::Nats(p) => {
                p.publish_step(shared, step, rate, length, next_k, bar)
                    .await
            }
        }
    }
}

/// Marks message k as sent now in step `step`; its send time, or `None` past the
/// table's end.
fn stamp(shared: &Shared, k: u64, step: usize) -> Option<u64> {
    let slot = shared.sent_us.get(k as usize)?;
    shared.step_of[k as usize].store(step as u8, Ordering::Relaxed);
    let now = shared.clock.now_us().max(1);
    slot.store(now, Ordering::Release);
    let origin = shared.origin_us.load(Ordering::Relaxed);
    let second = (now.saturating_sub(origin) / 1_000_000) as usize;
    if let Some(s) = shared.seconds_sent.get(second) {
        s.fetch_add(1, Ordering::Relaxed);
    }
    Some(now)
}

fn progress(
    bar: &indicatif::ProgressBar,
    shared: &Shared,
    step: usize,
    start: tokio::time::Instant,
) {
    let elapsed = start.elapsed();
    bar.set_position(elapsed.as_secs());
    let tally = &shared.steps[step];
    bar.set_message(format!(
        "{} received, p99 {} ms",
        n(tally.received.load(Ordering::Relaxed)),
        opt_ms(tally.latency.quantile(0.99).map(ms))
    ));
}

impl HarvestPublisher {
    async fn publish_step(
        &mut self,
        shared: &Arc<Shared>,
        step: usize,
        rate: f64,
        length: Duration,
        next_k: &mut u64,
        bar: &indicatif::ProgressBar,
    ) -> StepOutcome {
        let outcome = Arc::new(std::sync::Mutex::new(StepOutcome::default()));
        let start = tokio::time::Instant::now();
        let end = start + length;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut window: VecDeque<tokio::task::JoinHandle<()>> = VecDeque::new();
        let mut issued = 0u64;
        let mut last_progress = start;
        loop {
            ticker.tick().await;
            let now = tokio::time::Instant::now();
            if now >= end {
                break;
            }
            if now - last_progress >= Duration::from_millis(250) {
                progress(bar, shared, step, start);
                last_progress = now;
            }
            let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
            while issued < due {
                issued += 1;
                while window.front().is_some_and(|r| r.is_finished()) {
                    window.pop_front();
                }
                if window.len() >= self.concurrency {
                    if let Ok(mut o) = outcome.lock() {
                        o.skipped += 1;
                    }
                    continue;
                }
                let k = *next_k;
                let Some(sent_us) = stamp(shared, k, step) else {
                    break;
                };
                *next_k += 1;
                let api = self.api.clone();
                let room = self.room_id.clone();
                let product = self.product_ids[k as usize % self.product_ids.len()].clone();
                let text = self.test_events.map(|size| payload_text(k, sent_us, size));
                let outcome = outcome.clone();
                window.push_back(tokio::spawn(async move {
                    let answer = match text {
                        Some(text) => api.test_event(&room, &text).await,
                        None => api.pin(&room, Some(&product)).await,
                    };
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
            }
        }
        for request in window {
            let _ = request.await;
        }
        outcome
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }
}

impl NatsPublisher {
    async fn publish_step(
        &mut self,
        shared: &Arc<Shared>,
        step: usize,
        rate: f64,
        length: Duration,
        next_k: &mut u64,
        bar: &indicatif::ProgressBar,
    ) -> StepOutcome {
        let mut outcome = StepOutcome::default();
        let start = tokio::time::Instant::now();
        let end = start + length;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut issued = 0u64;
        let mut last_progress = start;
        let mut batch = Vec::new();
        let mut reader = NatsReader::default();
        while !self.broken {
            tokio::select! {
                biased;
                _ = ticker.tick() => {}
                incoming = self.ws.next() => {
                    self.incoming(incoming, &mut reader, &mut outcome).await;
                    continue;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= end {
                break;
            }
            if now - last_progress >= Duration::from_millis(250) {
                progress(bar, shared, step, start);
                last_progress = now;
            }
            let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
            batch.clear();
            while issued < due {
                issued += 1;
                let k = *next_k;
                let Some(sent_us) = stamp(shared, k, step) else {
                    break;
                };
                *next_k += 1;
                nats_pub(&mut batch, &self.subject, k, sent_us, self.message_bytes);
                outcome.sent += 1;
            }
            if !batch.is_empty()
                && let Err(e) = self.ws.send(Message::binary(batch.clone())).await
            {
                outcome.errors += 1;
                outcome.last_error = Some(format!("publishing: {e}"));
                self.broken = true;
            }
        }
        // Flush: the server has read every PUB once it answers a PING sent after them.
        if !self.broken {
            let want = self.pongs + 1;
            let flushed = async {
                self.ws.send(Message::binary(&b"PING\r\n"[..])).await.ok()?;
                while self.pongs < want {
                    let incoming = self.ws.next().await;
                    self.incoming(incoming, &mut reader, &mut outcome).await;
                    if self.broken {
                        return None;
                    }
                }
                Some(())
            };
            if tokio::time::timeout(Duration::from_secs(10), flushed)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                outcome.errors += 1;
                outcome.last_error = Some("no PONG after the step's messages within 10 s".into());
            }
        }
        outcome
    }

    async fn incoming(
        &mut self,
        incoming: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        reader: &mut NatsReader,
        outcome: &mut StepOutcome,
    ) {
        let data = match incoming {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Message::Close(_))) | None => {
                self.broken = true;
                outcome.errors += 1;
                outcome.last_error = Some("nats-server closed the publisher's connection".into());
                return;
            }
            Some(Ok(_)) => return,
            Some(Err(e)) => {
                self.broken = true;
                outcome.errors += 1;
                outcome.last_error = Some(format!("publisher connection: {e}"));
                return;
            }
        };
        let mut pings = 0;
        for item in reader.feed(&data) {
            match item {
                NatsItem::Ping => pings += 1,
                NatsItem::Pong => self.pongs += 1,
                NatsItem::Err(e) => {
                    outcome.errors += 1;
                    outcome.last_error = Some(format!("nats-server: -ERR {e}"));
                }
                NatsItem::Msg { .. } | NatsItem::Other => {}
            }
        }
        for _ in 0..pings {
            let _ = self.ws.send(Message::binary(&b"PONG\r\n"[..])).await;
        }
    }
}

/// Appends `PUB subject n\r\n<k> <sent_us> <padding>\r\n` with a payload of `size` bytes.
fn nats_pub(out: &mut Vec<u8>, subject: &str, k: u64, sent_us: u64, size: usize) {
    use std::io::Write;
    let _ = write!(out, "PUB {subject} {size}\r\n");
    let start = out.len();
    let _ = write!(out, "{k} {sent_us} ");
    let used = out.len() - start;
    out.extend(std::iter::repeat_n(b'x', size.saturating_sub(used)));
    out.extend_from_slice(b"\r\n");
}

/// A payload of `size` bytes: `<k> <sent_us> ` and padding (as `nats_pub` writes).
fn payload_text(k: u64, sent_us: u64, size: usize) -> String {
    let mut text = format!("{k} {sent_us} ");
    let pad = size.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('x', pad));
    text
}

/// `k` and the send time from a payload `nats_pub` wrote.
fn parse_payload(payload: &[u8]) -> Option<(u64, u64)> {
    let mut parts = payload.splitn(3, |&b| b == b' ');
    let k = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let sent = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((k, sent))
}

/// One item of the NATS server-to-client protocol.
#[derive(Debug, PartialEq, Eq)]
enum NatsItem {
    Msg { k: u64, sent_us: u64, bytes: usize },
    Ping,
    Pong,
    Err(String),
    Other,
}

/// Incremental parser of the NATS protocol: WebSocket frames may split or join
/// protocol messages anywhere.
#[derive(Default)]
struct NatsReader {
    buf: Vec<u8>,
}

impl NatsReader {
    fn feed(&mut self, data: &[u8]) -> Vec<NatsItem> {
        self.buf.extend_from_slice(data);
        let mut items = Vec::new();
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            if line.starts_with(b"MSG ") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let Some(size) = line
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<usize>().ok())
                else {
                    items.push(NatsItem::Err("unparsable MSG line".into()));
                    at += eol + 2;
                    continue;
                };
                let total = eol + 2 + size + 2;
                if rest.len() < total {
                    break;
                }
                let payload = &rest[eol + 2..eol + 2 + size];
                items.push(match parse_payload(payload) {
                    Some((k, sent_us)) => NatsItem::Msg {
                        k,
                        sent_us,
                        bytes: size,
                    },
                    None => NatsItem::Other,
                });
                at += total;
                continue;
            }
            items.push(if line == b"PING" {
                NatsItem::Ping
            } else if line == b"PONG" {
                NatsItem::Pong
            } else if let Some(e) = line.strip_prefix(b"-ERR ") {
                NatsItem::Err(String::from_utf8_lossy(e).into_owned())
            } else {
                NatsItem::Other
            });
            at += eol + 2;
        }
        self.buf.drain(..at);
        items
    }
}

/// What `run` set up on the target.
struct Setup {
    peer: Peer,
    target: Target,
    api: Option<Api>,
    /// An admin's client, for the test publish path.
    admin_api: Option<Api>,
    room_id: Option<String>,
    product_ids: Vec<String>,
    nats_url: String,
}

impl Setup {
    async fn harvest(args: &FanoutArgs) -> anyhow::Result<Self> {
        let target = Target::resolve(&args.target.url, args.target.allow_remote).await?;
        Api::new(&target, None)?.check_reachable().await?;
        let secret = args.target.jwt_secret.as_deref().context(
            "fanout --target harvest needs --jwt-secret (or HARVEST_JWT_SECRET): the secret \
             the server signs tokens with (with embedded defaults: the file data/jwt_secret)",
        )?;
        let run_id = common::run_id();
        let minter = Minter::new(secret, Duration::from_secs(6 * 3600))?;
        let api = Api::new_pooled(
            &target,
            Some(minter.token(
                &format!("lt-streamer-{run_id}"),
                "Load-test streamer",
                &["streamer"],
            )?),
            args.publish_concurrency as usize + 4,
        )?;
        let (room_id, product_ids) = api
            .live_room_with_bag(
                &run_id,
                (4 * args.publish_concurrency).max(2),
                &format!("F3 {run_id}"),
            )
            .await?;
        let admin_api = match args.ramp.harvest_publish {
            HarvestPublish::Pin => None,
            HarvestPublish::TestEvents => {
                let admin = Api::new_pooled(
                    &target,
                    Some(minter.token(
                        &format!("lt-admin-{run_id}"),
                        "Load-test admin",
                        &["admin"],
                    )?),
                    args.publish_concurrency as usize + 4,
                )?;
                admin.test_event(&room_id, "probe").await.context(
                    "setup: the test publish path did not answer (start the server with \
                     HARVEST_TEST_PUBLISH=true, or measure with --harvest-publish pin)",
                )?;
                Some(admin)
            }
        };
        Ok(Self {
            peer: Peer::Harvest,
            target,
            api: Some(api),
            admin_api,
            room_id: Some(room_id),
            product_ids,
            nats_url: String::new(),
        })
    }

    async fn nats(args: &FanoutArgs) -> anyhow::Result<Self> {
        let url = &args.ramp.nats_url;
        let parsed = url::Url::parse(url).with_context(|| format!("invalid --nats-url {url:?}"))?;
        if parsed.scheme() != "ws" {
            bail!("--nats-url must be a ws:// URL (got {url:?}); TLS listeners are not supported");
        }
        let mut http = parsed.clone();
        let _ = http.set_scheme("http");
        let target = Target::resolve(http.as_str(), args.target.allow_remote).await?;
        let setup = Self {
            peer: Peer::Nats,
            target,
            api: None,
            admin_api: None,
            room_id: None,
            product_ids: Vec::new(),
            nats_url: url.clone(),
        };
        // One probe connection: a clear error when nothing listens there.
        let ws = nats_connect(
            &setup.target,
            url,
            None,
            &args.ramp.subject,
            0,
            ws_config(args.target.ws_read_buffer),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach nats-server's WebSocket listener at {url}: {e} (is nats-server \
                 running with a `websocket {{ listen: \"{}\", no_tls: true }}` block?)",
                setup.target.authority
            )
        })?;
        drop(ws);
        Ok(setup)
    }

    fn describe(&self) -> String {
        match self.peer {
            Peer::Harvest => format!(
                "{} room {}",
                self.target.base,
                self.room_id.as_deref().unwrap_or("?")
            ),
            Peer::Nats => self.nats_url.clone(),
        }
    }

    /// Connects every subscriber (spawned into `tasks`); returns the connect failures
    /// and the last connect error.
    async fn connect_all(
        &mut self,
        args: &FanoutArgs,
        shared: &Arc<Shared>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<(u64, Option<String>)> {
        let total = args.viewers;
        let bar = report::bar(total, "connect");
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(args.target.connect_timeout + 30);
        let connected = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
        match self.peer {
            Peer::Harvest => {
                let connector = Connector::new(&self.target, &args.target);
                let url = self
                    .target
                    .ws_url(self.room_id.as_deref().unwrap_or_default(), None);
                for _ in 0..total {
                    let (connector, shared, url) = (connector.clone(), shared.clone(), url.clone());
                    tasks.spawn(async move {
                        if let Some((ws, first)) = connector.open(&url).await {
                            harvest_subscriber(ws, first, shared).await;
                        }
                    });
                }
                loop {
                    let stats = &connector.stats;
                    let done = stats.connected.load(Ordering::Relaxed)
                        + stats.failed.load(Ordering::Relaxed);
                    bar.set_position(done);
                    bar.set_message(format!("{} failed", stats.failed.load(Ordering::Relaxed)));
                    if done >= total || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                bar.finish();
                return Ok((
                    connector.stats.failed.load(Ordering::Relaxed),
                    connector.stats.last_error(),
                ));
            }
            Peer::Nats => {
                let sources = self.target.source_ips(args.target.source_ips);
                let in_flight = Arc::new(Semaphore::new(args.target.concurrency));
                let period = Duration::from_secs_f64(1.0 / f64::from(args.target.connect_rate));
                let config = ws_config(args.target.ws_read_buffer);
                for i in 0..total {
                    let source = (!sources.is_empty()).then(|| sources[i as usize % sources.len()]);
                    let (shared, connected, failed, last_error, in_flight) = (
                        shared.clone(),
                        connected.clone(),
                        failed.clone(),
                        last_error.clone(),
                        in_flight.clone(),
                    );
                    let (target, url, subject) = (
                        self.target.clone(),
                        self.nats_url.clone(),
                        args.ramp.subject.clone(),
                    );
                    // Paced: subscriber i starts its first attempt at i × period.
                    let at = tokio::time::Instant::now() + period * i as u32;
                    tasks.spawn(async move {
                        tokio::time::sleep_until(at).await;
                        let mut last = String::new();
                        for attempt in 0..5u32 {
                            let ws = {
                                let Ok(_permit) = in_flight.acquire().await else {
                                    return;
                                };
                                nats_connect(&target, &url, source, &subject, i + 1, config).await
                            };
                            match ws {
                                Ok(ws) => {
                                    connected.fetch_add(1, Ordering::Relaxed);
                                    nats_subscriber(ws, shared).await;
                                    return;
                                }
                                Err(e) => {
                                    last = e;
                                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                                }
                            }
                        }
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut slot) = last_error.lock() {
                            *slot = Some(last);
                        }
                    });
                }
            }
        }
        loop {
            let done = connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
            bar.set_position(done);
            bar.set_message(format!("{} failed", failed.load(Ordering::Relaxed)));
            if done >= total || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish();
        let last = last_error.lock().ok().and_then(|g| g.clone());
        Ok((failed.load(Ordering::Relaxed), last))
    }

    async fn publisher(&self, args: &FanoutArgs) -> anyhow::Result<Publisher> {
        Ok(match self.peer {
            Peer::Harvest => Publisher::Harvest(HarvestPublisher {
                api: self
                    .admin_api
                    .as_ref()
                    .or(self.api.as_ref())
                    .context("no API")?
                    .fresh_pooled(args.publish_concurrency as usize + 4)?,
                room_id: self.room_id.clone().context("no room")?,
                product_ids: self.product_ids.clone(),
                concurrency: args.publish_concurrency as usize,
                test_events: self.admin_api.as_ref().map(|_| args.ramp.message_bytes),
            }),
            Peer::Nats => {
                // The publisher subscribes to nothing (sid 0 is not used).
                let ws = nats_connect(
                    &self.target,
                    &self.nats_url,
                    None,
                    "",
                    0,
                    ws_config(args.target.ws_read_buffer),
                )
                .await
                .map_err(|e| anyhow::anyhow!("connecting the NATS publisher: {e}"))?;
                Publisher::Nats(NatsPublisher {
                    ws,
                    subject: args.ramp.subject.clone(),
                    message_bytes: args.ramp.message_bytes,
                    pongs: 0,
                    broken: false,
                })
            }
        })
    }

    fn probe(&self, ramp: &RampArgs) -> anyhow::Result<Probe> {
        Ok(match (ramp.server_pid, &self.api) {
            (Some(pid), _) => {
                if proc_sample(pid).is_none() {
                    bail!("--server-pid {pid}: no such process readable in /proc");
                }
                Probe::Pid(pid)
            }
            (None, Some(api)) => Probe::Metrics(api.fresh()?),
            (None, None) => Probe::None,
        })
    }

    async fn cleanup(&mut self) {
        if let (Some(api), Some(room)) = (&self.api, &self.room_id)
            && let Err(e) = api.end_room(room).await
        {
            report::note(None, format!("could not end room {room}: {e:#}"));
        }
    }
}

fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(64 * 1024 * 1024))
        .max_frame_size(Some(64 * 1024 * 1024))
}

/// Opens a NATS WebSocket connection: reads `INFO`, sends `CONNECT`, `SUB subject sid`
/// (when `subject` is not empty) and `PING`, and waits for the `PONG`, so the
/// subscription is in place when this returns.
async fn nats_connect(
    target: &Target,
    url: &str,
    source: Option<IpAddr>,
    subject: &str,
    sid: u64,
    config: WebSocketConfig,
) -> Result<Ws, String> {
    const STEP: Duration = Duration::from_secs(15);
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = tokio::time::timeout(STEP, socket.connect(target.addr))
        .await
        .map_err(|_| "TCP connect timed out".to_owned())?
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)),
    )
    .await
    .map_err(|_| "WebSocket handshake timed out".to_owned())?
    .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let mut hello = String::from(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"harvest-loadtest\",\"protocol\":1}\r\n",
    );
    if !subject.is_empty() {
        hello.push_str(&format!("SUB {subject} {sid}\r\n"));
    }
    hello.push_str("PING\r\n");
    ws.send(Message::binary(hello.into_bytes()))
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut reader = NatsReader::default();
    loop {
        let message = tokio::time::timeout(STEP, ws.next())
            .await
            .map_err(|_| "no PONG within 15 s".to_owned())?;
        let data = match message {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the server: {frame:?}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("reading: {e}")),
            None => return Err("closed before PONG".into()),
        };
        for item in reader.feed(&data) {
            match item {
                NatsItem::Pong => return Ok(ws),
                NatsItem::Err(e) => return Err(format!("-ERR {e}")),
                NatsItem::Ping => {
                    let _ = ws.send(Message::binary(&b"PONG\r\n"[..])).await;
                }
                _ => {}
            }
        }
    }
}

/// A NATS subscriber: records every message, answers the server's PINGs.
async fn nats_subscriber(mut ws: Ws, shared: Arc<Shared>) {
    shared.alive.fetch_add(1, Ordering::Relaxed);
    let mut reader = NatsReader::default();
    while let Some(message) = ws.next().await {
        let data = match message {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Text(t)) => t.into(),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let now = shared.clock.now_us();
        shared.frames.fetch_add(1, Ordering::Relaxed);
        let mut pings = 0;
        for item in reader.feed(&data) {
            match item {
                NatsItem::Msg { k, sent_us, bytes } => {
                    shared
                        .payload_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    shared.record(k, sent_us, now);
                }
                NatsItem::Ping => pings += 1,
                _ => {}
            }
        }
        for _ in 0..pings {
            if ws.send(Message::binary(&b"PONG\r\n"[..])).await.is_err() {
                break;
            }
        }
    }
    if !shared.stopping.load(Ordering::Relaxed) {
        shared.alive.fetch_sub(1, Ordering::Relaxed);
        shared.disconnected.fetch_add(1, Ordering::Relaxed);
    }
}

/// A Harvest viewer: records every `product.pinned` event of the run.
///
/// Frames are scanned for `product.pinned` events without decoding them into typed
/// events (the NATS subscriber likewise reads only the head of each payload), so the
/// client's cost per message is alike for both targets; a frame the scan cannot read
/// is decoded in full.
async fn harvest_subscriber(mut ws: Ws, first: Vec<Event>, shared: Arc<Shared>) {
    shared.alive.fetch_add(1, Ordering::Relaxed);
    let mut offset = 0i64;
    drop(first);
    let mut found = Vec::new();
    let mut tests = Vec::new();
    while let Some(message) = ws.next().await {
        let bytes: &[u8] = match &message {
            Ok(Message::Text(t)) => t.as_bytes(),
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let now = shared.clock.now_us();
        shared.frames.fetch_add(1, Ordering::Relaxed);
        found.clear();
        tests.clear();
        if scan_test_messages(bytes, &mut tests) && !tests.is_empty() {
            for &(k, sent_us, bytes) in &tests {
                shared.payload_bytes.fetch_add(bytes, Ordering::Relaxed);
                shared.record(k, sent_us, now);
            }
            continue;
        }
        if !scan_pinned(bytes, &mut found) {
            found.clear();
            let Some(Ok(events)) = message
                .as_ref()
                .ok()
                .and_then(|m| common::decode(harvest_proto::ws::Encoding::Json, m))
            else {
                continue;
            };
            for event in &events {
                if let (EventData::ProductPinned(p), Some(seq)) = (&event.data, event.seq)
                    && let Some(product) = &p.product
                {
                    found.push((seq, product.id.clone(), 0));
                }
            }
        }
        for (seq, product_id, bytes) in found.drain(..) {
            shared.payload_bytes.fetch_add(bytes, Ordering::Relaxed);
            let Some(&product) = shared.products.get(product_id.as_str()) else {
                continue;
            };
            let base = shared.base_seq.load(Ordering::Acquire);
            let Some(k) = request_of(seq, base, offset, product, shared.products.len() as u64)
            else {
                continue;
            };
            offset = k as i64 - (seq - base - 1) as i64;
            shared.record(k, 0, now);
        }
    }
    if !shared.stopping.load(Ordering::Relaxed) {
        shared.alive.fetch_sub(1, Ordering::Relaxed);
        shared.disconnected.fetch_add(1, Ordering::Relaxed);
    }
}

const PINNED: &[u8] = b"\"type\":\"product.pinned\"";
const TEST_MESSAGE: &[u8] = b"\"type\":\"test.message\"";

/// Finds the `test.message` events of a JSON frame (one event or a batch, fields in the
/// server's order: `type`, `seq`, `ts`, `data.text`): pushes (k, send time, the event's
/// bytes) read from each text. False when a text cannot be read.
fn scan_test_messages(frame: &[u8], out: &mut Vec<(u64, u64, u64)>) -> bool {
    let starts = memfind_all(frame, TEST_MESSAGE);
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(frame.len());
        let event = &frame[start..end];
        let Some(text) = field_after(event, b"\"text\":\"") else {
            return false;
        };
        let Some((k, sent_us)) = parse_payload(text) else {
            // Not a load-test payload (the setup's probe).
            continue;
        };
        out.push((k, sent_us, event.len() as u64));
    }
    true
}

/// Finds the `product.pinned` events of a JSON frame (one event object or an array of
/// them, fields in the server's order: `type`, `seq`, `ts`, `data.product.id` first):
/// pushes (seq, product id, the event's bytes). False when the frame holds the event
/// type but the scan cannot read it.
fn scan_pinned(frame: &[u8], out: &mut Vec<(u64, String, u64)>) -> bool {
    let starts: Vec<usize> = memfind_all(frame, PINNED);
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(frame.len());
        let event = &frame[start..end];
        let Some(seq) = field_after(event, b"\"seq\":").and_then(|v| {
            let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&v[..digits]).ok()?.parse().ok()
        }) else {
            return false;
        };
        let Some(data) = field_after(event, b"\"data\":") else {
            return false;
        };
        if data.starts_with(b"{\"product\":null") {
            continue;
        }
        let Some(id) = field_after(data, b"\"id\":\"").and_then(|v| {
            let len = v.iter().position(|&b| b == b'"')?;
            std::str::from_utf8(&v[..len]).ok()
        }) else {
            return false;
        };
        out.push((seq, id.to_owned(), (end - start) as u64 + 1));
    }
    true
}

/// The bytes after the first `needle` in `hay`.
fn field_after<'a>(hay: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    let i = memchr::memmem::find(hay, needle)?;
    Some(&hay[i + needle.len()..])
}

/// Every position of `needle` in `hay`.
fn memfind_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    memchr::memmem::find_iter(hay, needle).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_rates_double_up_to_the_bound() {
        let mut args = RampArgs {
            peer: Peer::Nats,
            ramp: true,
            nats_url: String::new(),
            subject: "s".into(),
            message_bytes: 200,
            harvest_publish: HarvestPublish::TestEvents,
            ramp_start: 100.0,
            ramp_factor: 2.0,
            ramp_max: 1000.0,
            step: 10,
            step_drain: 5,
            p99_limit_ms: 100.0,
            server_pid: None,
            report: None,
        };
        assert_eq!(args.rates(20.0), vec![100.0, 200.0, 400.0, 800.0]);
        args.ramp = false;
        assert_eq!(args.rates(20.0), vec![20.0]);
        assert!(args.check().is_ok());
    }

    #[test]
    fn nats_messages_round_trip_through_the_parser() {
        let mut wire = Vec::new();
        nats_pub(&mut wire, "harvest.f3", 42, 123_456, 200);
        assert!(wire.starts_with(b"PUB harvest.f3 200\r\n42 123456 xx"));
        assert_eq!(wire.len(), "PUB harvest.f3 200\r\n".len() + 200 + 2);
        // The server's MSG line, split across frames anywhere.
        let payload = &wire["PUB harvest.f3 200\r\n".len()..];
        let mut msg = b"INFO {\"x\":1}\r\nPING\r\nMSG harvest.f3 7 200\r\n".to_vec();
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"PONG\r\n-ERR 'Slow Consumer'\r\n");
        let mut reader = NatsReader::default();
        let mut items = Vec::new();
        for chunk in msg.chunks(37) {
            items.extend(reader.feed(chunk));
        }
        assert_eq!(
            items,
            vec![
                NatsItem::Other,
                NatsItem::Ping,
                NatsItem::Msg {
                    k: 42,
                    sent_us: 123_456,
                    bytes: 200
                },
                NatsItem::Pong,
                NatsItem::Err("'Slow Consumer'".into()),
            ]
        );
        assert!(reader.buf.is_empty());
    }

    #[test]
    fn pinned_events_are_found_in_single_and_batched_frames() {
        let one = br#"{"type":"product.pinned","seq":12,"ts":1,"data":{"product":{"id":"p-1","owner_id":"o","sku":"s","title":"t"}}}"#;
        let mut out = Vec::new();
        assert!(scan_pinned(one, &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0, out[0].1.as_str()), (12, "p-1"));
        out.clear();
        let batch = br#"[{"type":"viewers.count","ts":1,"data":{"count":3}},{"type":"product.pinned","seq":13,"ts":2,"data":{"product":{"id":"p-2"}}},{"type":"product.pinned","seq":14,"ts":2,"data":{"product":null}},{"type":"product.pinned","seq":15,"ts":3,"data":{"product":{"id":"p-3"}}}]"#;
        assert!(scan_pinned(batch, &mut out));
        let got: Vec<(u64, &str)> = out.iter().map(|(s, id, _)| (*s, id.as_str())).collect();
        assert_eq!(got, vec![(13, "p-2"), (15, "p-3")]);
        out.clear();
        assert!(scan_pinned(
            br#"{"type":"chat.message","ts":1,"data":{}}"#,
            &mut out
        ));
        assert!(out.is_empty());
        assert!(!scan_pinned(
            br#"{"type":"product.pinned","data":{}}"#,
            &mut out
        ));
    }

    #[test]
    fn proc_sample_reads_this_process() {
        let (cpu, rss) = proc_sample(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0);
    }
}
