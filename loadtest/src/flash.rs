//! S3, flash-sale storm through HTTP, and S2, rejections after the sell-out.
//!
//! As a streamer it creates a product, a live room with the product in its bag and a
//! flash sale. It then measures `GET /healthz` with the same HTTP client and the same
//! concurrency (the yardstick the targets are ratios of), and sends the storm: each of
//! `--buyers` buyers (distinct tokens, minted before any timing) reserves with a unique
//! `Idempotency-Key`, `--concurrency` requests in flight at once. A fraction
//! (`--retries`) of the requests is sent again with the same key, either after the first
//! answer or alongside the first request, and every answer to one key is compared.
//! Once the sale is sold out, `--sold-out-phase` more reservations measure the
//! rejection rate (S2).
//!
//! Afterwards the sale's counters (`remaining + held + sold == stock`) and its
//! allocation list (positions 1..n without a gap, units adding up to `held + sold`) are
//! checked against what the buyers were told.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::common::{
    self, Api, CLIENT_BOUND_CORES, Minter, SaleSpec, SaleState, Target, Timed, http_clients, per_s,
    ratio, round2, round3, run_phase,
};
use crate::hist::{Histogram, ms};
use crate::report::{self, Summary, n, opt_ms};

/// S3 target: the storm's request rate against the `/healthz` rate.
const MIN_THROUGHPUT_RATIO: f64 = 0.5;
/// S3 target: the storm's p99 against the `/healthz` p99.
const MAX_P99_RATIO: f64 = 2.0;
/// S2 target: the sold-out rejection rate against the `/healthz` rate.
const MIN_SOLD_OUT_RATIO: f64 = 0.8;
/// Allocations fetched per page (the API's maximum).
pub const ALLOCATION_PAGE: u32 = 500;
/// Longest wait for the allocation list to agree with the sale's counters.
const ALLOCATIONS_SETTLE: Duration = Duration::from_secs(10);

/// Arguments of `harvest-loadtest flash-sale`.
#[derive(Debug, clap::Args)]
pub struct FlashSaleArgs {
    /// Base URL of a running `harvest serve`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// HS256 secret the server signs tokens with (its HARVEST_JWT_SECRET); the load
    /// generator mints the streamer's and every buyer's token with it.
    #[arg(long, env = "HARVEST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Spread the HTTP connections over this many loopback source addresses
    /// (127.0.1.1, 127.0.1.2, ...); 0 lets the kernel choose. Only for an IPv4
    /// loopback target.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u32,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Units for sale.
    #[arg(long, default_value_t = 10_000)]
    pub stock: u64,
    /// Distinct buyers, each with a token of its own.
    #[arg(long, default_value_t = 50_000)]
    pub buyers: u64,
    /// Requests in flight at once (also the size of the keep-alive connection pool).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// The sale's per-user limit, in units.
    #[arg(long, default_value_t = 2)]
    pub per_user_limit: u64,
    /// Each reservation asks for a random quantity in 1..=N.
    #[arg(long, default_value_t = 1)]
    pub quantity_max: u64,
    /// Reservations (distinct Idempotency-Keys) per buyer; a buyer's are sent one right
    /// after the other, so they race each other at the server.
    #[arg(long, default_value_t = 1)]
    pub keys_per_buyer: u64,
    /// Fraction of the reservations sent a second time with the same Idempotency-Key
    /// and body (half of them after the first answer, half alongside the first request).
    #[arg(long, default_value_t = 0.05)]
    pub retries: f64,
    /// The sale's hold TTL in seconds (long enough that no hold expires during the run).
    #[arg(long, default_value_t = 3600)]
    pub hold_ttl_s: u64,
    /// The sale's unit price, in fen.
    #[arg(long, default_value_t = 990)]
    pub price: u64,
    /// `GET /healthz` requests of the yardstick phase (default: as many as the storm).
    #[arg(long)]
    pub healthz_requests: Option<u64>,
    /// S2: reservations sent once the sale is sold out (0: skip).
    #[arg(long, default_value_t = 50_000)]
    pub sold_out_phase: u64,
    /// Safety bound: each timed phase stops sending after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub duration_limit: u64,
    /// Seed of the quantities and of the choice of replayed requests (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl FlashSaleArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=10_000_000).contains(&self.stock) {
            bail!("--stock must be in 1..=10000000");
        }
        if !(1..=1_000_000).contains(&self.buyers) {
            bail!("--buyers must be in 1..=1000000");
        }
        if !(1..=10_000).contains(&self.concurrency) {
            bail!("--concurrency must be in 1..=10000");
        }
        if !(1..=1_000_000).contains(&self.per_user_limit) {
            bail!("--per-user-limit must be in 1..=1000000");
        }
        if !(1..=100).contains(&self.quantity_max) {
            bail!("--quantity-max must be in 1..=100 (the API's quantity range)");
        }
        if !(1..=10).contains(&self.keys_per_buyer) {
            bail!("--keys-per-buyer must be in 1..=10 (the server limits reservations per user)");
        }
        if !(0.0..=1.0).contains(&self.retries) {
            bail!("--retries must be a fraction in 0..=1");
        }
        if !(1..=3600).contains(&self.hold_ttl_s) {
            bail!("--hold-ttl-s must be in 1..=3600 (the API's range)");
        }
        if self.price > 100_000_000 {
            bail!("--price must be at most 100000000 fen");
        }
        if self
            .healthz_requests
            .is_some_and(|r| !(1..=10_000_000).contains(&r))
        {
            bail!("--healthz-requests must be in 1..=10000000");
        }
        if self.sold_out_phase > 10_000_000 {
            bail!("--sold-out-phase must be at most 10000000");
        }
        if !(1..=3600).contains(&self.duration_limit) {
            bail!("--duration-limit must be in 1..=3600 seconds");
        }
        if self.source_ips > 60_000 {
            bail!("--source-ips must be at most 60000");
        }
        Ok(())
    }
}

/// How a reservation is replayed with the same Idempotency-Key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    None,
    /// Sent again once the first answer is in.
    After,
    /// Sent at the same time as the first request.
    Alongside,
}

/// One reservation (one Idempotency-Key) of the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPlan {
    pub buyer: u32,
    /// The buyer's key number (part of the Idempotency-Key).
    pub key: u32,
    pub quantity: u64,
    pub replay: Replay,
}

/// The storm: `keys_per_buyer` reservations per buyer, buyer after buyer, with random
/// quantities in 1..=`quantity_max` and a `retries` fraction replayed.
pub fn plan(
    buyers: u64,
    keys_per_buyer: u64,
    quantity_max: u64,
    retries: f64,
    seed: u64,
) -> Vec<KeyPlan> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut items = Vec::with_capacity((buyers * keys_per_buyer) as usize);
    let mut replays = 0u64;
    for buyer in 0..buyers as u32 {
        for key in 0..keys_per_buyer as u32 {
            let quantity = rng.random_range(1..=quantity_max.max(1));
            let replay = if rng.random_bool(retries.clamp(0.0, 1.0)) {
                replays += 1;
                if replays.is_multiple_of(2) {
                    Replay::Alongside
                } else {
                    Replay::After
                }
            } else {
                Replay::None
            };
            items.push(KeyPlan {
                buyer,
                key,
                quantity,
                replay,
            });
        }
    }
    items
}

/// The S2 phase: one single-unit reservation per item, buyers in turn, keys numbered
/// after the storm's.
pub fn sold_out_plan(requests: u64, buyers: u64, first_key: u64) -> Vec<KeyPlan> {
    (0..requests)
        .map(|i| KeyPlan {
            buyer: (i % buyers) as u32,
            key: (first_key + i / buyers) as u32,
            quantity: 1,
            replay: Replay::None,
        })
        .collect()
}

