//! C1, contest scoring: two live rooms in a PK match, buyers paying continuously in
//! both, and viewers timing the live score bar.
//!
//! Setup, through the public HTTP API with tokens minted from `--jwt-secret`: two
//! streamers, each with a product, a live room and a flash sale (stock and per-user limit
//! large enough never to refuse a buyer); an organizer's contest over both (window
//! covering the run, scoring `paid_gmv` 60 + `likes` 40); WebSocket viewers in each
//! room (one of them sends likes); then a PK match between the two participants on
//! `paid_gmv`, lasting `--duration` seconds.
//!
//! Timed: once the match is live, buyers reserve and pay (`POST
//! /api/v1/flash-sales/{id}/reservations`, then `POST /api/v1/holds/{id}/checkout`
//! `{"method":"simulated"}`, each with its own `Idempotency-Key`) at `--rate-a` orders/s
//! in room A and the lower `--rate-b` in room B, until `--stop-before-end-ms` before the
//! match ends. The viewers record every `pk.started`, `pk.score` and `pk.ended` with its
//! arrival time on the same monotonic clock as the checkouts' answers.
//!
//! **Payment to pk.score latency.** For each participant, its acknowledged orders (200
//! answers with an order paid inside the match window) are put in acknowledgement order
//! and summed cumulatively: order k is covered by a score value ≥ the amounts of orders
//! 1..=k. For every (order, viewer) pair the latency runs from the checkout's 200 answer
//! to the arrival at that viewer of the first `pk.score` of the match whose value for
//! the participant covers the order (0 when the score arrived before the answer). An
//! order paid before an earlier-acknowledged one was counted can only wait longer by this
//! rule, never shorter, so the figure is an upper bound.
//!
//! Afterwards: every viewer must have received `pk.ended` of the match, all alike, with
//! the winner the client's sums give; the final scores must equal the sums of the
//! acknowledged orders; the contest's standings (`GET /api/v1/contests/{id}/standings`)
//! must count every order; `pk.score` must come at most 2 per second in each room. A
//! failed check exits with status 1 after the summary.
//!
//! `score_events_per_s` is measured in process with the `harvest-contest` engine: two
//! participants, `--engine-events` synthetic paid orders applied one by one, then the
//! standings and the match scores, timed; the median of `--engine-runs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use harvest_proto::ws::{Encoding, Event, EventData};
use harvest_proto::{Match, MatchStatus, Score};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    self, Api, Buyers, CLIENT_BOUND_CORES, Clock, Connector, HTTP_TIMEOUT, Minter, SaleSetup,
    SaleSpec, Target, TargetArgs, Ws, buyer_of, error_key, http_clients, round2,
};
use crate::hist::{Histogram, ms};
use crate::report::{self, Summary, n, opt_ms};

/// C1 target: contest events scored per second by the engine, in process.
pub const TARGET_SCORE_EVENTS_PER_S: f64 = 1_000_000.0;
/// C1 target: p99 from a payment's answer to the pk.score that shows it, in ms.
pub const TARGET_P99_MS: f64 = 600.0;
/// `pk.score` events allowed per room in any 1 s window (API.md §6).
pub const PK_SCORE_PER_S: u64 = 2;
/// Timing slack of the rate check on the events' server `ts`: three successive
/// `pk.score` must span at least 1 s less this. A throttle that lets one score out
/// every 500 ms by its own clock stamps `ts` when it publishes, a little later and by a
/// varying amount, so two scores 500 ms apart for the throttle can be 499 ms apart by
/// `ts`.
pub const PK_SCORE_TS_SLACK_MS: u64 = 50;
/// Extra events tolerated in a 1 s window of arrival times: scores 500 ms apart at the
/// server can arrive a little closer, so three may fall in one window.
pub const PK_SCORE_ARRIVAL_TOLERANCE: u64 = 1;
/// Weights of the contest's scoring.
const WEIGHT_GMV: u32 = 60;
const WEIGHT_LIKES: u32 = 40;
/// Longest wait for the viewers' `pk.started` and for the match to be live.
const START_WAIT: Duration = Duration::from_secs(5);
/// Like frames a viewer sends per second (the server allows 10).
const LIKE_FRAMES_PER_S: u64 = 4;
/// The rooms' labels: room A's buyers pay faster, so its participant should win.
const LABELS: [&str; 2] = ["a", "b"];
/// Problems listed in full in the summary (the rest are counted).
const PROBLEMS_LISTED: usize = 10;

/// Arguments of `harvest-loadtest contest`.
#[derive(Debug, clap::Args)]
pub struct ContestArgs {
    /// Base URL of a running `harvest serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// HS256 secret the server signs tokens with (its HARVEST_JWT_SECRET); the load
    /// generator mints the streamers', the organizer's, the buyers' and the viewers'
    /// tokens with it.
    #[arg(long, env = "HARVEST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Spread the HTTP and WebSocket connections over this many loopback source
    /// addresses (127.0.1.1, ...); 0 lets the kernel choose.
    #[arg(long, default_value_t = 4)]
    pub source_ips: u32,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The PK match's `duration_s` (10..=3600); the buyers pay from its start until
    /// `--stop-before-end-ms` before its end.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Purchases (reserve, then pay) offered per second in room A, the expected winner.
    #[arg(long, default_value_t = 40.0)]
    pub rate_a: f64,
    /// Purchases offered per second in room B (less than --rate-a).
    #[arg(long, default_value_t = 20.0)]
    pub rate_b: f64,
    /// Distinct buyers per room; purchase k of a room belongs to buyer k mod buyers.
    #[arg(long, default_value_t = 100)]
    pub buyers: u64,
    /// Purchases in flight at once per room (a tick finding all busy is skipped and
    /// counted).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The sales' unit price, in fen (every order is one unit).
    #[arg(long, default_value_t = 990)]
    pub price: u64,
    /// WebSocket viewers per room, each holding a viewer token.
    #[arg(long, default_value_t = 3)]
    pub viewers: u64,
    /// Likes sent by the first viewer of room A (frames of at most 100).
    #[arg(long, default_value_t = 100)]
    pub likes_a: u64,
    /// Likes sent by the first viewer of room B.
    #[arg(long, default_value_t = 300)]
    pub likes_b: u64,
    /// The buyers stop this long before the match's end, so that every order is paid
    /// inside the match.
    #[arg(long, default_value_t = 1000)]
    pub stop_before_end_ms: u64,
    /// Longest wait for `pk.ended` after the match's end, in seconds.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Synthetic paid orders applied to the in-process engine per run (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub engine_events: u64,
    /// Runs of the in-process engine measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub engine_runs: u32,
}

impl ContestArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !(10..=3600).contains(&self.duration) {
            bail!("--duration must be in 10..=3600 seconds (the API's range for a match)");
        }
        if !(self.rate_a > 0.0 && self.rate_a <= 2000.0 && self.rate_b > 0.0) {
            bail!("--rate-a and --rate-b must be in (0, 2000] purchases/s");
        }
        if self.rate_b >= self.rate_a {
            bail!("--rate-b must be less than --rate-a: room A is the expected winner");
        }
        if !(1..=100_000).contains(&self.buyers) {
            bail!("--buyers must be in 1..=100000");
        }
        if !(1..=1000).contains(&self.concurrency) {
            bail!("--concurrency must be in 1..=1000");
        }
        if !(1..=100_000_000).contains(&self.price) {
            bail!("--price must be in 1..=100000000 fen");
        }
        if !(1..=100).contains(&self.viewers) {
            bail!("--viewers must be in 1..=100");
        }
        if self.likes_a > 100_000 || self.likes_b > 100_000 {
            bail!("--likes-a and --likes-b must be at most 100000");
        }
        if self.stop_before_end_ms > (self.duration - 5) * 1000 {
            bail!("--stop-before-end-ms leaves less than 5 s of buying");
        }
        if !(1..=60).contains(&self.drain) {
            bail!("--drain must be in 1..=60 seconds");
        }
        if self.engine_events > 10_000_000 {
            bail!("--engine-events must be at most 10000000");
        }
        if !(1..=20).contains(&self.engine_runs) {
            bail!("--engine-runs must be in 1..=20");
        }
        if self.source_ips > 60_000 {
            bail!("--source-ips must be at most 60000");
        }
        Ok(())
    }

    /// Units each sale holds: every purchase the run can offer, twice over.
    fn stock(&self, rate: f64) -> u64 {
        (rate * self.duration as f64 * 2.0).ceil() as u64 + 100
    }
}

// ---------------------------------------------------------------------------------
// Analysis (pure)

/// For one participant: the arrival time of the first score covering each order.
///
/// `acks` are the participant's acknowledged orders in acknowledgement order, as
/// (answer time, amount); `scores` its values in one viewer's `pk.score` events, in
/// arrival order, as (arrival time, value). Order k is covered by the first score whose
/// value is at least the sum of the amounts of orders 0..=k.
pub fn first_covering(acks: &[(u64, i64)], scores: &[(u64, i64)]) -> Vec<Option<u64>> {
    // Running maximum of the values: the first score ≥ x is the first running max ≥ x.
    let mut best = i64::MIN;
    let running: Vec<i64> = scores
        .iter()
        .map(|&(_, v)| {
            best = best.max(v);
            best
        })
        .collect();
    let mut sum = 0i64;
    acks.iter()
        .map(|&(_, amount)| {
            sum += amount;
            let i = running.partition_point(|&v| v < sum);
            scores.get(i).map(|&(arrival, _)| arrival)
        })
        .collect()
}

/// The most events in any window `[t, t + window)` of `times` (any order).
pub fn max_in_window(times: &[u64], window: u64) -> u64 {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u64
}

/// The shortest time spanned by `k` successive `times` (any order); `None` for fewer
/// than `k` (or `k` = 0).
pub fn min_span(times: &[u64], k: usize) -> Option<u64> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    sorted
        .windows(k.max(1))
        .map(|w| w[w.len() - 1] - w[0])
        .min()
        .filter(|_| k > 0)
}