impl Timed for Record {
    fn latency_us(&self) -> u64 {
        self.latency_us
    }
}

/// A hold as a buyer was told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSeen {
    pub id: String,
    pub quantity: u64,
    pub user_id: String,
}

/// One answer (or failure) of one request.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Index in the phase's plan.
    pub item: u32,
    /// A replay of the item's key.
    pub replay: bool,
    /// HTTP status; 0 when no answer came (connection error, timeout).
    pub status: u16,
    /// The error code of an error answer.
    pub code: Option<String>,
    /// The hold of a 2xx answer.
    pub hold: Option<HoldSeen>,
    pub latency_us: u64,
    /// When the answer arrived, µs after the phase started.
    pub at_us: u64,
    /// What went wrong, for 5xx answers, unreadable answers and failures.
    pub detail: Option<String>,
}

#[derive(Deserialize)]
struct HoldBody {
    id: String,
    #[serde(default)]
    quantity: u64,
    #[serde(default)]
    user_id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
}

/// Reads an answer: the hold of a 2xx, else the error code (`http_<status>` when the
/// body carries none). Returns (code, hold, detail).
pub fn parse_answer(
    status: u16,
    body: &[u8],
) -> (Option<String>, Option<HoldSeen>, Option<String>) {
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<HoldBody>(body) {
            Ok(h) => (
                None,
                Some(HoldSeen {
                    id: h.id,
                    quantity: h.quantity,
                    user_id: h.user_id,
                }),
                None,
            ),
            Err(_) => (
                Some("invalid_answer".into()),
                None,
                Some(format!("{status} without a hold: {}", text())),
            ),
        };
    }
    let code = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error.code)
        .unwrap_or_else(|_| format!("http_{status}"));
    let detail = (status >= 500).then(|| format!("{status}: {}", text()));
    (Some(code), None, detail)
}

/// Whether an answer is one the server must record for its Idempotency-Key and return
/// to every replay: 2xx and 409 other than `sold_out` (API.md §1).
fn is_recorded(record: &Record) -> bool {
    (200..300).contains(&record.status)
        || (record.status == 409 && record.code.as_deref() != Some("sold_out"))
}

/// Who holds a hold and how many units, by hold id.
pub type Holds = HashMap<String, (u32, u64)>;

/// The figures of one phase's answers.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    /// Requests sent (replays included).
    pub requests: u64,
    pub replays: u64,
    /// Answers with a hold (replays included).
    pub created: u64,
    /// Distinct holds: hold id → (buyer, units).
    pub holds: Holds,
    pub units_held: u64,
    /// Error answers below 500 by code.
    pub rejected: BTreeMap<String, u64>,
    pub errors_5xx: u64,
    /// Requests without an answer (connection errors, timeouts).
    pub transport_errors: u64,
    /// Keys whose recorded answers differ (two hold ids for one key, a hold and a 409).
    pub idempotency_mismatches: u64,
    /// Holds whose quantity or user is not the request's.
    pub hold_mismatches: u64,
    /// Arrival of the first `sold_out` answer, µs after the phase started.
    pub first_sold_out_us: Option<u64>,
    /// A sample of what went wrong (5xx, failures, odd answers).
    pub first_error: Option<String>,
}

/// Adds up a phase's answers. `user_of` gives a buyer's user id.
pub fn tally(plan: &[KeyPlan], records: &[Record], user_of: &dyn Fn(u32) -> String) -> Tally {
    let mut t = Tally::default();
    let mut by_item: HashMap<u32, Vec<&Record>> = HashMap::new();
    for r in records {
        t.requests += 1;
        if r.replay {
            t.replays += 1;
        }
        if t.first_error.is_none() {
            t.first_error.clone_from(&r.detail);
        }
        match r.status {
            0 => t.transport_errors += 1,
            s if s >= 500 => t.errors_5xx += 1,
            _ if r.hold.is_some() => t.created += 1,
            _ => {
                let code = r
                    .code
                    .clone()
                    .unwrap_or_else(|| format!("http_{}", r.status));
                if code == "sold_out" {
                    t.first_sold_out_us =
                        Some(t.first_sold_out_us.map_or(r.at_us, |f| f.min(r.at_us)));
                }
                *t.rejected.entry(code).or_default() += 1;
            }
        }
        by_item.entry(r.item).or_default().push(r);
    }
    for (item, answers) in by_item {
        let Some(planned) = plan.get(item as usize) else {
            continue;
        };
        for r in &answers {
            let Some(hold) = &r.hold else { continue };
            if t.holds.contains_key(&hold.id) {
                continue;
            }
            if hold.quantity != planned.quantity || hold.user_id != user_of(planned.buyer) {
                t.hold_mismatches += 1;
            }
            t.holds
                .insert(hold.id.clone(), (planned.buyer, hold.quantity));
            t.units_held += hold.quantity;
        }
        let recorded: Vec<_> = answers
            .iter()
            .filter(|r| is_recorded(r))
            .map(|r| {
                (
                    r.status,
                    r.code.as_deref(),
                    r.hold.as_ref().map(|h| h.id.as_str()),
                )
            })
            .collect();
        if recorded.windows(2).any(|w| w[0] != w[1]) {
            t.idempotency_mismatches += 1;
        }
    }
    t
}

/// Buyers whose distinct holds add up to more than `per_user_limit` units.
pub fn limit_violations<'a>(
    holds: impl IntoIterator<Item = &'a Holds>,
    per_user_limit: u64,
) -> u64 {
    let mut units: HashMap<u32, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for map in holds {
        for (id, &(buyer, quantity)) in map {
            if seen.insert(id.as_str()) {
                *units.entry(buyer).or_default() += quantity;
            }
        }
    }
    units.values().filter(|&&u| u > per_user_limit).count() as u64
}

/// The sale's counters after the run, checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SaleCheck {
    pub status: String,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
    /// `remaining + held + sold == stock`, and the sale's stock is the one asked.
    pub invariant_ok: bool,
    /// `held + sold` equals the units the buyers were told they hold.
    pub matches_client: bool,
}

pub fn check_sale(sale: &SaleState, stock: u64, units_held: u64) -> SaleCheck {
    SaleCheck {
        status: sale.status.clone(),
        remaining: sale.remaining,
        held: sale.held,
        sold: sale.sold,
        invariant_ok: sale.stock == stock && sale.remaining + sale.held + sale.sold == stock,
        matches_client: sale.held + sale.sold == units_held,
    }
}

/// Units sold beyond the stock: by what the buyers were told, and by the sale's own
/// counters, whichever is more.
pub fn oversold(units_held: u64, sale: Option<&SaleState>, stock: u64) -> u64 {
    let counted = sale.map_or(0, |s| s.held + s.sold);
    units_held.max(counted).saturating_sub(stock)
}

/// One item of `GET /api/v1/flash-sales/{id}/allocations`.
#[derive(Debug, Clone, Deserialize)]
pub struct Allocation {
    pub position: u64,
    pub hold_id: String,
    #[serde(default)]
    pub user_id: String,
    pub quantity: u64,
    #[serde(default)]
    pub status: String,
}

#[derive(Deserialize)]
struct AllocationPage {
    items: Vec<Allocation>,
    next_cursor: Option<String>,
}

/// The allocation list, checked.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AllocationCheck {
    pub allocations: u64,
    /// Items whose position is not their place in the list (1, 2, ...).
    pub position_gaps: u64,
    /// Units of the `held` and `paid` allocations.
    pub units: u64,
    /// `held + sold` of the sale.
    pub units_expected: u64,
    /// Allocations of holds no buyer was told of (a request that timed out on the client
    /// may have made one).
    pub unknown_holds: u64,
    /// Holds buyers were told of that are not in the list.
    pub missing_holds: u64,
    /// Allocations whose user or quantity differs from the hold the buyer was told of.
    pub mismatches: u64,
    pub ok: bool,
}

pub fn check_allocations(
    items: &[Allocation],
    units_expected: u64,
    seen: &Holds,
    user_of: &dyn Fn(u32) -> String,
) -> AllocationCheck {
    let mut c = AllocationCheck {
        allocations: items.len() as u64,
        units_expected,
        ..Default::default()
    };
    let mut listed = std::collections::HashSet::new();
    for (i, a) in items.iter().enumerate() {
        if a.position != i as u64 + 1 {
            c.position_gaps += 1;
        }
        if matches!(a.status.as_str(), "held" | "paid") {
            c.units += a.quantity;
        }
        listed.insert(a.hold_id.as_str());
        match seen.get(&a.hold_id) {
            None => c.unknown_holds += 1,
            Some(&(buyer, quantity)) => {
                if quantity != a.quantity || user_of(buyer) != a.user_id {
                    c.mismatches += 1;
                }
            }
        }
    }
    c.missing_holds = seen
        .keys()
        .filter(|id| !listed.contains(id.as_str()))
        .count() as u64;
    c.ok = c.position_gaps == 0
        && c.units == c.units_expected
        && c.unknown_holds == 0
        && c.missing_holds == 0
        && c.mismatches == 0;
    c
}

/// The S2 phase's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoldOutPhase {
    pub requests: u64,
    /// `sold_out` answers.
    pub sold_out: u64,
    /// Every other answer by code (`created` for a hold: there should be none).
    pub other: BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub duration_s: f64,
    pub client_cpu_cores: f64,
    /// Why the phase did not run, when it did not.
    pub skipped: Option<String>,
}

/// The S3 and S2 targets, computed.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Verdict {
    pub oversold_ok: bool,
    pub limit_violations_ok: bool,
    pub errors_5xx_ok: bool,
    /// `requests_per_s / healthz_requests_per_s` (target ≥ 0.5).
    pub requests_per_s_ratio: Option<f64>,
    pub requests_per_s_ok: bool,
    /// `p99_ms / healthz_p99_ms` (target ≤ 2).
    pub p99_ratio: Option<f64>,
    pub p99_ok: bool,
    /// Every request got an answer and no phase hit --duration-limit.
    pub complete: bool,
    /// The five S3 targets, on a complete run.
    pub s3_pass: bool,
    /// `sold_out_rejections_per_s / healthz_requests_per_s` (target ≥ 0.8).
    pub sold_out_ratio: Option<f64>,
    /// The S2 target (null when the phase did not run).
    pub s2_pass: Option<bool>,
    /// Idempotency (one answer per key), holds as asked, the sale's counters and its
    /// allocation list all agree.
    pub consistent: bool,
}

/// The S3 figures (PERFORMANCE.md), the S2 figure, then context.
#[derive(Debug, Default, Serialize)]
pub struct FlashSummary {
    pub requests: u64,
    pub holds: u64,
    pub units_held: u64,
    pub rejected: BTreeMap<String, u64>,
    pub oversold: u64,
    pub limit_violations: u64,
    pub errors_5xx: u64,
    pub sold_out_after_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests_per_s: f64,
    pub healthz_requests_per_s: f64,
    pub healthz_p99_ms: Option<f64>,
    pub sold_out_rejections_per_s: Option<f64>,
    pub sold_out_to_healthz_ratio: Option<f64>,
    pub client_cpu_s: f64,
    pub client_bound: bool,
    pub verdict: Verdict,
    // Context.
    pub stock: u64,
    pub buyers: u64,
    pub concurrency: u64,
    pub per_user_limit: u64,
    pub quantity_max: u64,
    pub keys_per_buyer: u64,
    /// Requests that replayed an Idempotency-Key.
    pub replays: u64,
    pub idempotency_mismatches: u64,
    pub hold_mismatches: u64,
    pub transport_errors: u64,
    pub max_ms: Option<f64>,
    /// Latency of the answers that gave a hold, and of the refusals (4xx).
    pub hold_p50_ms: Option<f64>,
    pub hold_p99_ms: Option<f64>,
    pub refusal_p50_ms: Option<f64>,
    pub refusal_p99_ms: Option<f64>,
    /// When the last hold was given, from the storm's start, and holds per second up to
    /// then.
    pub last_hold_ms: Option<f64>,
    pub holds_per_s: Option<f64>,
    pub storm_s: f64,
    pub storm_client_cpu_cores: f64,
    pub healthz_requests: u64,
    pub healthz_errors: u64,
    pub healthz_p50_ms: Option<f64>,
    pub healthz_s: f64,
    pub healthz_client_cpu_cores: f64,
    pub sale: SaleCheck,
    pub allocations: AllocationCheck,
    /// How long after the run the allocation list was last read (it is read again, up
    /// to 10 s, while it does not check out: holds may reach SQL behind the engine).
    pub allocations_read_after_ms: u64,
    pub sold_out_phase: SoldOutPhase,
    /// Server CPU over the storm (from `/metrics`), when readable.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_cores: Option<f64>,
    /// Machine CPU over the storm (/proc/stat) and the part neither server nor client
    /// used.
    pub machine_cpu_s: f64,
    pub other_cpu_s: f64,
    /// `redis` when `/readyz` checks Redis, else `memory`.
    pub server_engine: Option<String>,
    /// A phase stopped at --duration-limit.
    pub truncated: bool,
    pub seed: u64,
    pub sale_id: String,
    pub room_id: String,
    /// A sample of what went wrong, when something did.
    pub first_error: Option<String>,
}

/// Computes the targets from a summary's figures.
pub fn verdict(s: &FlashSummary) -> Verdict {
    let requests_per_s_ratio = ratio(s.requests_per_s, s.healthz_requests_per_s);
    let p99_ratio = match (s.p99_ms, s.healthz_p99_ms) {
        (Some(p99), Some(h)) => ratio(p99, h),
        _ => None,
    };
    let sold_out_ratio = s
        .sold_out_rejections_per_s
        .and_then(|r| ratio(r, s.healthz_requests_per_s));
    let mut v = Verdict {
        oversold_ok: s.oversold == 0,
        limit_violations_ok: s.limit_violations == 0,
        errors_5xx_ok: s.errors_5xx == 0 && s.sold_out_phase.other.keys().all(|c| c != "5xx"),
        requests_per_s_ok: requests_per_s_ratio.is_some_and(|r| r >= MIN_THROUGHPUT_RATIO),
        requests_per_s_ratio: round3(requests_per_s_ratio),
        p99_ok: p99_ratio.is_some_and(|r| r <= MAX_P99_RATIO),
        p99_ratio: round3(p99_ratio),
        complete: !s.truncated && s.transport_errors == 0 && s.requests > 0,
        s3_pass: false,
        s2_pass: sold_out_ratio.map(|r| r >= MIN_SOLD_OUT_RATIO),
        sold_out_ratio: round3(sold_out_ratio),
        consistent: s.idempotency_mismatches == 0
            && s.hold_mismatches == 0
            && s.sale.invariant_ok
            && s.sale.matches_client
            && s.allocations.ok,
    };
    v.s3_pass = v.oversold_ok
        && v.limit_violations_ok
        && v.errors_5xx_ok
        && v.requests_per_s_ok
        && v.p99_ok
        && v.complete;
    v
}