/// The participants with the highest non-zero value (the match's `winner_ids` rule);
/// sorted.
pub fn leaders(values: &BTreeMap<String, i64>) -> Vec<String> {
    let max = values.values().copied().max().unwrap_or(0);
    if max <= 0 {
        return Vec::new();
    }
    values
        .iter()
        .filter(|(_, v)| **v == max)
        .map(|(p, _)| p.clone())
        .collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn scores_map(scores: &[Score]) -> BTreeMap<String, i64> {
    scores
        .iter()
        .map(|s| (s.participant_id.clone(), s.value))
        .collect()
}

/// What was wrong with a `pk.score` event, checked against its match: `None` when
/// nothing.
pub fn score_problem(
    score: &harvest_proto::ws::PkScore,
    the_match: &Match,
    previous: Option<&BTreeMap<String, i64>>,
) -> Option<String> {
    let values = scores_map(&score.scores);
    let expected: Vec<String> = sorted(the_match.participant_ids.clone());
    let got: Vec<String> = values.keys().cloned().collect();
    if got != expected || score.scores.len() != expected.len() {
        return Some(format!(
            "scores name participants {:?}, the match has {:?}",
            score
                .scores
                .iter()
                .map(|s| &s.participant_id)
                .collect::<Vec<_>>(),
            the_match.participant_ids
        ));
    }
    if sorted(score.leader_ids.clone()) != leaders(&values) {
        return Some(format!(
            "leader_ids {:?} with scores {values:?}",
            score.leader_ids
        ));
    }
    if score.ends_at != the_match.ends_at {
        return Some(format!(
            "ends_at {} but the match ends at {}",
            score.ends_at.to_rfc3339(),
            the_match.ends_at.to_rfc3339()
        ));
    }
    if let Some(previous) = previous
        && let Some((p, v)) = values
            .iter()
            .find(|(p, v)| previous.get(*p).is_some_and(|before| *v < before))
    {
        return Some(format!(
            "the score of {p} went down from {} to {v} (no refund was made)",
            previous[p]
        ));
    }
    None
}

// ---------------------------------------------------------------------------------
// Viewers

/// A `pk.score` as a viewer received it.
#[derive(Debug, Clone)]
struct ScoreSeen {
    arrival_us: u64,
    /// The server's `ts`, ms since the epoch.
    ts_ms: i64,
    data: harvest_proto::ws::PkScore,
}

/// What one viewer saw.
#[derive(Debug, Default)]
struct ViewerLog {
    room: usize,
    started: Vec<(u64, Match)>,
    scores: Vec<ScoreSeen>,
    ended: Vec<(u64, Match)>,
    standings_events: u64,
    seq_gaps: u64,
    decode_errors: u64,
    first_decode_error: Option<String>,
    /// `error` events by code (a refused like, ...).
    errors: BTreeMap<String, u64>,
    likes_sent: u64,
    /// The connection ended before the run did.
    disconnected: bool,
}

/// Counters the viewers share with the run, for its waits and progress.
#[derive(Default)]
struct ViewerCounters {
    started: AtomicU64,
    scores: AtomicU64,
    ended: AtomicU64,
}

impl ViewerLog {
    fn take(&mut self, events: &[Event], now_us: u64, last_seq: &mut u64, c: &ViewerCounters) {
        for event in events {
            if let Some(seq) = event.seq {
                if seq != *last_seq + 1 {
                    self.seq_gaps += 1;
                }
                *last_seq = seq;
            }
            match &event.data {
                EventData::PkStarted(s) => {
                    self.started.push((now_us, s.r#match.clone()));
                    c.started.fetch_add(1, Ordering::Relaxed);
                }
                EventData::PkScore(s) => {
                    self.scores.push(ScoreSeen {
                        arrival_us: now_us,
                        ts_ms: event.ts,
                        data: s.clone(),
                    });
                    c.scores.fetch_add(1, Ordering::Relaxed);
                }
                EventData::PkEnded(e) => {
                    self.ended.push((now_us, e.r#match.clone()));
                    c.ended.fetch_add(1, Ordering::Relaxed);
                }
                EventData::ContestStandings(_) => self.standings_events += 1,
                EventData::ErrorEvent(e) => {
                    *self.errors.entry(e.code.as_str().to_owned()).or_default() += 1;
                }
                _ => {}
            }
        }
    }
}

/// One viewer: records the pk events until `stop`, sending `likes` first (in frames of
/// at most 100, a few per second).
async fn viewer(
    mut ws: Ws,
    first: Vec<Event>,
    room: usize,
    mut likes: u64,
    clock: Clock,
    counters: Arc<ViewerCounters>,
    mut stop: watch::Receiver<bool>,
) -> ViewerLog {
    let mut log = ViewerLog {
        room,
        ..Default::default()
    };
    let mut last_seq = match first.first().map(|e| &e.data) {
        Some(EventData::SessionWelcome(w)) => w.last_seq,
        _ => 0,
    };
    log.take(&first, clock.now_us(), &mut last_seq, &counters);
    let mut like_ticker = tokio::time::interval(Duration::from_millis(1000 / LIKE_FRAMES_PER_S));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => {
                let now = clock.now_us();
                let message = match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                        log.disconnected = !*stop.borrow();
                        break;
                    }
                    Some(Ok(m)) => m,
                };
                match common::decode(Encoding::Json, &message) {
                    None => {}
                    Some(Ok(events)) => log.take(&events, now, &mut last_seq, &counters),
                    Some(Err(e)) => {
                        log.decode_errors += 1;
                        if log.first_decode_error.is_none() {
                            let text = match &message {
                                Message::Text(t) => t.as_str().chars().take(300).collect(),
                                _ => String::new(),
                            };
                            log.first_decode_error = Some(format!("{e}: {text}"));
                        }
                    }
                }
            }
            _ = like_ticker.tick(), if likes > 0 => {
                let count = likes.min(100);
                let frame = json!({"type": "like", "count": count}).to_string();
                if ws.send(Message::text(frame)).await.is_err() {
                    log.disconnected = true;
                    break;
                }
                likes -= count;
                log.likes_sent += count;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    log
}

// ---------------------------------------------------------------------------------
// Buyers

/// A checkout answered 200 with an order.
#[derive(Debug, Clone)]
struct Ack {
    ack_us: u64,
    amount: i64,
    paid_at_ms: Option<i64>,
}

/// The outcome of one room's purchases.
#[derive(Debug, Default)]
struct Purchases {
    offered: u64,
    skipped: u64,
    acks: Vec<Ack>,
    reserve_failed: BTreeMap<String, u64>,
    reserve_retries: u64,
    checkout_errors: BTreeMap<String, u64>,
    /// Orders whose hold or amount is not the purchase's.
    order_mismatches: u64,
    first_error: Option<String>,
}

/// One room's buyers during the run.
struct RoomLoad {
    buyers: Buyers,
    price: u64,
    clock: Clock,
    /// Checkout round trips, both rooms together.
    checkout_latency: Arc<Histogram>,
    paid: AtomicU64,
    out: Mutex<Purchases>,
}

impl RoomLoad {
    fn with<R>(&self, f: impl FnOnce(&mut Purchases) -> R) -> R {
        match self.out.lock() {
            Ok(mut p) => f(&mut p),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Purchase `k`: reserve one unit, then pay it.
    async fn purchase(&self, client: &reqwest::Client, k: u32) {
        let reserved = self.buyers.reserve(client, k).await;
        let Some(hold_id) = reserved.hold_id else {
            let failure = reserved.failure.unwrap_or_else(|| "unknown".into());
            self.with(|p| {
                p.reserve_retries += reserved.retries;
                let code = failure.split(':').next().unwrap_or_default().to_owned();
                *p.reserve_failed.entry(code).or_default() += 1;
                p.first_error
                    .get_or_insert_with(|| format!("reservation: {failure}"));
            });
            return;
        };
        let buyer = buyer_of(u64::from(k), self.buyers.buyers);
        let key = self.buyers.pay_key(k);
        let record = self.buyers.checkout(client, k, &hold_id, buyer, &key).await;
        let ack_us = self.clock.now_us();
        self.checkout_latency.record(record.latency_us);
        self.with(|p| {
            p.reserve_retries += reserved.retries;
            match &record.order {
                Some(order) => {
                    if order.hold_id != hold_id || order.amount != self.price as i64 {
                        p.order_mismatches += 1;
                    }
                    p.acks.push(Ack {
                        ack_us,
                        amount: order.amount,
                        paid_at_ms: order.paid_at.map(|t| t.timestamp_millis()),
                    });
                    self.paid.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    *p.checkout_errors.entry(error_key(&record)).or_default() += 1;
                    if p.first_error.is_none() {
                        p.first_error = Some(format!(
                            "checkout: {}",
                            record.detail.clone().unwrap_or_else(|| error_key(&record))
                        ));
                    }
                }
            }
        });
    }
}

/// Offers purchases at `rate` per second from `start` until `stop`, at most
/// `concurrency` in flight, then waits for those in flight.
async fn buy(
    room: Arc<RoomLoad>,
    clients: Arc<Vec<reqwest::Client>>,
    rate: f64,
    concurrency: usize,
    start: tokio::time::Instant,
    stop: tokio::time::Instant,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut ticker = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = JoinSet::new();
    let mut k = 0u32;
    loop {
        ticker.tick().await;
        if tokio::time::Instant::now() >= stop {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            room.with(|p| {
                p.offered += 1;
                p.skipped += 1;
            });
            continue;
        };
        room.with(|p| p.offered += 1);
        let (room, client) = (room.clone(), clients[k as usize % clients.len()].clone());
        tasks.spawn(async move {
            let _permit = permit;
            room.purchase(&client, k).await;
        });
        k += 1;
    }
    // A purchase makes two requests (more after a 429), each timing out after
    // HTTP_TIMEOUT; the guard is for safety.
    let guard = tokio::time::sleep(4 * HTTP_TIMEOUT);
    tokio::pin!(guard);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = &mut guard => {
                tasks.abort_all();
                room.with(|p| {
                    p.first_error.get_or_insert_with(|| {
                        "purchases still in flight 40 s after the run were abandoned".into()
                    });
                });
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// In-process engine

/// The in-process engine measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineFigures {
    /// Paid orders applied per run.
    pub events: u64,
    /// Events per second of each run (apply every event, then standings and match
    /// scores).
    pub runs_events_per_s: Vec<f64>,
    /// Seconds of the median run.
    pub seconds: f64,
    /// The engine's match scores and standings equal the generator's sums.
    pub results_ok: bool,
}

/// Applies `events` synthetic paid orders (two rooms, 2:1, 20,000 buyers) to a fresh
/// engine `runs` times; returns the figures, the median rate first.
pub fn engine_rate(events: u64, runs: u32) -> anyhow::Result<(f64, EngineFigures)> {
    use harvest_contest::{
        Engine, Event as ContestEvent, MatchSpec, OrderPaid, Participant, Rules,
    };
    const T0: i64 = 1_798_761_600_000; // 2027-01-01T00:00:00Z
    let rules = Rules::from_json(
        format!(
            r#"{{"starts_at":"2027-01-01T00:00:00Z","ends_at":"2027-01-02T00:00:00Z",
            "scoring":{{"mode":"weighted","metrics":[{{"metric":"paid_gmv","weight":{WEIGHT_GMV}}},
              {{"metric":"likes","weight":{WEIGHT_LIKES}}}]}}}}"#
        )
        .as_bytes(),
    )
    .context("engine rules")?;
    rules.validate().context("engine rules")?;
    let participants: Vec<Participant> = ["a", "b"]
        .iter()
        .map(|p| Participant {
            id: format!("p-{p}"),
            name: format!("Room {p}"),
            owner_id: format!("owner-{p}"),
            member_ids: vec![],
            room_ids: vec![format!("room-{p}")],
        })
        .collect();
    // Untimed: the log, in time order over 20 hours, and its sums.
    let step_ms = (72_000_000 / events.max(1)).max(1) as i64;
    let mut sums = [0i64; 2];
    let log: Vec<ContestEvent> = (0..events)
        .map(|i| {
            let room = usize::from(i % 3 == 2);
            let amount = 990 + (i % 7) as i64 * 100;
            sums[room] += amount;
            ContestEvent::OrderPaid(OrderPaid {
                order_id: format!("o{i}"),
                room_id: format!("room-{}", ["a", "b"][room]),
                buyer_id: format!("buyer-{}", i % 20_000),
                product_id: "kiwi".into(),
                amount,
                paid_at_ms: T0 + i as i64 * step_ms,
            })
        })
        .collect();
    let spec = MatchSpec {
        participant_ids: vec!["p-a".into(), "p-b".into()],
        starts_at_ms: T0,
        ends_at_ms: T0 + 86_400_000,
        metric: harvest_proto::Metric::PaidGmv,
    };
    let mut rates = Vec::new();
    let mut results_ok = true;
    for _ in 0..runs {
        let mut engine = Engine::new(rules.clone(), participants.clone())
            .context("engine with two participants")?;
        let started = Instant::now();
        for event in &log {
            std::hint::black_box(engine.apply(event));
        }
        let standings = engine.standings();
        let scores = engine
            .match_scores(&spec, T0 + 86_400_000)
            .context("engine match scores")?;
        let elapsed = started.elapsed().as_secs_f64();
        rates.push(events as f64 / elapsed.max(1e-9));
        let gmv = |p: &str| {
            standings
                .rows
                .iter()
                .find(|r| r.participant_id == p)
                .map(|r| r.metrics.paid_gmv)
        };
        results_ok &= scores.scores.iter().map(|s| s.value).collect::<Vec<_>>() == sums
            && gmv("p-a") == Some(sums[0])
            && gmv("p-b") == Some(sums[1]);
        drop(std::hint::black_box(engine));
    }
    let mut by_rate = rates.clone();
    by_rate.sort_by(f64::total_cmp);
    let median = by_rate[by_rate.len() / 2];
    Ok((
        median,
        EngineFigures {
            events,
            runs_events_per_s: rates.iter().map(|r| r.round()).collect(),
            seconds: (events as f64 / median.max(1e-9) * 1000.0).round() / 1000.0,
            results_ok,
        },
    ))
}

// ---------------------------------------------------------------------------------
// Summary

/// One room's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomFigures {
    /// `a` (the faster buyers, expected to win) or `b`.
    pub label: &'static str,
    pub room_id: String,
    pub sale_id: String,
    pub participant_id: String,
    pub purchases_per_s_offered: f64,
    pub purchases_offered: u64,
    /// Ticks skipped because every purchase slot was busy.
    pub purchases_skipped: u64,
    /// Checkouts answered 200 with an order.
    pub orders_paid: u64,
    /// Of them, paid (the order's `paid_at`) inside the match window.
    pub orders_in_match: u64,
    /// The amounts of the orders paid inside the match window.
    pub amount_in_match: i64,
    /// The amounts of every order paid (the contest counts them all).
    pub amount_paid: i64,
    pub reserve_failed: BTreeMap<String, u64>,
    pub reserve_retries: u64,
    pub checkout_errors: BTreeMap<String, u64>,
    pub order_mismatches: u64,
    pub viewers_connected: u64,
    /// Viewers that received `pk.started` of the match.
    pub pk_started: u64,
    /// `pk.score` events of the match per viewer (the most any viewer got; `_min` the
    /// fewest).
    pub pk_score_updates: u64,
    pub pk_score_updates_min: u64,
    /// The most `pk.score` events in any 1 s window, by arrival at a viewer (the most
    /// over viewers) and by the events' server `ts`.
    pub pk_score_max_per_s: u64,
    pub pk_score_max_per_s_server_ts: u64,
    /// The shortest time between two successive `pk.score` events by their server
    /// `ts`, and spanned by three successive ones (at least 1 s under a strict limit
    /// of 2 per second; the check asks 950 ms), ms.
    pub pk_score_min_gap_ms: Option<u64>,
    pub pk_score_min_span_3_ms: Option<u64>,
    /// Viewers that received `pk.ended` of the match.
    pub pk_ended: u64,
    /// `contest.standings` events per viewer (the most any viewer got).
    pub contest_standings_events: u64,
    pub likes_sent: u64,
    /// The participant's score in `GET /api/v1/matches/{id}` after the end.
    pub match_score: Option<i64>,
    /// Its row of the contest's standings.
    pub standings_paid_gmv: Option<i64>,
    pub standings_paid_orders: Option<i64>,
    pub standings_likes: Option<i64>,
}

/// The checks and the targets.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Verdict {
    /// Both rooms had orders paid inside the match.
    pub orders_ok: bool,
    /// Every viewer received `pk.started` of the match.
    pub pk_started_ok: bool,
    /// Every viewer received `pk.ended` of the match exactly once, all alike.
    pub pk_ended_ok: bool,
    /// `winner_ok` (also a top-level figure).
    pub winner_ok: bool,
    /// `scores_match_orders` (also a top-level figure).
    pub scores_match_orders: bool,
    /// The standings' `paid_gmv` and `paid_orders` equal the orders paid.
    pub standings_match_orders: bool,
    /// In each room, three successive `pk.score` span at least 950 ms by server `ts`
    /// (2 per second, with 50 ms of slack), and at most 2 + 1 arrive in any 1 s.
    pub pk_score_rate_ok: bool,
    /// Every `pk.score` had the match's participants, leaders and end, no score went
    /// down, and every frame decoded.
    pub pk_events_ok: bool,
    /// No room event was missed (seq gaps) and no viewer was disconnected.
    pub viewers_ok: bool,
    /// All of the above: the exit status is 1 otherwise.
    pub correct: bool,
    /// Every (order, viewer) pair was shown by a `pk.score` (not only by `pk.ended`).
    pub every_order_in_a_pk_score: bool,
    /// `payment_to_pk_score_p99_ms ≤ 600` with every order in a pk.score.
    pub p99_ok: bool,
    /// `score_events_per_s ≥ 1,000,000` (null when not measured).
    pub score_events_per_s_ok: Option<bool>,
    /// Correct, and both targets met.
    pub c1_pass: bool,
}

/// The C1 figures, then context.
#[derive(Debug, Default, Serialize)]
pub struct ContestSummary {
    pub score_events_per_s: Option<f64>,
    pub payment_to_pk_score_p50_ms: Option<f64>,
    pub payment_to_pk_score_p99_ms: Option<f64>,
    pub payment_to_pk_score_max_ms: Option<f64>,
    /// `pk.score` events of the match received per viewer, by room id.
    pub pk_score_updates: BTreeMap<String, u64>,
    /// The most `pk.score` events in any 1 s window of arrival, by room id.
    pub pk_score_max_per_s: BTreeMap<String, u64>,
    pub orders_paid: u64,
    pub winner_ok: bool,
    pub scores_match_orders: bool,
    /// `GET /api/v1/contests/{id}/standings` after the match.
    pub standings: Value,
    pub client_cpu_s: f64,
    pub client_bound: bool,
    pub verdict: Verdict,
    // Context.
    pub contest_id: String,
    pub match_id: String,
    pub duration_s: u64,
    pub match_starts_at: Option<String>,
    pub match_ends_at: Option<String>,
    /// Length of the buying window.
    pub buying_s: f64,
    /// The participants with the highest sum of acknowledged orders.
    pub expected_winner_ids: Vec<String>,
    /// `winner_ids` of `GET /api/v1/matches/{id}` after the end.
    pub winner_ids: Vec<String>,
    /// Final match scores (`GET /api/v1/matches/{id}`), and the sums of the orders the
    /// client was answered, paid inside the match, by participant id.
    pub match_scores: BTreeMap<String, i64>,
    pub orders_amount: BTreeMap<String, i64>,
    /// `status` of the match after the end.
    pub match_status: Option<String>,
    /// (order, viewer) pairs timed; shown only by `pk.ended`; never shown.
    pub latency_samples: u64,
    pub samples_only_in_pk_ended: u64,
    pub samples_never_shown: u64,
    /// Pairs whose pk.score arrived before the checkout's answer (timed as 0).
    pub score_before_answer: u64,
    /// From a `pk.score`'s server `ts` to its arrival at a viewer (the fan-out part).
    pub pk_score_delivery_p50_ms: Option<f64>,
    pub pk_score_delivery_p99_ms: Option<f64>,
    /// p50 and p99 of the first viewer to see each order.
    pub first_viewer_p50_ms: Option<f64>,
    pub first_viewer_p99_ms: Option<f64>,
    /// From the match's `ends_at` to the last viewer's `pk.ended`, ms.
    pub pk_ended_after_end_ms: Option<f64>,
    pub checkout_p50_ms: Option<f64>,
    pub checkout_p99_ms: Option<f64>,
    pub orders_outside_match: u64,
    pub orders_without_paid_at: u64,
    pub viewers_connected: u64,
    pub viewers_disconnected: u64,
    pub connect_failures: u64,
    pub seq_gaps: u64,
    pub decode_errors: u64,
    /// Wrong pk events, the first few in full.
    pub pk_event_problems: u64,
    pub pk_event_problem_list: Vec<String>,
    /// `error` events the viewers received, by code.
    pub viewer_errors: BTreeMap<String, u64>,
    pub server_cpu_s: Option<f64>,
    pub client_cpu_cores: f64,
    pub engine: EngineFigures,
    pub rooms: Vec<RoomFigures>,
    pub run_id: String,
    pub first_error: Option<String>,
    /// The failed checks, explained.
    pub failures: Vec<String>,
}

impl Summary for ContestSummary {
    fn title(&self) -> &'static str {
        "harvest-loadtest contest (C1)"
    }

    fn rows(&self) -> Vec<(&'static str, String, String)> {
        let pass = |ok: bool| if ok { "ok" } else { "FAIL" };
        let v = &self.verdict;
        let per_room = |m: &dyn Fn(&RoomFigures) -> String| {
            self.rooms
                .iter()
                .map(|r| format!("{} {}", r.label.to_uppercase(), m(r)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            (
                "score_events_per_s",
                self.score_events_per_s
                    .map_or_else(|| "-".into(), |r| n(r as u64)),
                match v.score_events_per_s_ok {
                    Some(ok) => format!(
                        "{}: target >= 1,000,000 (in process, {} events, median of {})",
                        pass(ok),
                        n(self.engine.events),
                        self.engine.runs_events_per_s.len()
                    ),
                    None => "not measured".into(),
                },
            ),
            (
                "payment_to_pk_score_p50_ms",
                opt_ms(self.payment_to_pk_score_p50_ms),
                format!(
                    "{} (order, viewer) pairs; first viewer p50 {}",
                    n(self.latency_samples),
                    opt_ms(self.first_viewer_p50_ms)
                ),
            ),
            (
                "payment_to_pk_score_p99_ms",
                opt_ms(self.payment_to_pk_score_p99_ms),
                format!(
                    "{}: target <= 600; first viewer p99 {}",
                    pass(v.p99_ok),
                    opt_ms(self.first_viewer_p99_ms)
                ),
            ),
            (
                "payment_to_pk_score_max_ms",
                opt_ms(self.payment_to_pk_score_max_ms),
                format!(
                    "{} pairs only in pk.ended, {} never shown, {} before the answer",
                    self.samples_only_in_pk_ended,
                    self.samples_never_shown,
                    self.score_before_answer
                ),
            ),
            (
                "orders_paid",
                n(self.orders_paid),
                per_room(&|r| {
                    format!(
                        "{} ({:.0}/s offered, {} skipped)",
                        n(r.orders_paid),
                        r.purchases_per_s_offered,
                        r.purchases_skipped
                    )
                }),
            ),
            (
                "pk_score_updates",
                self.rooms
                    .iter()
                    .map(|r| r.pk_score_updates.to_string())
                    .collect::<Vec<_>>()
                    .join(" / "),
                format!(
                    "per viewer, rooms A / B over {:.1} s of buying",
                    self.buying_s
                ),
            ),
            (
                "pk_score_max_per_s",
                self.rooms
                    .iter()
                    .map(|r| r.pk_score_max_per_s.to_string())
                    .collect::<Vec<_>>()
                    .join(" / "),
                format!(
                    "{}: by arrival (<= 3); by server ts {}, 3 successive span >= {} ms",
                    pass(v.pk_score_rate_ok),
                    self.rooms
                        .iter()
                        .map(|r| r.pk_score_max_per_s_server_ts.to_string())
                        .collect::<Vec<_>>()
                        .join(" / "),
                    self.rooms
                        .iter()
                        .map(|r| r
                            .pk_score_min_span_3_ms
                            .map_or_else(|| "-".into(), |g| g.to_string()))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
            ),
            (
                "winner_ok",
                self.winner_ok.to_string(),
                format!(
                    "winner_ids {:?}, expected {:?}; pk.ended at {} of {} viewers",
                    self.winner_ids,
                    self.expected_winner_ids,
                    self.rooms.iter().map(|r| r.pk_ended).sum::<u64>(),
                    self.viewers_connected
                ),
            ),
            (
                "scores_match_orders",
                self.scores_match_orders.to_string(),
                format!(
                    "match {:?}, orders {:?}",
                    self.match_scores.values().collect::<Vec<_>>(),
                    self.orders_amount.values().collect::<Vec<_>>()
                ),
            ),
            (
                "standings",
                pass(v.standings_match_orders).into(),
                per_room(&|r| {
                    format!(
                        "gmv {} orders {} likes {}",
                        r.standings_paid_gmv
                            .map_or_else(|| "-".into(), |x| x.to_string()),
                        r.standings_paid_orders
                            .map_or_else(|| "-".into(), |x| x.to_string()),
                        r.standings_likes
                            .map_or_else(|| "-".into(), |x| x.to_string())
                    )
                }),
            ),
            (
                "pk_score_delivery_p99_ms",
                opt_ms(self.pk_score_delivery_p99_ms),
                format!(
                    "p50 {}: from the pk.score's server ts to a viewer; min gap A / B {} ms",
                    opt_ms(self.pk_score_delivery_p50_ms),
                    self.rooms
                        .iter()
                        .map(|r| r
                            .pk_score_min_gap_ms
                            .map_or_else(|| "-".into(), |g| g.to_string()))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
            ),
            (
                "checkout_p99_ms",
                opt_ms(self.checkout_p99_ms),
                format!("p50 {}", opt_ms(self.checkout_p50_ms)),
            ),
            (
                "pk_ended_after_end_ms",
                opt_ms(self.pk_ended_after_end_ms),
                "from the match's ends_at to the last viewer's pk.ended".into(),
            ),
            (
                "server_cpu_s",
                self.server_cpu_s
                    .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                "over the buying window".into(),
            ),
            (
                "client_cpu_s",
                format!("{:.2}", self.client_cpu_s),
                format!("{:.2} cores", self.client_cpu_cores),
            ),
            (
                "client_bound",
                self.client_bound.to_string(),
                if self.client_bound {
                    "the client used > 90% of a core".into()
                } else {
                    String::new()
                },
            ),
            (
                "verdict",
                format!("C1 {}", if v.c1_pass { "pass" } else { "fail" }),
                if v.correct {
                    "every correctness check passed".into()
                } else {
                    format!("FAILED: {}", self.failures.join("; "))
                },
            ),
        ]
    }
}

/// Computes the verdict of a summary whose checks are filled in.
pub fn verdict(s: &ContestSummary, parts: &Verdict) -> Verdict {
    let mut v = parts.clone();
    v.winner_ok = s.winner_ok;
    v.scores_match_orders = s.scores_match_orders;
    v.correct = v.orders_ok
        && v.pk_started_ok
        && v.pk_ended_ok
        && v.winner_ok
        && v.scores_match_orders
        && v.standings_match_orders
        && v.pk_score_rate_ok
        && v.pk_events_ok
        && v.viewers_ok;
    v.every_order_in_a_pk_score =
        s.latency_samples > 0 && s.samples_only_in_pk_ended == 0 && s.samples_never_shown == 0;
    v.p99_ok = v.every_order_in_a_pk_score
        && s.payment_to_pk_score_p99_ms
            .is_some_and(|p| p <= TARGET_P99_MS);
    v.score_events_per_s_ok = s.score_events_per_s.map(|r| r >= TARGET_SCORE_EVENTS_PER_S);
    v.c1_pass = v.correct && v.p99_ok && v.score_events_per_s_ok == Some(true);
    v
}

// ---------------------------------------------------------------------------------
// The run

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_match(value: Value, what: &str) -> anyhow::Result<Match> {
    serde_json::from_value(value.clone()).with_context(|| format!("{what} is not a Match: {value}"))
}

/// A participant's `paid_gmv`, `paid_orders` and `likes` in the standings.
type MetricsSeen = (Option<i64>, Option<i64>, Option<i64>);

/// The participant rows of a standings answer, by participant id.
fn standings_rows(standings: &Value) -> BTreeMap<String, MetricsSeen> {
    standings
        .get("rows")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter_map(|row| {
                    let id = row.get("participant_id")?.as_str()?.to_owned();
                    let metric = |m: &str| row.pointer(&format!("/metrics/{m}"))?.as_i64();
                    Some((
                        id,
                        (metric("paid_gmv"), metric("paid_orders"), metric("likes")),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a run observed, for [`analyze`].
struct Observed {
    /// Rooms A and B.
    setups: Vec<SaleSetup>,
    /// Participants A and B.
    participant_ids: Vec<String>,
    /// Purchases offered per second in rooms A and B.
    rates: [f64; 2],
    /// The match as created.
    created: Match,
    /// The match and the contest's standings after the end.
    final_match: anyhow::Result<Match>,
    standings: anyhow::Result<Value>,
    /// Rooms A and B.
    purchases: Vec<Purchases>,
    checkout_latency: Arc<Histogram>,
    logs: Vec<ViewerLog>,
    /// Unix time less the run's clock, µs (to place server times on the clock).
    unix_offset_us: i64,
    viewers_per_room: u64,
    drain_s: u64,
}

/// Fills in the figures and the checks of `s` from what the run observed.
fn analyze(s: &mut ContestSummary, o: Observed) {
    let mut parts = Verdict::default();
    let mut problems: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let Observed {
        setups,
        participant_ids,
        rates,
        created,
        final_match,
        standings,
        mut purchases,
        checkout_latency,
        logs,
        unix_offset_us,
        viewers_per_room,
        drain_s,
    } = o;
    let match_id = created.id.clone();
    let (starts_at_ms, ends_at_ms) = (
        created.starts_at.timestamp_millis(),
        created.ends_at.timestamp_millis(),
    );
    let viewers_total = viewers_per_room * 2;
    let viewers_connected = s.viewers_connected;
    // The match's end on the run's clock.
    let ends_at_us = ends_at_ms * 1000 - unix_offset_us;

    // Orders, per room.
    let mut acks_in_match: Vec<Vec<(u64, i64)>> = Vec::new();
    for (i, p) in purchases.iter_mut().enumerate() {
        p.acks.sort_by_key(|a| a.ack_us);
        let inside: Vec<(u64, i64)> = p
            .acks
            .iter()
            .filter(|a| {
                a.paid_at_ms
                    .is_none_or(|t| (starts_at_ms..ends_at_ms).contains(&t))
            })
            .map(|a| (a.ack_us, a.amount))
            .collect();
        s.orders_outside_match += (p.acks.len() - inside.len()) as u64;
        s.orders_without_paid_at += p.acks.iter().filter(|a| a.paid_at_ms.is_none()).count() as u64;
        s.orders_paid += p.acks.len() as u64;
        s.orders_amount
            .insert(participant_ids[i].clone(), inside.iter().map(|a| a.1).sum());
        if s.first_error.is_none() {
            s.first_error.clone_from(&p.first_error);
        }
        acks_in_match.push(inside);
    }
    s.checkout_p50_ms = checkout_latency.quantile(0.5).map(ms);
    s.checkout_p99_ms = checkout_latency.quantile(0.99).map(ms);
    let mismatches: u64 = purchases.iter().map(|p| p.order_mismatches).sum();
    parts.orders_ok = acks_in_match.iter().all(|a| !a.is_empty()) && mismatches == 0;
    if let Some(i) = acks_in_match.iter().position(Vec::is_empty) {
        failures.push(format!(
            "no order was paid inside the match in room {} ({})",
            LABELS[i].to_uppercase(),
            s.first_error.clone().unwrap_or_default()
        ));
    }
    if mismatches > 0 {
        failures.push(format!(
            "{mismatches} checkouts answered an order of another hold or amount"
        ));
    }
    s.expected_winner_ids = leaders(&s.orders_amount);

    // The final match.
    match &final_match {
        Ok(m) => {
            s.match_scores = scores_map(&m.scores);
            s.winner_ids = m.winner_ids.clone();
            s.match_status = Some(m.status.as_str().to_owned());
        }
        Err(e) => failures.push(format!("GET /api/v1/matches/{match_id} failed: {e:#}")),
    }

    // The viewers' events.
    let latency = Histogram::new();
    let first_viewer = Histogram::new();
    let delivery = Histogram::new();
    let mut first_seen: Vec<Vec<Option<u64>>> =
        acks_in_match.iter().map(|a| vec![None; a.len()]).collect();
    let mut rooms: Vec<RoomFigures> = (0..2)
        .map(|i| RoomFigures {
            label: LABELS[i],
            room_id: setups[i].room_id.clone(),
            sale_id: setups[i].sale_id.clone(),
            participant_id: participant_ids[i].clone(),
            purchases_per_s_offered: rates[i],
            purchases_offered: purchases[i].offered,
            purchases_skipped: purchases[i].skipped,
            orders_paid: purchases[i].acks.len() as u64,
            orders_in_match: acks_in_match[i].len() as u64,
            amount_in_match: acks_in_match[i].iter().map(|a| a.1).sum(),
            amount_paid: purchases[i].acks.iter().map(|a| a.amount).sum(),
            reserve_failed: purchases[i].reserve_failed.clone(),
            reserve_retries: purchases[i].reserve_retries,
            checkout_errors: purchases[i].checkout_errors.clone(),
            order_mismatches: purchases[i].order_mismatches,
            pk_score_updates_min: u64::MAX,
            match_score: s.match_scores.get(&participant_ids[i]).copied(),
            ..Default::default()
        })
        .collect();
    let mut ended_matches: Vec<Match> = Vec::new();
    let mut last_ended_us = None;
    for log in &logs {
        let r = &mut rooms[log.room];
        r.viewers_connected += 1;
        r.likes_sent += log.likes_sent;
        r.contest_standings_events = r.contest_standings_events.max(log.standings_events);
        s.seq_gaps += log.seq_gaps;
        s.decode_errors += log.decode_errors;
        if let Some(e) = &log.first_decode_error {
            problems.push(format!("undecodable frame: {e}"));
        }
        s.viewers_disconnected += u64::from(log.disconnected);
        for (code, count) in &log.errors {
            *s.viewer_errors.entry(code.clone()).or_default() += count;
        }
        // pk.started
        let started: Vec<&Match> = log
            .started
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.id == match_id)
            .collect();
        if !started.is_empty() {
            r.pk_started += 1;
        }
        for (_, m) in &log.started {
            if m.id != match_id {
                problems.push(format!("pk.started of another match {}", m.id));
            } else if sorted(m.participant_ids.clone()) != sorted(participant_ids.clone()) {
                problems.push(format!(
                    "pk.started with participant_ids {:?}",
                    m.participant_ids
                ));
            } else if m.ends_at != created.ends_at {
                problems.push(format!(
                    "pk.started ends_at {} but the match ends at {}",
                    rfc3339(m.ends_at),
                    rfc3339(created.ends_at)
                ));
            }
        }
        // pk.score
        let scores: Vec<&ScoreSeen> = log
            .scores
            .iter()
            .filter(|sc| sc.data.match_id == match_id)
            .collect();
        if scores.len() < log.scores.len() {
            problems.push(format!(
                "{} pk.score events of another match",
                log.scores.len() - scores.len()
            ));
        }
        let mut previous: Option<BTreeMap<String, i64>> = None;
        for sc in &scores {
            if let Some(p) = score_problem(&sc.data, &created, previous.as_ref()) {
                problems.push(format!("pk.score: {p}"));
            }
            previous = Some(scores_map(&sc.data.scores));
        }
        let count = scores.len() as u64;
        r.pk_score_updates = r.pk_score_updates.max(count);
        r.pk_score_updates_min = r.pk_score_updates_min.min(count);
        let arrivals: Vec<u64> = scores.iter().map(|sc| sc.arrival_us).collect();
        let ts: Vec<u64> = scores.iter().map(|sc| sc.ts_ms.max(0) as u64).collect();
        for sc in &scores {
            let arrival_unix_us = sc.arrival_us as i64 + unix_offset_us;
            delivery.record((arrival_unix_us - sc.ts_ms * 1000).max(0) as u64);
        }
        let lower = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        r.pk_score_min_gap_ms = lower(r.pk_score_min_gap_ms, min_span(&ts, 2));
        r.pk_score_min_span_3_ms = lower(r.pk_score_min_span_3_ms, min_span(&ts, 3));
        r.pk_score_max_per_s = r
            .pk_score_max_per_s
            .max(max_in_window(&arrivals, 1_000_000));
        r.pk_score_max_per_s_server_ts =
            r.pk_score_max_per_s_server_ts.max(max_in_window(&ts, 1000));
        // pk.ended
        let ended: Vec<&(u64, Match)> =
            log.ended.iter().filter(|(_, m)| m.id == match_id).collect();
        if ended.len() == 1 {
            r.pk_ended += 1;
        } else if ended.len() > 1 {
            problems.push(format!(
                "a viewer of room {} received pk.ended {} times",
                LABELS[log.room].to_uppercase(),
                ended.len()
            ));
        }
        for (at, m) in &ended {
            ended_matches.push(m.clone());
            last_ended_us = last_ended_us.max(Some(*at));
        }
        // Latency of every order of each participant at this viewer.
        for (i, pid) in participant_ids.iter().enumerate() {
            let values: Vec<(u64, i64)> = scores
                .iter()
                .filter_map(|sc| {
                    sc.data
                        .scores
                        .iter()
                        .find(|x| &x.participant_id == pid)
                        .map(|x| (sc.arrival_us, x.value))
                })
                .collect();
            let final_value = ended.first().and_then(|(_, m)| {
                m.scores
                    .iter()
                    .find(|x| &x.participant_id == pid)
                    .map(|x| x.value)
            });
            let mut cumulative = 0;
            for (k, (arrival, &(ack_us, amount))) in first_covering(&acks_in_match[i], &values)
                .into_iter()
                .zip(&acks_in_match[i])
                .enumerate()
            {
                cumulative += amount;
                match arrival {
                    Some(at) => {
                        if at < ack_us {
                            s.score_before_answer += 1;
                        }
                        latency.record(at.saturating_sub(ack_us));
                        s.latency_samples += 1;
                        let first = &mut first_seen[i][k];
                        *first = Some(first.map_or(at, |f: u64| f.min(at)));
                    }
                    None if final_value.is_some_and(|v| v >= cumulative) => {
                        s.samples_only_in_pk_ended += 1;
                    }
                    None => s.samples_never_shown += 1,
                }
            }
        }
    }
    for (i, seen) in first_seen.iter().enumerate() {
        for (k, at) in seen.iter().enumerate() {
            if let Some(at) = at {
                first_viewer.record(at.saturating_sub(acks_in_match[i][k].0));
            }
        }
    }
    for r in &mut rooms {
        if r.pk_score_updates_min == u64::MAX {
            r.pk_score_updates_min = 0;
        }
    }
    s.payment_to_pk_score_p50_ms = latency.quantile(0.5).map(ms);
    s.payment_to_pk_score_p99_ms = latency.quantile(0.99).map(ms);
    s.payment_to_pk_score_max_ms = (latency.count() > 0).then(|| ms(latency.max()));
    s.pk_score_delivery_p50_ms = delivery.quantile(0.5).map(ms);
    s.pk_score_delivery_p99_ms = delivery.quantile(0.99).map(ms);
    s.first_viewer_p50_ms = first_viewer.quantile(0.5).map(ms);
    s.first_viewer_p99_ms = first_viewer.quantile(0.99).map(ms);
    s.pk_ended_after_end_ms = last_ended_us.map(|at| ms((at as i64 - ends_at_us).max(0) as u64));

    // Checks.
    parts.pk_started_ok = viewers_connected == viewers_total
        && rooms.iter().all(|r| r.pk_started == r.viewers_connected);
    if !parts.pk_started_ok {
        failures.push(format!(
            "pk.started reached {} of {} viewers ({viewers_connected} connected)",
            rooms.iter().map(|r| r.pk_started).sum::<u64>(),
            viewers_total
        ));
    }
    let all_alike = ended_matches.windows(2).all(|w| w[0] == w[1]);
    parts.pk_ended_ok = viewers_connected == viewers_total
        && rooms.iter().all(|r| r.pk_ended == r.viewers_connected)
        && ended_matches.len() as u64 == viewers_connected
        && all_alike;
    if !parts.pk_ended_ok {
        failures.push(format!(
            "pk.ended of the match reached room A {} / {} viewers, room B {} / {} ({} events{}) within {} s of the end",
            rooms[0].pk_ended,
            viewers_per_room,
            rooms[1].pk_ended,
            viewers_per_room,
            ended_matches.len(),
            if all_alike { "" } else { ", not all alike" },
            drain_s
        ));
    }
    let ended_winners: Vec<Vec<String>> = ended_matches
        .iter()
        .map(|m| sorted(m.winner_ids.clone()))
        .collect();
    s.winner_ok = parts.pk_ended_ok
        && !s.expected_winner_ids.is_empty()
        && ended_winners.iter().all(|w| *w == s.expected_winner_ids)
        && sorted(s.winner_ids.clone()) == s.expected_winner_ids
        && s.match_status.as_deref() == Some("ended");
    if !s.winner_ok {
        failures.push(format!(
            "winner: expected {:?} (room A is {}), pk.ended said {:?}, GET match said {:?} with status {:?}",
            s.expected_winner_ids,
            participant_ids[0],
            ended_winners.first(),
            s.winner_ids,
            s.match_status
        ));
    }
    let ended_scores: Vec<BTreeMap<String, i64>> = ended_matches
        .iter()
        .map(|m| scores_map(&m.scores))
        .collect();
    s.scores_match_orders = !ended_scores.is_empty()
        && ended_scores.iter().all(|sc| *sc == s.orders_amount)
        && s.match_scores == s.orders_amount;
    if !s.scores_match_orders {
        failures.push(format!(
            "final scores: orders answered {:?}, GET match {:?}, pk.ended {:?}{}",
            s.orders_amount,
            s.match_scores,
            ended_scores.first(),
            if rooms
                .iter()
                .any(|r| r.checkout_errors.keys().any(|k| k == "no_answer"))
            {
                " (some checkouts got no answer: a paid order may be missing on the client)"
            } else {
                ""
            }
        ));
    }
    match &standings {
        Ok(value) => {
            s.standings = value.clone();
            let rows = standings_rows(value);
            let mut ok = true;
            for r in &mut rooms {
                let i = usize::from(r.label == "b");
                let row = rows.get(&r.participant_id).copied();
                (
                    r.standings_paid_gmv,
                    r.standings_paid_orders,
                    r.standings_likes,
                ) = row.unwrap_or((None, None, None));
                ok &= r.standings_paid_gmv == Some(r.amount_paid)
                    && r.standings_paid_orders == Some(purchases[i].acks.len() as i64);
            }
            parts.standings_match_orders = ok;
            if !ok {
                failures.push(format!(
                    "standings: paid_gmv {:?} and paid_orders {:?}, orders answered {:?} worth {:?}",
                    rooms.iter().map(|r| r.standings_paid_gmv).collect::<Vec<_>>(),
                    rooms.iter().map(|r| r.standings_paid_orders).collect::<Vec<_>>(),
                    rooms.iter().map(|r| r.orders_paid).collect::<Vec<_>>(),
                    rooms.iter().map(|r| r.amount_paid).collect::<Vec<_>>()
                ));
            }
        }
        Err(e) => failures.push(format!("GET standings failed: {e:#}")),
    }
    let span_floor = 1000 - PK_SCORE_TS_SLACK_MS;
    parts.pk_score_rate_ok = rooms.iter().all(|r| {
        r.pk_score_min_span_3_ms
            .is_none_or(|span| span >= span_floor)
            && r.pk_score_max_per_s <= PK_SCORE_PER_S + PK_SCORE_ARRIVAL_TOLERANCE
    });
    if !parts.pk_score_rate_ok {
        let opt = |x: Option<u64>| x.map_or_else(|| "-".into(), |x| x.to_string());
        failures.push(format!(
            "pk.score rate: three successive scores must span at least {span_floor} ms by server ts \
             and at most {} may arrive in 1 s; rooms A / B: shortest span {} / {} ms, \
             most in 1 s by arrival {} / {}",
            PK_SCORE_PER_S + PK_SCORE_ARRIVAL_TOLERANCE,
            opt(rooms[0].pk_score_min_span_3_ms),
            opt(rooms[1].pk_score_min_span_3_ms),
            rooms[0].pk_score_max_per_s,
            rooms[1].pk_score_max_per_s
        ));
    }
    s.pk_event_problems = problems.len() as u64;
    parts.pk_events_ok = problems.is_empty() && s.decode_errors == 0;
    if !parts.pk_events_ok {
        failures.push(format!(
            "{} wrong pk events or frames; first: {}",
            problems.len().max(s.decode_errors as usize),
            problems.first().cloned().unwrap_or_default()
        ));
    }
    problems.truncate(PROBLEMS_LISTED);
    s.pk_event_problem_list = problems;
    parts.viewers_ok = s.seq_gaps == 0 && s.viewers_disconnected == 0;
    if !parts.viewers_ok {
        failures.push(format!(
            "viewers: {} seq gaps, {} disconnected",
            s.seq_gaps, s.viewers_disconnected
        ));
    }
    for r in &rooms {
        s.pk_score_updates
            .insert(r.room_id.clone(), r.pk_score_updates);
        s.pk_score_max_per_s
            .insert(r.room_id.clone(), r.pk_score_max_per_s);
    }
    s.rooms = rooms;
    s.failures = failures;
    s.verdict = verdict(s, &parts);
}

/// Runs the scenario.
pub async fn run(args: ContestArgs) -> anyhow::Result<()> {
    args.check()?;
    let viewers_total = args.viewers * 2;
    common::check_nofile(viewers_total + args.concurrency as u64 * 4)?;
    let target = Target::resolve(&args.url, args.allow_remote).await?;
    Api::new(&target, None)?.check_reachable().await?;
    let secret = args.jwt_secret.as_deref().context(
        "contest needs --jwt-secret (or HARVEST_JWT_SECRET): the secret the server signs \
         tokens with, to mint the streamers', the organizer's, the buyers' and the \
         viewers' tokens",
    )?;

    // In process, while the server is idle: the engine's rate.
    let (score_events_per_s, engine) = if args.engine_events > 0 {
        report::note(
            None,
            format!(
                "engine: applying {} paid orders, {} runs, in process",
                n(args.engine_events),
                args.engine_runs
            ),
        );
        let (events, runs) = (args.engine_events, args.engine_runs);
        let (rate, figures) = tokio::task::spawn_blocking(move || engine_rate(events, runs))
            .await
            .context("the engine measurement panicked")??;
        (Some(rate.round()), figures)
    } else {
        (None, EngineFigures::default())
    };

    let run_id = common::run_id();
    let ttl = Duration::from_secs(args.duration + 3600);
    let minter = Minter::new(secret, ttl)?;
    let streamer_ids: Vec<String> = LABELS
        .iter()
        .map(|l| format!("lt-streamer-{run_id}-{l}"))
        .collect();
    let streamers: Vec<Api> = LABELS
        .iter()
        .zip(&streamer_ids)
        .map(|(l, id)| {
            Api::new(
                &target,
                Some(minter.token(id, &format!("Load-test streamer {l}"), &["streamer"])?),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let organizer = Api::new(
        &target,
        Some(minter.token(
            &format!("lt-organizer-{run_id}"),
            "Load-test organizer",
            &["organizer"],
        )?),
    )?;

    // Setup: a product, a live room and a sale per streamer.
    let rates = [args.rate_a, args.rate_b];
    let mut setups: Vec<SaleSetup> = Vec::new();
    for (i, api) in streamers.iter().enumerate() {
        let stock = args.stock(rates[i]);
        let setup = api
            .setup_sale(
                &run_id,
                &format!("contest-{}", LABELS[i]),
                &format!("Contest load test, room {}", LABELS[i].to_uppercase()),
                &SaleSpec {
                    price: args.price,
                    stock,
                    per_user_limit: stock,
                    duration_s: args.duration + 600,
                    hold_ttl_s: 600,
                },
            )
            .await?;
        setups.push(setup);
    }
    let cleanup = |setups: Vec<SaleSetup>| {
        let streamers = streamers.clone();
        async move {
            for (api, setup) in streamers.iter().zip(&setups) {
                api.end_sale_and_room(setup).await;
            }
        }
    };

    // The contest over both rooms.
    let now = chrono::Utc::now();
    let contest = organizer
        .call(
            reqwest::Method::POST,
            "/api/v1/contests",
            Some(json!({
                "title": format!("Load-test contest {run_id}"),
                "starts_at": rfc3339(now - chrono::Duration::seconds(5)),
                "ends_at": rfc3339(now + chrono::Duration::seconds(args.duration as i64 + 900)),
                "participants": LABELS.iter().enumerate().map(|(i, l)| json!({
                    "name": format!("Room {} {run_id}", l.to_uppercase()),
                    "owner_id": streamer_ids[i],
                    "room_ids": [setups[i].room_id],
                })).collect::<Vec<_>>(),
                "scoring": {
                    "mode": "weighted",
                    "metrics": [
                        {"metric": "paid_gmv", "weight": WEIGHT_GMV},
                        {"metric": "likes", "weight": WEIGHT_LIKES},
                    ],
                },
            })),
        )
        .await;
    let contest = match contest {
        Ok(c) => c,
        Err(e) => {
            cleanup(setups).await;
            return Err(e.context(
                "setup: creating the contest (does this server serve the contest API of API.md §5?)",
            ));
        }
    };
    let contest_id = contest
        .get("id")
        .and_then(Value::as_str)
        .with_context(|| format!("the created contest has no id: {contest}"))?
        .to_owned();
    let participant_ids: Vec<String> = LABELS
        .iter()
        .map(|l| {
            let name = format!("Room {} {run_id}", l.to_uppercase());
            contest
                .get("participants")
                .and_then(Value::as_array)
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.get("name").and_then(Value::as_str) == Some(&name))
                })
                .and_then(|p| p.get("id").and_then(Value::as_str))
                .map(str::to_owned)
                .with_context(|| {
                    format!("the created contest has no participant {name:?}: {contest}")
                })
        })
        .collect::<anyhow::Result<_>>()?;

    // Viewers, before the match starts.
    let clock = Clock::new();
    let ws_args = TargetArgs {
        url: args.url.clone(),
        allow_remote: args.allow_remote,
        jwt_secret: None,
        protobuf: false,
        source_ips: args.source_ips,
        concurrency: 16,
        connect_rate: 200,
        connect_timeout: 30,
        ws_read_buffer: 64 * 1024,
        json: args.json,
    };
    let connector = Connector::new(&target, &ws_args);
    let counters = Arc::new(ViewerCounters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut viewer_tasks = JoinSet::new();
    for (room, setup) in setups.iter().enumerate() {
        for v in 0..args.viewers {
            let user = format!("lt-viewer-{run_id}-{}-{v}", LABELS[room]);
            let token = minter.token(&user, &format!("viewer {v}"), &["viewer"])?;
            let url = target.ws_url(&setup.room_id, Some(&token));
            let Some((ws, first)) = connector.open(&url).await else {
                continue;
            };
            let likes = match (v, room) {
                (0, 0) => args.likes_a,
                (0, 1) => args.likes_b,
                _ => 0,
            };
            viewer_tasks.spawn(viewer(
                ws,
                first,
                room,
                likes,
                clock,
                counters.clone(),
                stop_rx.clone(),
            ));
        }
    }
    let viewers_connected = connector.stats.connected.load(Ordering::Relaxed);
    let connect_failures = connector.stats.failed.load(Ordering::Relaxed);
    if viewers_connected < viewers_total {
        report::note(
            None,
            format!(
                "only {viewers_connected} of {viewers_total} viewers connected: {}",
                connector.stats.last_error().unwrap_or_default()
            ),
        );
    }

    // The match.
    let created = organizer
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/contests/{contest_id}/matches"),
            Some(json!({
                "participant_ids": participant_ids,
                "duration_s": args.duration,
                "metric": "paid_gmv",
            })),
        )
        .await;
    let created = match created.and_then(|m| parse_match(m, "the created match")) {
        Ok(m) => m,
        Err(e) => {
            let _ = stop_tx.send(true);
            cleanup(setups).await;
            return Err(e.context("setup: creating the PK match"));
        }
    };
    let match_id = created.id.clone();
    report::note(
        None,
        format!(
            "contest {contest_id}, match {match_id} from {} to {}; rooms {} and {}",
            rfc3339(created.starts_at),
            rfc3339(created.ends_at),
            setups[0].room_id,
            setups[1].room_id
        ),
    );

    // Wait for pk.started at every viewer and for the match to be live.
    let wait_from = Instant::now();
    let mut live = created.status == MatchStatus::Live;
    while wait_from.elapsed() < START_WAIT
        && (!live || counters.started.load(Ordering::Relaxed) < viewers_connected)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !live
            && let Ok(m) = organizer
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/matches/{match_id}"),
                    None,
                )
                .await
                .and_then(|m| parse_match(m, "the match"))
        {
            live = m.status == MatchStatus::Live;
        }
    }
    if !live {
        let _ = stop_tx.send(true);
        cleanup(setups).await;
        bail!(
            "the match {match_id} is not live 5 s after its creation (starts_at {})",
            rfc3339(created.starts_at)
        );
    }

    // Timed: buyers in both rooms until shortly before the end.
    let ends_at_ms = created.ends_at.timestamp_millis();
    let buy_ms = ends_at_ms - common::unix_ms() - args.stop_before_end_ms as i64;
    if buy_ms < 1000 {
        let _ = stop_tx.send(true);
        cleanup(setups).await;
        bail!("the match ends too soon to buy in it ({buy_ms} ms left)");
    }
    let clients = Arc::new(http_clients(
        &target,
        args.source_ips,
        args.concurrency * 2,
    )?);
    let checkout_latency = Arc::new(Histogram::new());
    let mut loads = Vec::new();
    for (i, setup) in setups.iter().enumerate() {
        let user_prefix = format!("lt-buyer-{run_id}-{}-", LABELS[i]);
        let user_of = |b: u32| format!("{user_prefix}{b}");
        loads.push(Arc::new(RoomLoad {
            buyers: Buyers {
                base: target.base.clone(),
                sale_id: setup.sale_id.clone(),
                buyers: args.buyers,
                auth: common::mint_bearers(&minter, args.buyers, &user_of)?,
                key_prefix: format!("lt-{run_id}-{}", LABELS[i]),
            },
            price: args.price,
            clock,
            checkout_latency: checkout_latency.clone(),
            paid: AtomicU64::new(0),
            out: Mutex::new(Purchases::default()),
        }));
    }
    let server_before = organizer.server_sample().await.ok();
    let cpu_before = common::client_cpu_s();
    let buy_started = Instant::now();
    let start = tokio::time::Instant::now();
    let stop = start + Duration::from_millis(buy_ms as u64);
    let bar = report::bar(buy_ms as u64 / 1000, "contest");
    let mut buyers_tasks = JoinSet::new();
    for (i, load) in loads.iter().enumerate() {
        buyers_tasks.spawn(buy(
            load.clone(),
            clients.clone(),
            rates[i],
            args.concurrency,
            start,
            stop,
        ));
    }
    loop {
        tokio::select! {
            joined = buyers_tasks.join_next() => if joined.is_none() { break },
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                bar.set_position(buy_started.elapsed().as_secs());
                bar.set_message(format!(
                    "paid A {} B {}, pk.score {}",
                    loads[0].paid.load(Ordering::Relaxed),
                    loads[1].paid.load(Ordering::Relaxed),
                    counters.scores.load(Ordering::Relaxed)
                ));
            }
        }
    }
    bar.finish();
    let buying_s = buy_started.elapsed().as_secs_f64();
    let client_cpu_s = common::client_cpu_s() - cpu_before;
    let server_after = organizer.server_sample().await.ok();

    // pk.ended at every viewer, by the end plus --drain.
    let ended_by = ends_at_ms + args.drain as i64 * 1000;
    while counters.ended.load(Ordering::Relaxed) < viewers_connected && common::unix_ms() < ended_by
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything else still on its way (a second pk.ended would be a fault).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let final_match = organizer
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/matches/{match_id}"),
            None,
        )
        .await
        .and_then(|m| parse_match(m, "the match"));
    let standings = organizer
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/contests/{contest_id}/standings"),
            None,
        )
        .await;
    let _ = stop_tx.send(true);
    let mut logs = Vec::new();
    while let Some(joined) = viewer_tasks.join_next().await {
        if let Ok(log) = joined {
            logs.push(log);
        }
    }
    cleanup(setups.clone()).await;

    // Analysis.
    let mut s = ContestSummary {
        score_events_per_s,
        engine,
        contest_id: contest_id.clone(),
        match_id: match_id.clone(),
        duration_s: args.duration,
        match_starts_at: Some(rfc3339(created.starts_at)),
        match_ends_at: Some(rfc3339(created.ends_at)),
        buying_s: round2(buying_s),
        client_cpu_s: round2(client_cpu_s),
        client_cpu_cores: round2(client_cpu_s / buying_s.max(1e-9)),
        client_bound: client_cpu_s / buying_s.max(1e-9) > CLIENT_BOUND_CORES,
        server_cpu_s: match (server_before, server_after) {
            (Some(b), Some(a)) => Some(round2((a.cpu_s - b.cpu_s).max(0.0))),
            _ => None,
        },
        viewers_connected,
        connect_failures,
        run_id,
        ..Default::default()
    };
    let unix_offset_us = common::unix_us() - clock.now_us() as i64;
    analyze(
        &mut s,
        Observed {
            setups,
            participant_ids,
            rates,
            created,
            final_match,
            standings,
            purchases: loads.iter().map(|l| l.with(std::mem::take)).collect(),
            checkout_latency,
            logs,
            unix_offset_us,
            viewers_per_room: args.viewers,
            drain_s: args.drain,
        },
    );
    if let Some(e) = &s.first_error {
        report::note(None, format!("first error: {e}"));
    }
    report::emit(&s, args.json)?;
    if !s.verdict.correct {
        bail!("C1 correctness checks failed: {}", s.failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the brief of C1 fixes.
    const C1_FIGURES: [&str; 13] = [
        "score_events_per_s",
        "payment_to_pk_score_p50_ms",
        "payment_to_pk_score_p99_ms",
        "payment_to_pk_score_max_ms",
        "pk_score_updates",
        "pk_score_max_per_s",
        "orders_paid",
        "winner_ok",
        "scores_match_orders",
        "standings",
        "client_cpu_s",
        "client_bound",
        "verdict",
    ];

    #[test]
    fn summary_has_every_c1_figure() {
        let value = serde_json::to_value(ContestSummary::default()).unwrap();
        let object = value.as_object().unwrap();
        for name in C1_FIGURES {
            assert!(object.contains_key(name), "missing {name}");
        }
        assert!(object["payment_to_pk_score_p99_ms"].is_null());
        assert!(object["verdict"]["correct"].is_boolean());
    }

    #[test]
    fn orders_are_covered_by_the_first_score_reaching_their_cumulative_sum() {
        // Orders of 100 answered at 10, 20, 30 ms; scores arrive at 15 (100), 40 (200),
        // 50 (100: out of order, ignored by the running max), 60 (300).
        let acks = [(10, 100), (20, 100), (30, 100)];
        let scores = [(15, 100), (40, 200), (50, 100), (60, 300)];
        assert_eq!(
            first_covering(&acks, &scores),
            [Some(15), Some(40), Some(60)]
        );
        // A score above the sum covers every order up to it, even one answered later.
        assert_eq!(
            first_covering(&acks, &[(5, 300)]),
            [Some(5), Some(5), Some(5)]
        );
        // Never shown.
        assert_eq!(
            first_covering(&acks, &[(15, 100), (40, 150)]),
            [Some(15), None, None]
        );
        assert_eq!(first_covering(&acks, &[]), [None, None, None]);
        assert!(first_covering(&[], &scores).is_empty());
    }

    #[test]
    fn windows_are_half_open() {
        // Scores every 500 ms: two per window.
        assert_eq!(max_in_window(&[0, 500, 1000, 1500], 1000), 2);
        assert_eq!(max_in_window(&[0, 500, 999], 1000), 3);
        assert_eq!(max_in_window(&[1500, 0, 700], 1000), 2);
        assert_eq!(max_in_window(&[], 1000), 0);
        assert_eq!(max_in_window(&[7], 1000), 1);
        assert_eq!(min_span(&[0, 500, 1200], 2), Some(500));
        assert_eq!(min_span(&[1200, 0, 499, 998], 3), Some(701));
        assert_eq!(min_span(&[0, 499, 998, 1497], 3), Some(998));
        assert_eq!(min_span(&[3], 2), None);
        assert_eq!(min_span(&[3, 4], 0), None);
    }

    fn a_match() -> Match {
        Match {
            id: "m1".into(),
            participant_ids: vec!["pa".into(), "pb".into()],
            ends_at: chrono::DateTime::from_timestamp_millis(T0 + 30_000).unwrap(),
            ..Default::default()
        }
    }

    fn pk_score(a: i64, b: i64, leaders: &[&str]) -> harvest_proto::ws::PkScore {
        harvest_proto::ws::PkScore {
            match_id: "m1".into(),
            scores: vec![
                Score {
                    participant_id: "pa".into(),
                    value: a,
                },
                Score {
                    participant_id: "pb".into(),
                    value: b,
                },
            ],
            leader_ids: leaders.iter().map(|s| (*s).to_owned()).collect(),
            ends_at: a_match().ends_at,
        }
    }

    #[test]
    fn pk_scores_are_checked_against_their_match() {
        let m = a_match();
        assert_eq!(score_problem(&pk_score(5, 3, &["pa"]), &m, None), None);
        assert_eq!(score_problem(&pk_score(0, 0, &[]), &m, None), None);
        assert_eq!(
            score_problem(&pk_score(4, 4, &["pb", "pa"]), &m, None),
            None
        );
        let wrong_leader = score_problem(&pk_score(5, 3, &["pb"]), &m, None).unwrap();
        assert!(wrong_leader.contains("leader_ids"), "{wrong_leader}");
        let mut late = pk_score(5, 3, &["pa"]);
        late.ends_at = chrono::DateTime::from_timestamp_millis(1_800_000_001_000).unwrap();
        assert!(score_problem(&late, &m, None).unwrap().contains("ends_at"));
        let mut missing = pk_score(5, 3, &["pa"]);
        missing.scores.pop();
        assert!(
            score_problem(&missing, &m, None)
                .unwrap()
                .contains("participants")
        );
        let before = scores_map(&pk_score(6, 3, &["pa"]).scores);
        assert!(
            score_problem(&pk_score(5, 3, &["pa"]), &m, Some(&before))
                .unwrap()
                .contains("went down")
        );
    }

    const T0: i64 = 1_800_000_000_000;

    fn at(ms: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn scored(values: [i64; 2], ended: bool) -> Match {
        let scores = vec![
            Score {
                participant_id: "pa".into(),
                value: values[0],
            },
            Score {
                participant_id: "pb".into(),
                value: values[1],
            },
        ];
        let by_id = scores_map(&scores);
        Match {
            status: if ended {
                MatchStatus::Ended
            } else {
                MatchStatus::Live
            },
            winner_ids: if ended { leaders(&by_id) } else { vec![] },
            scores,
            starts_at: at(T0),
            ..a_match()
        }
    }

    /// A viewer of `room` that got pk.started, the scores (arrival µs, values, ts ms)
    /// and pk.ended with `end`.
    fn log_of(room: usize, scores: &[(u64, [i64; 2], i64)], end: [i64; 2]) -> ViewerLog {
        ViewerLog {
            room,
            started: vec![(1, scored([0, 0], false))],
            scores: scores
                .iter()
                .map(|&(arrival_us, v, ts_ms)| {
                    let leaders: Vec<String> = leaders(&scores_map(&scored(v, false).scores));
                    ScoreSeen {
                        arrival_us,
                        ts_ms,
                        data: harvest_proto::ws::PkScore {
                            leader_ids: leaders,
                            ..pk_score(v[0], v[1], &[])
                        },
                    }
                })
                .collect(),
            ended: vec![(31_000_000, scored(end, true))],
            ..Default::default()
        }
    }

    fn ack(ack_us: u64, paid_at_ms: i64) -> Ack {
        Ack {
            ack_us,
            amount: 990,
            paid_at_ms: Some(paid_at_ms),
        }
    }

    fn observed(logs: Vec<ViewerLog>, final_values: [i64; 2]) -> Observed {
        let setup = |r: &str| SaleSetup {
            product_id: format!("p{r}"),
            room_id: format!("room-{r}"),
            sale_id: format!("sale-{r}"),
        };
        let purchases = vec![
            // Room A: three orders answered at 1.0, 1.1 and 2.0 s; one paid after the end.
            Purchases {
                acks: vec![
                    ack(2_000_000, T0 + 2_000),
                    ack(1_000_000, T0 + 1_000),
                    ack(1_100_000, T0 + 1_100),
                    ack(40_000_000, T0 + 40_000),
                ],
                offered: 4,
                ..Default::default()
            },
            // Room B: one order answered at 1.5 s.
            Purchases {
                acks: vec![ack(1_500_000, T0 + 1_500)],
                offered: 1,
                ..Default::default()
            },
        ];
        Observed {
            setups: vec![setup("a"), setup("b")],
            participant_ids: vec!["pa".into(), "pb".into()],
            rates: [2.0, 1.0],
            created: Match {
                starts_at: at(T0),
                ..scored([0, 0], false)
            },
            final_match: Ok(scored(final_values, true)),
            standings: Ok(json!({"rows": [
                {"participant_id": "pa", "metrics": {"paid_gmv": 3960, "paid_orders": 4, "likes": 0}},
                {"participant_id": "pb", "metrics": {"paid_gmv": 990, "paid_orders": 1, "likes": 0}},
            ]})),
            purchases,
            checkout_latency: Arc::new(Histogram::new()),
            logs,
            unix_offset_us: T0 * 1000,
            viewers_per_room: 1,
            drain_s: 10,
        }
    }

    #[test]
    fn a_run_is_analyzed() {
        // Both viewers get the same scores: at 1.2 s A 1980 (covers A's first two
        // orders), at 1.7 s B 990, at 2.3 s A 2970 (A's third).
        let scores = [
            (1_200_000, [1980, 0], T0 + 1_150),
            (1_700_000, [1980, 990], T0 + 1_650),
            (2_300_000, [2970, 990], T0 + 2_250),
        ];
        let logs = vec![
            log_of(0, &scores, [2970, 990]),
            log_of(1, &scores, [2970, 990]),
        ];
        let mut s = ContestSummary {
            viewers_connected: 2,
            score_events_per_s: Some(2e6),
            ..Default::default()
        };
        analyze(&mut s, observed(logs, [2970, 990]));
        assert!(s.verdict.correct, "{:?}", s.failures);
        assert!(s.verdict.c1_pass, "{:?}", s.verdict);
        assert_eq!(s.orders_paid, 5);
        assert_eq!(s.orders_outside_match, 1);
        assert_eq!(s.expected_winner_ids, ["pa"]);
        assert!(s.winner_ok && s.scores_match_orders);
        // 4 orders inside the match x 2 viewers; A: 200, 100, 300 ms; B: 200 ms.
        assert_eq!(s.latency_samples, 8);
        assert_eq!(s.payment_to_pk_score_max_ms, Some(300.0));
        // Percentiles are bucket bounds, within 1/64 above the value.
        let p50 = s.payment_to_pk_score_p50_ms.unwrap();
        assert!((200.0..=203.2).contains(&p50), "{p50}");
        assert_eq!(s.pk_score_updates["room-a"], 3);
        assert_eq!(s.pk_score_max_per_s["room-b"], 2);
        assert_eq!(s.rooms[0].pk_score_max_per_s_server_ts, 2);
        assert_eq!(s.pk_ended_after_end_ms, Some(1000.0));
        assert_eq!(s.pk_score_delivery_p50_ms, Some(50.0));
        assert_eq!(s.rooms[1].pk_score_min_gap_ms, Some(500));
        assert_eq!(s.rooms[1].pk_score_min_span_3_ms, Some(1100));

        // B's viewer misses pk.ended, and A's final score lacks an order.
        let mut short = log_of(1, &scores, [2970, 990]);
        short.ended.clear();
        let logs = vec![log_of(0, &scores, [1980, 990]), short];
        let mut s = ContestSummary {
            viewers_connected: 2,
            ..Default::default()
        };
        analyze(&mut s, observed(logs, [1980, 990]));
        assert!(!s.verdict.correct);
        assert!(!s.verdict.pk_ended_ok && !s.winner_ok && !s.scores_match_orders);
        assert!(
            s.failures.iter().any(|f| f.contains("final scores")),
            "{:?}",
            s.failures
        );

        // Three scores within one second at the server: the throttle is broken.
        let fast = [
            (1_200_000, [1980, 0], T0 + 1_000),
            (1_700_000, [1980, 990], T0 + 1_300),
            (2_100_000, [2970, 990], T0 + 1_600),
        ];
        let logs = vec![log_of(0, &fast, [2970, 990]), log_of(1, &fast, [2970, 990])];
        let mut s = ContestSummary {
            viewers_connected: 2,
            ..Default::default()
        };
        analyze(&mut s, observed(logs, [2970, 990]));
        assert!(!s.verdict.pk_score_rate_ok && !s.verdict.correct);
        assert_eq!(s.rooms[0].pk_score_max_per_s_server_ts, 3);
        assert_eq!(s.rooms[0].pk_score_min_span_3_ms, Some(600));

        // Every 500 ms by the throttle, stamped 499 ms apart: within the slack.
        let jittered = [
            (1_200_000, [1980, 0], T0 + 1_000),
            (1_700_000, [1980, 990], T0 + 1_499),
            (2_300_000, [2970, 990], T0 + 1_998),
        ];
        let logs = vec![
            log_of(0, &jittered, [2970, 990]),
            log_of(1, &jittered, [2970, 990]),
        ];
        let mut s = ContestSummary {
            viewers_connected: 2,
            ..Default::default()
        };
        analyze(&mut s, observed(logs, [2970, 990]));
        assert!(s.verdict.pk_score_rate_ok, "{:?}", s.failures);
        assert_eq!(s.rooms[0].pk_score_max_per_s_server_ts, 3);
        assert_eq!(s.rooms[0].pk_score_min_span_3_ms, Some(998));
    }

    #[test]
    fn leaders_follow_the_winner_rule() {
        let m = |a, b| BTreeMap::from([("pa".to_owned(), a), ("pb".to_owned(), b)]);
        assert_eq!(leaders(&m(5, 3)), ["pa"]);
        assert_eq!(leaders(&m(3, 3)), ["pa", "pb"]);
        assert!(leaders(&m(0, 0)).is_empty());
    }

    #[test]
    fn engine_rate_counts_every_order() {
        let (rate, figures) = engine_rate(3_000, 2).unwrap();
        assert!(rate > 0.0);
        assert!(figures.results_ok);
        assert_eq!(figures.runs_events_per_s.len(), 2);
    }

    fn correct() -> (ContestSummary, Verdict) {
        let s = ContestSummary {
            winner_ok: true,
            scores_match_orders: true,
            latency_samples: 10,
            payment_to_pk_score_p99_ms: Some(550.0),
            score_events_per_s: Some(2_000_000.0),
            ..Default::default()
        };
        let parts = Verdict {
            orders_ok: true,
            pk_started_ok: true,
            pk_ended_ok: true,
            standings_match_orders: true,
            pk_score_rate_ok: true,
            pk_events_ok: true,
            viewers_ok: true,
            ..Default::default()
        };
        (s, parts)
    }

    #[test]
    fn verdict_applies_the_checks_and_targets() {
        let (s, parts) = correct();
        let v = verdict(&s, &parts);
        assert!(v.correct && v.p99_ok && v.c1_pass, "{v:?}");
        let slow = ContestSummary {
            payment_to_pk_score_p99_ms: Some(601.0),
            ..correct().0
        };
        let v = verdict(&slow, &parts);
        assert!(v.correct && !v.p99_ok && !v.c1_pass);
        let unshown = ContestSummary {
            samples_only_in_pk_ended: 1,
            ..correct().0
        };
        assert!(!verdict(&unshown, &parts).p99_ok);
        let wrong = ContestSummary {
            winner_ok: false,
            ..correct().0
        };
        assert!(!verdict(&wrong, &parts).correct);
        let no_engine = ContestSummary {
            score_events_per_s: None,
            ..correct().0
        };
        let v = verdict(&no_engine, &parts);
        assert_eq!((v.score_events_per_s_ok, v.c1_pass), (None, false));
        let mut bad = parts.clone();
        bad.pk_score_rate_ok = false;
        assert!(!verdict(&correct().0, &bad).correct);
    }

    #[test]
    fn standings_rows_are_read() {
        let value = json!({"rows": [
            {"participant_id": "pa", "metrics": {"paid_gmv": 990, "paid_orders": 1, "likes": 5}},
            {"participant_id": "pb", "metrics": {}},
        ]});
        let rows = standings_rows(&value);
        assert_eq!(rows["pa"], (Some(990), Some(1), Some(5)));
        assert_eq!(rows["pb"], (None, None, None));
        assert!(standings_rows(&json!({})).is_empty());
    }

    #[test]
    fn arguments_are_bounded() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ContestArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["t", "--jwt-secret", "s"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        let d = parse(&[]);
        assert!(d.check().is_ok());
        assert_eq!((d.duration, d.viewers, d.buyers), (30, 3, 100));
        assert_eq!(d.stock(40.0), 2500);
        for bad in [
            &["--duration", "9"][..],
            &["--duration", "3601"],
            &["--rate-b", "40"],
            &["--rate-a", "0"],
            &["--viewers", "0"],
            &["--price", "0"],
            &["--stop-before-end-ms", "26000"],
            &["--engine-runs", "0"],
        ] {
            assert!(parse(bad).check().is_err(), "{bad:?} accepted");
        }
    }
}