impl Summary for FlashSummary {
    fn title(&self) -> &'static str {
        "harvest-loadtest flash-sale (S3, S2)"
    }

    fn rows(&self) -> Vec<(&'static str, String, String)> {
        let pass = |ok: bool| if ok { "ok" } else { "FAIL" };
        let rejected = self
            .rejected
            .iter()
            .map(|(code, count)| format!("{code} {}", n(*count)))
            .collect::<Vec<_>>()
            .join(", ");
        let v = &self.verdict;
        let r3 = |r: Option<f64>| r.map_or_else(|| "-".into(), |r| format!("{r:.3}"));
        vec![
            (
                "requests",
                n(self.requests),
                format!(
                    "{} buyers x {} keys, {} replays{}",
                    n(self.buyers),
                    self.keys_per_buyer,
                    n(self.replays),
                    if self.truncated {
                        "; a phase was cut at --duration-limit"
                    } else {
                        ""
                    }
                ),
            ),
            (
                "holds",
                n(self.holds),
                format!(
                    "{} hold/idempotency mismatches",
                    self.hold_mismatches + self.idempotency_mismatches
                ),
            ),
            (
                "units_held",
                n(self.units_held),
                format!("of {} in stock", n(self.stock)),
            ),
            ("rejected", n(self.rejected.values().sum()), rejected),
            ("oversold", n(self.oversold), pass(v.oversold_ok).into()),
            (
                "limit_violations",
                n(self.limit_violations),
                format!(
                    "{} (limit {})",
                    pass(v.limit_violations_ok),
                    self.per_user_limit
                ),
            ),
            (
                "errors_5xx",
                n(self.errors_5xx),
                format!(
                    "{}; {} without an answer",
                    pass(v.errors_5xx_ok),
                    n(self.transport_errors)
                ),
            ),
            (
                "sold_out_after_ms",
                opt_ms(self.sold_out_after_ms),
                format!(
                    "from the storm's start; last hold at {} ms, {} holds/s",
                    opt_ms(self.last_hold_ms),
                    self.holds_per_s
                        .map_or_else(|| "-".into(), |r| format!("{r:.0}"))
                ),
            ),
            (
                "p50_ms",
                opt_ms(self.p50_ms),
                format!(
                    "healthz {}; holds p50 {} p99 {}, refusals p50 {} p99 {}",
                    opt_ms(self.healthz_p50_ms),
                    opt_ms(self.hold_p50_ms),
                    opt_ms(self.hold_p99_ms),
                    opt_ms(self.refusal_p50_ms),
                    opt_ms(self.refusal_p99_ms)
                ),
            ),
            (
                "p99_ms",
                opt_ms(self.p99_ms),
                format!(
                    "{}: {} x healthz (target <= {MAX_P99_RATIO})",
                    pass(v.p99_ok),
                    r3(v.p99_ratio)
                ),
            ),
            (
                "requests_per_s",
                format!("{:.0}", self.requests_per_s),
                format!(
                    "{}: {} x healthz (target >= {MIN_THROUGHPUT_RATIO}), {:.1} s",
                    pass(v.requests_per_s_ok),
                    r3(v.requests_per_s_ratio),
                    self.storm_s
                ),
            ),
            (
                "healthz_requests_per_s",
                format!("{:.0}", self.healthz_requests_per_s),
                format!(
                    "{} requests, {} errors",
                    n(self.healthz_requests),
                    self.healthz_errors
                ),
            ),
            ("healthz_p99_ms", opt_ms(self.healthz_p99_ms), String::new()),
            (
                "sold_out_rejections_per_s",
                self.sold_out_rejections_per_s
                    .map_or_else(|| "-".into(), |r| format!("{r:.0}")),
                match (&self.sold_out_phase.skipped, v.s2_pass) {
                    (Some(why), _) => format!("skipped: {why}"),
                    (None, Some(ok)) => format!(
                        "{}: {} x healthz (target >= {MIN_SOLD_OUT_RATIO}), p99 {} ms",
                        pass(ok),
                        r3(v.sold_out_ratio),
                        opt_ms(self.sold_out_phase.p99_ms)
                    ),
                    (None, None) => String::new(),
                },
            ),
            (
                "sale",
                format!(
                    "{}+{}+{}",
                    n(self.sale.remaining),
                    n(self.sale.held),
                    n(self.sale.sold)
                ),
                format!(
                    "remaining+held+sold, {}; invariant {}, matches buyers {}",
                    self.sale.status,
                    pass(self.sale.invariant_ok),
                    pass(self.sale.matches_client)
                ),
            ),
            (
                "allocations",
                n(self.allocations.allocations),
                format!(
                    "{}: {} units, {} gaps, {} unknown, {} missing",
                    pass(self.allocations.ok),
                    n(self.allocations.units),
                    self.allocations.position_gaps,
                    self.allocations.unknown_holds,
                    self.allocations.missing_holds
                ),
            ),
            (
                "server_cpu_s",
                self.server_cpu_s
                    .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                format!(
                    "{} cores; machine {:.2} s, other {:.2} s, engine {}",
                    self.server_cpu_cores
                        .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
                    self.machine_cpu_s,
                    self.other_cpu_s,
                    self.server_engine.as_deref().unwrap_or("?")
                ),
            ),
            (
                "client_cpu_s",
                format!("{:.2}", self.client_cpu_s),
                format!(
                    "{:.2} cores in the storm, {:.2} in healthz",
                    self.storm_client_cpu_cores, self.healthz_client_cpu_cores
                ),
            ),
            (
                "client_bound",
                self.client_bound.to_string(),
                if self.client_bound {
                    "the client used > 90% of a core: the ratios compare the client too".into()
                } else {
                    String::new()
                },
            ),
            (
                "verdict",
                format!("S3 {}", if v.s3_pass { "pass" } else { "fail" }),
                format!(
                    "S2 {}; consistent {}; complete {}",
                    v.s2_pass.map_or("-", |p| if p { "pass" } else { "fail" }),
                    v.consistent,
                    v.complete
                ),
            ),
        ]
    }
}

/// What every reservation request needs.
struct Reserver {
    url: String,
    plan: Vec<KeyPlan>,
    /// `Bearer <token>` of each buyer.
    auth: Arc<Vec<HeaderValue>>,
    /// Idempotency-Key prefix of this run.
    key_prefix: String,
}

impl Reserver {
    /// Sends item `item`'s reservation (and its replay).
    async fn send(&self, client: &reqwest::Client, item: u32, start: Instant) -> Vec<Record> {
        let Some(p) = self.plan.get(item as usize) else {
            return Vec::new();
        };
        let key = format!("{}-{}-{}", self.key_prefix, p.buyer, p.key);
        let body = format!("{{\"quantity\":{}}}", p.quantity);
        let auth = &self.auth[p.buyer as usize];
        let once = |replay| self.reserve(client, auth, &key, body.clone(), item, replay, start);
        match p.replay {
            Replay::None => vec![once(false).await],
            Replay::After => {
                let first = once(false).await;
                vec![first, once(true).await]
            }
            Replay::Alongside => {
                let (a, b) = tokio::join!(once(false), once(true));
                vec![a, b]
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn reserve(
        &self,
        client: &reqwest::Client,
        auth: &HeaderValue,
        key: &str,
        body: String,
        item: u32,
        replay: bool,
        start: Instant,
    ) -> Record {
        let sent = Instant::now();
        let answer = client
            .post(&self.url)
            .header(AUTHORIZATION, auth.clone())
            .header("idempotency-key", key)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let mut record = Record {
            item,
            replay,
            ..Default::default()
        };
        match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => {
                        record.status = status;
                        (record.code, record.hold, record.detail) = parse_answer(status, &bytes);
                    }
                    Err(e) => {
                        record.detail =
                            Some(format!("reading the answer: {}", common::error_chain(&e)))
                    }
                }
            }
            Err(e) => record.detail = Some(common::error_chain(&e)),
        }
        record.latency_us = sent.elapsed().as_micros() as u64;
        record.at_us = start.elapsed().as_micros() as u64;
        record
    }
}

/// `GET /healthz` once.
async fn healthz(client: &reqwest::Client, url: &str, item: u32, start: Instant) -> Record {
    let sent = Instant::now();
    let mut record = Record {
        item,
        ..Default::default()
    };
    match client.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Ok(_) => record.status = status,
                Err(e) => record.detail = Some(common::error_chain(&e)),
            }
            if status != 200 {
                record.detail = Some(format!("GET /healthz answered {status}"));
            }
        }
        Err(e) => record.detail = Some(common::error_chain(&e)),
    }
    record.latency_us = sent.elapsed().as_micros() as u64;
    record.at_us = start.elapsed().as_micros() as u64;
    record
}

/// Reads the whole allocation list, page by page (at most `max_pages`).
pub async fn allocations(
    api: &Api,
    sale_id: &str,
    max_pages: u64,
) -> anyhow::Result<Vec<Allocation>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..max_pages {
        let mut path = format!("/api/v1/flash-sales/{sale_id}/allocations?limit={ALLOCATION_PAGE}");
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.push_str(&url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>());
        }
        let value = api.call(reqwest::Method::GET, &path, None).await?;
        let page: AllocationPage =
            serde_json::from_value(value).context("the allocations answer is not a list")?;
        items.extend(page.items);
        match page.next_cursor {
            Some(c) if !c.is_empty() => cursor = Some(c),
            _ => return Ok(items),
        }
    }
    bail!("the allocation list goes on past {max_pages} pages")
}

/// Runs the scenario.
pub async fn run(args: FlashSaleArgs) -> anyhow::Result<()> {
    args.check()?;
    common::check_nofile(args.concurrency as u64 * 2)?;
    let target = Target::resolve(&args.url, args.allow_remote).await?;
    Api::new(&target, None)?.check_reachable().await?;
    let secret = args.jwt_secret.as_deref().context(
        "flash-sale needs --jwt-secret (or HARVEST_JWT_SECRET): the secret the server signs \
         tokens with, to mint the streamer's and the buyers' tokens",
    )?;
    let run_id = common::run_id();
    let seed = args.seed.unwrap_or_else(rand::random);
    let limit = Duration::from_secs(args.duration_limit);
    let minter = Minter::new(secret, Duration::from_secs(4 * args.duration_limit + 3600))?;
    let streamer = format!("lt-streamer-{run_id}");
    let owner = Api::new(
        &target,
        Some(minter.token(&streamer, "Load-test streamer", &["streamer"])?),
    )?;
    let server_engine = owner.server_engine().await;

    // Setup: a product in the bag of a live room, and the sale.
    let setup = owner
        .setup_sale(
            &run_id,
            "flash",
            "Flash-sale load test",
            &SaleSpec {
                price: args.price,
                stock: args.stock,
                per_user_limit: args.per_user_limit,
                // Long enough for every phase at its limit.
                duration_s: 4 * args.duration_limit + 600,
                hold_ttl_s: args.hold_ttl_s,
            },
        )
        .await?;
    let (sale_id, room_id) = (setup.sale_id.clone(), setup.room_id.clone());

    // Buyers' tokens and the plan, before any timing.
    let user_prefix = format!("lt-buyer-{run_id}-");
    let user_of = |buyer: u32| format!("{user_prefix}{buyer}");
    report::note(
        None,
        format!(
            "sale {sale_id} in room {room_id}: minting {} buyer tokens",
            n(args.buyers)
        ),
    );
    let auth = Arc::new(common::mint_bearers(&minter, args.buyers, &user_of)?);
    let storm_plan = plan(
        args.buyers,
        args.keys_per_buyer,
        args.quantity_max,
        args.retries,
        seed,
    );
    let storm_requests = storm_plan
        .iter()
        .map(|p| if p.replay == Replay::None { 1 } else { 2 })
        .sum::<u64>();
    let reservations_url = format!("{}/api/v1/flash-sales/{sale_id}/reservations", target.base);
    let key_prefix = format!("lt-{run_id}");
    let clients = http_clients(&target, args.source_ips, args.concurrency)?;
    let healthz_url: Arc<str> = format!("{}/healthz", target.base).into();
    let healthz_work = {
        let url = healthz_url.clone();
        move |client: reqwest::Client, i: u32, start: Instant| {
            let url = url.clone();
            async move { vec![healthz(&client, &url, i, start).await] }
        }
    };

    // Warm-up: open the pool's connections, untimed.
    let warm = run_phase(
        None,
        &clients,
        args.concurrency,
        args.concurrency,
        limit,
        healthz_work.clone(),
    )
    .await;
    if warm.records.iter().all(|r| r.status != 200) {
        bail!(
            "GET /healthz fails during the warm-up: {:?}",
            warm.records.first().and_then(|r| r.detail.clone())
        );
    }

    // The yardstick: GET /healthz, same client, same concurrency.
    let healthz_count = args.healthz_requests.unwrap_or(storm_requests);
    let hz = run_phase(
        Some("healthz"),
        &clients,
        args.concurrency,
        healthz_count as usize,
        limit,
        healthz_work,
    )
    .await;
    let hz_latency = hz.latency();
    let healthz_errors = hz.records.iter().filter(|r| r.status != 200).count() as u64;

    // The storm.
    let server_before = owner.server_sample().await.ok();
    let machine_before = common::machine_cpu_s();
    let reserver = Arc::new(Reserver {
        url: reservations_url.clone(),
        plan: storm_plan.clone(),
        auth: auth.clone(),
        key_prefix: key_prefix.clone(),
    });
    let storm = {
        let reserver = reserver.clone();
        run_phase(
            Some("storm"),
            &clients,
            args.concurrency,
            storm_plan.len(),
            limit,
            move |client, i, start| {
                let reserver = reserver.clone();
                async move { reserver.send(&client, i, start).await }
            },
        )
        .await
    };
    let machine_after = common::machine_cpu_s();
    let server_after = owner.server_sample().await.ok();
    let storm_tally = tally(&storm_plan, &storm.records, &user_of);
    let storm_latency = storm.latency();
    let (hold_latency, refusal_latency) = (Histogram::new(), Histogram::new());
    let mut last_hold_us = None::<u64>;
    for r in &storm.records {
        if r.hold.is_some() {
            hold_latency.record(r.latency_us);
            last_hold_us = Some(last_hold_us.map_or(r.at_us, |l| l.max(r.at_us)));
        } else if (400..500).contains(&r.status) {
            refusal_latency.record(r.latency_us);
        }
    }

    // S2: more reservations once sold out.
    let after_storm = owner
        .sale_state(&sale_id)
        .await
        .context("reading the sale after the storm")?;
    let mut sold_out_phase = SoldOutPhase::default();
    let mut so_tally = Tally::default();
    let mut so_outcome = None;
    if args.sold_out_phase == 0 {
        sold_out_phase.skipped = Some("--sold-out-phase 0".into());
    } else if after_storm.remaining > 0 {
        sold_out_phase.skipped = Some(format!(
            "not sold out after the storm ({} units remain)",
            after_storm.remaining
        ));
    } else {
        let so_plan = sold_out_plan(args.sold_out_phase, args.buyers, args.keys_per_buyer);
        let reserver = Arc::new(Reserver {
            url: reservations_url,
            plan: so_plan.clone(),
            auth: auth.clone(),
            key_prefix: key_prefix.clone(),
        });
        let outcome = run_phase(
            Some("sold-out"),
            &clients,
            args.concurrency,
            so_plan.len(),
            limit,
            move |client, i, start| {
                let reserver = reserver.clone();
                async move { reserver.send(&client, i, start).await }
            },
        )
        .await;
        so_tally = tally(&so_plan, &outcome.records, &user_of);
        let latency = outcome.latency();
        sold_out_phase.requests = so_tally.requests;
        sold_out_phase.sold_out = so_tally.rejected.get("sold_out").copied().unwrap_or(0);
        sold_out_phase.other = so_tally
            .rejected
            .iter()
            .filter(|(code, _)| code.as_str() != "sold_out")
            .map(|(code, count)| (code.clone(), *count))
            .collect();
        for (name, count) in [
            ("created", so_tally.created),
            ("5xx", so_tally.errors_5xx),
            ("no_answer", so_tally.transport_errors),
        ] {
            if count > 0 {
                sold_out_phase.other.insert(name.into(), count);
            }
        }
        sold_out_phase.p50_ms = latency.quantile(0.50).map(ms);
        sold_out_phase.p99_ms = latency.quantile(0.99).map(ms);
        sold_out_phase.duration_s = round2(outcome.elapsed_s);
        sold_out_phase.client_cpu_cores = round2(outcome.client_cores());
        so_outcome = Some(outcome);
    }

    // The sale's counters and allocation list against what buyers were told.
    let final_sale = owner
        .sale_state(&sale_id)
        .await
        .context("reading the sale after the run")?;
    let units_told = storm_tally.units_held + so_tally.units_held;
    let mut all_holds = storm_tally.holds.clone();
    all_holds.extend(so_tally.holds.iter().map(|(k, v)| (k.clone(), *v)));
    let sale_check = check_sale(&final_sale, args.stock, units_told);
    let max_pages = (args.stock / u64::from(ALLOCATION_PAGE)) + 10;
    // The server may record holds in SQL behind the stock engine: read the list again
    // until it checks out or ALLOCATIONS_SETTLE has passed.
    let read_from = Instant::now();
    let allocation_check = loop {
        let check = match allocations(&owner, &sale_id, max_pages).await {
            Ok(items) => check_allocations(
                &items,
                final_sale.held + final_sale.sold,
                &all_holds,
                &user_of,
            ),
            Err(e) => {
                report::note(None, format!("cannot read the allocations: {e:#}"));
                break AllocationCheck::default();
            }
        };
        if check.ok || read_from.elapsed() >= ALLOCATIONS_SETTLE {
            break check;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let allocations_read_after_ms = read_from.elapsed().as_millis() as u64;

    // Cleanup: end the sale and the room.
    owner.end_sale_and_room(&setup).await;

    let sold_out_rejections_per_s = so_outcome
        .as_ref()
        .map(|o| per_s(sold_out_phase.sold_out, o.elapsed_s));
    let healthz_requests_per_s = per_s(hz.records.len() as u64, hz.elapsed_s);
    let mut phases = vec![&hz, &storm];
    phases.extend(so_outcome.as_ref());
    let client_cpu_s: f64 = phases.iter().map(|p| p.client_cpu_s).sum();
    let client_bound = phases.iter().any(|p| p.client_cores() > CLIENT_BOUND_CORES);
    let server_cpu_s = match (server_before, server_after) {
        (Some(b), Some(a)) => Some(round2((a.cpu_s - b.cpu_s).max(0.0))),
        _ => None,
    };
    let machine_cpu_s = machine_after.0 - machine_before.0;
    let first_error = storm_tally
        .first_error
        .clone()
        .or_else(|| so_tally.first_error.clone())
        .or_else(|| hz.records.iter().find_map(|r| r.detail.clone()));
    let mut summary = FlashSummary {
        requests: storm_tally.requests,
        holds: storm_tally.holds.len() as u64,
        units_held: storm_tally.units_held,
        rejected: storm_tally.rejected.clone(),
        oversold: oversold(units_told, Some(&final_sale), args.stock),
        limit_violations: limit_violations(
            [&storm_tally.holds, &so_tally.holds],
            args.per_user_limit,
        ),
        errors_5xx: storm_tally.errors_5xx,
        sold_out_after_ms: storm_tally.first_sold_out_us.map(ms),
        p50_ms: storm_latency.quantile(0.50).map(ms),
        p99_ms: storm_latency.quantile(0.99).map(ms),
        requests_per_s: per_s(storm_tally.requests, storm.elapsed_s),
        healthz_requests_per_s,
        healthz_p99_ms: hz_latency.quantile(0.99).map(ms),
        sold_out_rejections_per_s,
        sold_out_to_healthz_ratio: round3(
            sold_out_rejections_per_s.and_then(|r| ratio(r, healthz_requests_per_s)),
        ),
        client_cpu_s: round2(client_cpu_s),
        client_bound,
        verdict: Verdict::default(),
        stock: args.stock,
        buyers: args.buyers,
        concurrency: args.concurrency as u64,
        per_user_limit: args.per_user_limit,
        quantity_max: args.quantity_max,
        keys_per_buyer: args.keys_per_buyer,
        replays: storm_tally.replays,
        idempotency_mismatches: storm_tally.idempotency_mismatches
            + so_tally.idempotency_mismatches,
        hold_mismatches: storm_tally.hold_mismatches + so_tally.hold_mismatches,
        transport_errors: storm_tally.transport_errors,
        max_ms: (storm_latency.count() > 0).then(|| ms(storm_latency.max())),
        hold_p50_ms: hold_latency.quantile(0.50).map(ms),
        hold_p99_ms: hold_latency.quantile(0.99).map(ms),
        refusal_p50_ms: refusal_latency.quantile(0.50).map(ms),
        refusal_p99_ms: refusal_latency.quantile(0.99).map(ms),
        last_hold_ms: last_hold_us.map(ms),
        holds_per_s: last_hold_us.map(|us| per_s(storm_tally.holds.len() as u64, us as f64 / 1e6)),
        storm_s: round2(storm.elapsed_s),
        storm_client_cpu_cores: round2(storm.client_cores()),
        healthz_requests: hz.records.len() as u64,
        healthz_errors,
        healthz_p50_ms: hz_latency.quantile(0.50).map(ms),
        healthz_s: round2(hz.elapsed_s),
        healthz_client_cpu_cores: round2(hz.client_cores()),
        sale: sale_check,
        allocations: allocation_check,
        allocations_read_after_ms,
        sold_out_phase,
        server_cpu_s,
        server_cpu_cores: server_cpu_s.map(|c| round2(c / storm.elapsed_s.max(1e-9))),
        machine_cpu_s: round2(machine_cpu_s),
        other_cpu_s: round2(
            (machine_cpu_s - server_cpu_s.unwrap_or(0.0) - storm.client_cpu_s).max(0.0),
        ),
        server_engine,
        truncated: hz.truncated
            || storm.truncated
            || so_outcome.as_ref().is_some_and(|o| o.truncated),
        seed,
        sale_id,
        room_id,
        first_error,
    };
    summary.verdict = verdict(&summary);
    if let Some(e) = &summary.first_error {
        report::note(None, format!("first error: {e}"));
    }
    report::emit(&summary, args.json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The names PERFORMANCE.md fixes for S3, and the S2 figure.
    const S3_FIGURES: [&str; 17] = [
        "requests",
        "holds",
        "units_held",
        "rejected",
        "oversold",
        "limit_violations",
        "errors_5xx",
        "sold_out_after_ms",
        "p50_ms",
        "p99_ms",
        "requests_per_s",
        "healthz_requests_per_s",
        "healthz_p99_ms",
        "sold_out_rejections_per_s",
        "client_cpu_s",
        "client_bound",
        "verdict",
    ];

    fn user(buyer: u32) -> String {
        format!("u-{buyer}")
    }

    fn hold(id: &str, quantity: u64, buyer: u32) -> Option<HoldSeen> {
        Some(HoldSeen {
            id: id.into(),
            quantity,
            user_id: user(buyer),
        })
    }

    fn created(item: u32, replay: bool, h: Option<HoldSeen>) -> Record {
        Record {
            item,
            replay,
            status: 201,
            hold: h,
            ..Default::default()
        }
    }

    fn refused(item: u32, replay: bool, status: u16, code: &str, at_us: u64) -> Record {
        Record {
            item,
            replay,
            status,
            code: Some(code.into()),
            at_us,
            ..Default::default()
        }
    }

    fn key(buyer: u32, key: u32, quantity: u64) -> KeyPlan {
        KeyPlan {
            buyer,
            key,
            quantity,
            replay: Replay::None,
        }
    }

    #[test]
    fn summary_has_every_s3_figure() {
        let mut summary = FlashSummary::default();
        summary.rejected.insert("sold_out".into(), 3);
        let value = serde_json::to_value(&summary).unwrap();
        let object = value.as_object().unwrap();
        for name in S3_FIGURES {
            assert!(object.contains_key(name), "missing {name}");
        }
        assert_eq!(object["rejected"], json!({"sold_out": 3}));
        assert!(object["verdict"].is_object());
        assert!(object["verdict"]["s3_pass"].is_boolean());
        assert!(object["client_bound"].is_boolean());
        assert!(object["p99_ms"].is_null(), "no samples: null, not 0");
    }

    #[test]
    fn plans_are_reproducible_and_within_bounds() {
        let a = plan(1000, 2, 3, 0.1, 7);
        assert_eq!(a, plan(1000, 2, 3, 0.1, 7));
        assert_ne!(a, plan(1000, 2, 3, 0.1, 8));
        assert_eq!(a.len(), 2000);
        assert_eq!((a[0].buyer, a[0].key, a[1].buyer, a[1].key), (0, 0, 0, 1));
        assert_eq!((a[1999].buyer, a[1999].key), (999, 1));
        assert!(a.iter().all(|k| (1..=3).contains(&k.quantity)));
        assert!((1..=3).all(|q| a.iter().any(|k| k.quantity == q)));
        let replays = a.iter().filter(|k| k.replay != Replay::None).count();
        assert!(
            (120..=280).contains(&replays),
            "{replays} replays of 2000 at 10%"
        );
        let alongside = a.iter().filter(|k| k.replay == Replay::Alongside).count();
        assert_eq!(
            alongside,
            replays / 2,
            "every other replay is sent alongside"
        );
        assert!(
            plan(100, 1, 1, 0.0, 1)
                .iter()
                .all(|k| k.replay == Replay::None && k.quantity == 1)
        );
        assert!(
            plan(100, 1, 1, 1.0, 1)
                .iter()
                .all(|k| k.replay != Replay::None)
        );
    }

    #[test]
    fn sold_out_plan_takes_buyers_in_turn_with_new_keys() {
        let p = sold_out_plan(5, 2, 3);
        let pairs: Vec<_> = p.iter().map(|k| (k.buyer, k.key, k.quantity)).collect();
        assert_eq!(
            pairs,
            [(0, 3, 1), (1, 3, 1), (0, 4, 1), (1, 4, 1), (0, 5, 1)]
        );
    }

    #[test]
    fn answers_are_parsed() {
        let (code, h, detail) = parse_answer(
            201,
            br#"{"id":"h1","sale_id":"s","user_id":"u-1","quantity":2,"status":"held"}"#,
        );
        assert_eq!((code, detail), (None, None));
        assert_eq!(h, hold("h1", 2, 1));
        let (code, h, detail) = parse_answer(
            409,
            br#"{"error":{"code":"sold_out","message":"nothing remains","details":{}}}"#,
        );
        assert_eq!((code.as_deref(), h, detail), (Some("sold_out"), None, None));
        let (code, _, detail) = parse_answer(502, b"Bad Gateway");
        assert_eq!(code.as_deref(), Some("http_502"));
        assert_eq!(detail.as_deref(), Some("502: Bad Gateway"));
        let (code, h, detail) = parse_answer(200, b"{}");
        assert_eq!((code.as_deref(), h), (Some("invalid_answer"), None));
        assert!(detail.unwrap().starts_with("200 without a hold"));
    }

    #[test]
    fn tally_counts_holds_once_and_checks_replays() {
        let plan = [
            key(0, 0, 2), // held, replayed: same hold
            key(1, 0, 1), // held, replayed: another hold id (a server bug)
            key(2, 0, 1), // sold out, then held on the replay (sold_out is not recorded)
            key(3, 0, 3), // limit exceeded twice
            key(4, 0, 1), // 500
            key(5, 0, 1), // no answer
            key(6, 0, 2), // held with the wrong quantity
        ];
        let records = [
            created(0, false, hold("a", 2, 0)),
            created(0, true, hold("a", 2, 0)),
            created(1, false, hold("b", 1, 1)),
            created(1, true, hold("c", 1, 1)),
            refused(2, false, 409, "sold_out", 900),
            created(2, true, hold("d", 1, 2)),
            refused(3, false, 409, "limit_exceeded", 50),
            refused(3, true, 409, "limit_exceeded", 60),
            Record {
                item: 4,
                status: 500,
                code: Some("internal".into()),
                detail: Some("500: boom".into()),
                ..Default::default()
            },
            Record {
                item: 5,
                detail: Some("timed out".into()),
                ..Default::default()
            },
            created(6, false, hold("e", 1, 6)),
            refused(9, false, 409, "sold_out", 400),
        ];
        let t = tally(&plan, &records, &user);
        assert_eq!(t.requests, 12);
        assert_eq!(t.replays, 4);
        assert_eq!(t.created, 6);
        assert_eq!(t.holds.len(), 5, "a, b, c, d, e");
        assert_eq!(t.units_held, 2 + 1 + 1 + 1 + 1);
        assert_eq!(t.holds["a"], (0, 2));
        assert_eq!(
            t.rejected,
            BTreeMap::from([("limit_exceeded".into(), 2), ("sold_out".into(), 2)])
        );
        assert_eq!(t.errors_5xx, 1);
        assert_eq!(t.transport_errors, 1);
        assert_eq!(t.idempotency_mismatches, 1, "only key 1: two hold ids");
        assert_eq!(t.hold_mismatches, 1, "hold e has 1 unit, 2 asked");
        assert_eq!(t.first_sold_out_us, Some(400));
        assert_eq!(t.first_error.as_deref(), Some("500: boom"));
    }

    #[test]
    fn a_recorded_refusal_and_a_hold_for_one_key_is_a_mismatch() {
        let plan = [key(0, 0, 1)];
        let records = [
            refused(0, false, 409, "limit_exceeded", 1),
            created(0, true, hold("a", 1, 0)),
        ];
        assert_eq!(tally(&plan, &records, &user).idempotency_mismatches, 1);
        // A 429 is not recorded: a hold on the replay is fine.
        let records = [
            refused(0, false, 429, "rate_limited", 1),
            created(0, true, hold("a", 1, 0)),
        ];
        assert_eq!(tally(&plan, &records, &user).idempotency_mismatches, 0);
    }

    #[test]
    fn limit_violations_count_buyers_over_the_limit() {
        let storm: Holds = [
            ("a".to_owned(), (0, 2)),
            ("b".to_owned(), (1, 1)),
            ("c".to_owned(), (1, 1)),
            ("d".to_owned(), (2, 2)),
            ("e".to_owned(), (2, 1)),
        ]
        .into();
        let later: Holds = [("a".to_owned(), (0, 2)), ("f".to_owned(), (1, 1))].into();
        assert_eq!(limit_violations([&storm], 2), 1, "buyer 2 has 3 units");
        assert_eq!(
            limit_violations([&storm, &later], 2),
            2,
            "hold a counts once; buyer 1 reaches 3 units"
        );
        assert_eq!(limit_violations([&storm, &later], 3), 0);
    }

    #[test]
    fn sale_counters_are_checked_and_overselling_found() {
        let sale = SaleState {
            status: "sold_out".into(),
            stock: 10,
            remaining: 0,
            held: 9,
            sold: 1,
        };
        let c = check_sale(&sale, 10, 10);
        assert!(c.invariant_ok && c.matches_client);
        assert!(!check_sale(&sale, 10, 9).matches_client);
        assert!(!check_sale(&sale, 11, 10).invariant_ok);
        assert_eq!(oversold(10, Some(&sale), 10), 0);
        assert_eq!(oversold(12, Some(&sale), 10), 2, "buyers told of 12 units");
        let over = SaleState { held: 13, ..sale };
        assert_eq!(oversold(10, Some(&over), 10), 4, "the sale's own counters");
        assert_eq!(oversold(3, None, 10), 0);
    }

    fn allocation(
        position: u64,
        hold_id: &str,
        buyer: u32,
        quantity: u64,
        status: &str,
    ) -> Allocation {
        Allocation {
            position,
            hold_id: hold_id.into(),
            user_id: user(buyer),
            quantity,
            status: status.into(),
        }
    }

    #[test]
    fn allocations_are_checked_against_the_holds() {
        let seen: Holds = [("a".to_owned(), (0, 2)), ("b".to_owned(), (1, 1))].into();
        let good = [
            allocation(1, "a", 0, 2, "held"),
            allocation(2, "b", 1, 1, "paid"),
        ];
        let c = check_allocations(&good, 3, &seen, &user);
        assert!(c.ok, "{c:?}");
        assert_eq!((c.allocations, c.units), (2, 3));

        let gap = [
            allocation(1, "a", 0, 2, "held"),
            allocation(3, "b", 1, 1, "held"),
        ];
        let c = check_allocations(&gap, 3, &seen, &user);
        assert_eq!(c.position_gaps, 1);
        assert!(!c.ok);

        let odd = [
            allocation(1, "a", 0, 2, "held"),
            allocation(2, "x", 5, 1, "held"),
            allocation(3, "z", 6, 4, "released"),
        ];
        let c = check_allocations(&odd, 3, &seen, &user);
        assert_eq!((c.unknown_holds, c.missing_holds, c.units), (2, 1, 3));
        assert!(!c.ok);

        let wrong_user = [
            allocation(1, "a", 9, 2, "held"),
            allocation(2, "b", 1, 1, "held"),
        ];
        assert_eq!(
            check_allocations(&wrong_user, 3, &seen, &user).mismatches,
            1
        );
        assert!(
            !check_allocations(&good, 4, &seen, &user).ok,
            "units short of held + sold"
        );
    }

    fn passing() -> FlashSummary {
        FlashSummary {
            requests: 50_000,
            holds: 10_000,
            units_held: 10_000,
            stock: 10_000,
            requests_per_s: 6_000.0,
            healthz_requests_per_s: 10_000.0,
            p99_ms: Some(150.0),
            healthz_p99_ms: Some(100.0),
            sold_out_rejections_per_s: Some(8_500.0),
            sale: SaleCheck {
                invariant_ok: true,
                matches_client: true,
                ..Default::default()
            },
            allocations: AllocationCheck {
                ok: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn verdict_applies_the_s3_and_s2_targets() {
        let v = verdict(&passing());
        assert!(v.s3_pass && v.consistent && v.complete, "{v:?}");
        assert_eq!(v.requests_per_s_ratio, Some(0.6));
        assert_eq!(v.p99_ratio, Some(1.5));
        assert_eq!((v.sold_out_ratio, v.s2_pass), (Some(0.85), Some(true)));

        let exactly = FlashSummary {
            requests_per_s: 5_000.0,
            p99_ms: Some(200.0),
            sold_out_rejections_per_s: Some(8_000.0),
            ..passing()
        };
        let v = verdict(&exactly);
        assert!(
            v.s3_pass && v.s2_pass == Some(true),
            "the bounds are inclusive: {v:?}"
        );

        for (summary, what) in [
            (
                FlashSummary {
                    oversold: 1,
                    ..passing()
                },
                "oversold",
            ),
            (
                FlashSummary {
                    limit_violations: 1,
                    ..passing()
                },
                "limit",
            ),
            (
                FlashSummary {
                    errors_5xx: 1,
                    ..passing()
                },
                "5xx",
            ),
            (
                FlashSummary {
                    requests_per_s: 4_999.0,
                    ..passing()
                },
                "throughput",
            ),
            (
                FlashSummary {
                    p99_ms: Some(201.0),
                    ..passing()
                },
                "p99",
            ),
            (
                FlashSummary {
                    healthz_p99_ms: None,
                    ..passing()
                },
                "no healthz p99",
            ),
            (
                FlashSummary {
                    truncated: true,
                    ..passing()
                },
                "truncated",
            ),
            (
                FlashSummary {
                    transport_errors: 1,
                    ..passing()
                },
                "no answer",
            ),
        ] {
            assert!(!verdict(&summary).s3_pass, "{what} must fail S3");
        }
        let slow = FlashSummary {
            sold_out_rejections_per_s: Some(7_000.0),
            ..passing()
        };
        assert_eq!(verdict(&slow).s2_pass, Some(false));
        let skipped = FlashSummary {
            sold_out_rejections_per_s: None,
            ..passing()
        };
        assert_eq!(verdict(&skipped).s2_pass, None);
        let replayed_badly = FlashSummary {
            idempotency_mismatches: 1,
            ..passing()
        };
        let v = verdict(&replayed_badly);
        assert!(v.s3_pass && !v.consistent);
    }

    #[test]
    fn arguments_are_bounded() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: FlashSaleArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["t", "--jwt-secret", "s"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        assert!(parse(&[]).check().is_ok());
        for bad in [
            &["--concurrency", "0"][..],
            &["--quantity-max", "101"],
            &["--retries", "1.5"],
            &["--hold-ttl-s", "3601"],
            &["--stock", "0"],
            &["--keys-per-buyer", "11"],
            &["--duration-limit", "0"],
            &["--healthz-requests", "0"],
        ] {
            assert!(parse(bad).check().is_err(), "{bad:?} accepted");
        }
    }
}
