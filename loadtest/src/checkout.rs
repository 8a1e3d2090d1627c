//! O1, paid orders persisted per second (group commit).
//!
//! As a streamer it creates a product, a live room with the product in its bag and a
//! flash sale with one unit per order to come. Untimed, `--buyers` buyers reserve
//! `--orders` holds of one unit (hold i belongs to buyer i mod buyers), and the run
//! waits until the sale's allocation list holds them all. Timed: `--concurrency`
//! workers each pay the next hold through `POST /api/v1/holds/{id}/checkout`
//! (`{"method":"simulated"}`, a unique `Idempotency-Key` per hold, the buyer's token).
//! Untimed again, a `--repeats` fraction of the paid holds is paid a second time, with
//! the first key or a new one: the answer must be the same order.
//!
//! Afterwards the room's order export (`GET /api/v1/rooms/{id}/orders?format=json`)
//! must list every order that was answered, by id, and no hold may have two orders;
//! the sale's `sold` must equal the holds that have an order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{
    self, Api, Buyers, CLIENT_BOUND_CORES, HistogramSample, Minter, OrderSeen, PayRecord, SaleSpec,
    SaleState, Target, buyer_of, error_key, http_clients, per_s, ratio, round2, round3, run_phase,
};
use crate::hist::{Histogram, ms};
use crate::report::{self, Summary, n, opt_ms};

/// O1 target on PostgreSQL, orders per second.
pub const TARGET_POSTGRES: f64 = 5_000.0;
/// O1 target on SQLite, orders per second.
pub const TARGET_SQLITE: f64 = 2_000.0;
/// The checkout route as the server's `/metrics` labels it.
const CHECKOUT_ROUTE: &str = "/api/v1/holds/{id}/checkout";
/// Longest wait for the allocation list to hold every hold, then for the server to
/// go idle, before the timed phase.
const HOLDS_SETTLE: Duration = Duration::from_secs(60);
/// Idle: the server uses less than this share of a core...
const IDLE_SERVER_CORES: f64 = 0.1;
/// ... and the whole machine (the database included) less than this.
const IDLE_MACHINE_CORES: f64 = 0.3;
/// Idle is measured over windows of this length, two in a row.
const IDLE_WINDOW: Duration = Duration::from_millis(500);
/// Longest wait for the order export to list every answered order (a journaled order
/// reaches SQL within seconds).
const EXPORT_SETTLE: Duration = Duration::from_secs(15);

/// Arguments of `harvest-loadtest checkout`.
#[derive(Debug, clap::Args)]
pub struct CheckoutArgs {
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
    /// Holds reserved (untimed), then paid (timed): one order each.
    #[arg(long, default_value_t = 20_000)]
    pub orders: u64,
    /// Distinct buyers (default: as many as orders, one hold each). With fewer, a buyer
    /// holds several: raise the server's HARVEST_RESERVATIONS_PER_USER_PER_S and
    /// HARVEST_RESERVATIONS_BURST, or the reservations wait out its 429s.
    #[arg(long)]
    pub buyers: Option<u64>,
    /// Checkouts in flight at once (also the size of the keep-alive connection pool).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Fraction of the paid holds paid again after the timed phase, alternately with
    /// the first Idempotency-Key and with a new one; each must answer the same order.
    #[arg(long, default_value_t = 0.05)]
    pub repeats: f64,
    /// The sale's unit price, in fen.
    #[arg(long, default_value_t = 990)]
    pub price: u64,
    /// The sale's hold TTL in seconds (long enough that no hold expires during the run).
    #[arg(long, default_value_t = 3600)]
    pub hold_ttl_s: u64,
    /// The server's database (`sqlite` or `postgres`), for the target, when the server
    /// does not tell (`/readyz` or a `database` label in `/metrics`).
    #[arg(long)]
    pub database: Option<String>,
    /// Safety bound: each phase stops sending after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub duration_limit: u64,
}

impl CheckoutArgs {
    fn check(&self) -> anyhow::Result<()> {
        if !(1..=1_000_000).contains(&self.orders) {
            bail!("--orders must be in 1..=1000000");
        }
        if self.buyers.is_some_and(|b| !(1..=self.orders).contains(&b)) {
            bail!("--buyers must be in 1..=--orders");
        }
        if !(1..=10_000).contains(&self.concurrency) {
            bail!("--concurrency must be in 1..=10000");
        }
        if !(0.0..=1.0).contains(&self.repeats) {
            bail!("--repeats must be a fraction in 0..=1");
        }
        if self.price > 100_000_000 {
            bail!("--price must be at most 100000000 fen");
        }
        if !(1..=3600).contains(&self.hold_ttl_s) {
            bail!("--hold-ttl-s must be in 1..=3600 (the API's range)");
        }
        if !(1..=3600).contains(&self.duration_limit) {
            bail!("--duration-limit must be in 1..=3600 seconds");
        }
        if self.source_ips > 60_000 {
            bail!("--source-ips must be at most 60000");
        }
        Ok(())
    }

    fn buyers(&self) -> u64 {
        self.buyers.unwrap_or(self.orders)
    }
}

/// Holds each buyer reserves at most (the sale's per-user limit).
pub fn holds_per_buyer(orders: u64, buyers: u64) -> u64 {
    orders.div_ceil(buyers.max(1))
}

/// The paid holds paid again: about `fraction` of `paid`, spread evenly, alternately
/// with the first key (`true`) and a new one (`false`).
pub fn repeat_plan(paid: &[u32], fraction: f64) -> Vec<(u32, bool)> {
    let f = fraction.clamp(0.0, 1.0);
    let mut out = Vec::new();
    for (k, &hold) in paid.iter().enumerate() {
        if ((k + 1) as f64 * f).floor() > (k as f64 * f).floor() {
            let same_key = out.len().is_multiple_of(2);
            out.push((hold, same_key));
        }
    }
    out
}

/// `sqlite` or `postgres` for the names a server or an operator may use; anything
/// else lower-cased.
pub fn normalize_database(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    if lower.contains("postgres") || lower == "pg" || lower == "pgsql" {
        "postgres".into()
    } else if lower.contains("sqlite") {
        "sqlite".into()
    } else {
        lower
    }
}

/// The database the server names in `/readyz` (a `database`, `checks.database` or
/// `checks.sql_backend` string) or on a `harvest_*` series of `/metrics` (a `database`
/// label).
pub fn database_from_server(readyz: Option<&Value>, metrics: Option<&str>) -> Option<String> {
    let from_readyz = readyz.and_then(|r| {
        [
            "/database",
            "/checks/database",
            "/checks/sql_backend",
            "/sql/backend",
        ]
        .iter()
        .find_map(|p| r.pointer(p).and_then(Value::as_str))
        .map(str::to_owned)
    });
    from_readyz
        .or_else(|| metrics.and_then(|m| common::metric_label(m, "harvest_", "database")))
        .filter(|d| !d.trim().is_empty())
        .map(|d| normalize_database(&d))
}

/// The O1 target for a database, orders per second.
pub fn target_for(database: Option<&str>) -> Option<f64> {
    match database {
        Some("postgres") => Some(TARGET_POSTGRES),
        Some("sqlite") => Some(TARGET_SQLITE),
        _ => None,
    }
}

/// A hold of the run, as its buyer was told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldInfo {
    pub id: String,
    pub buyer: u32,
}

/// The figures of the timed phase's answers.
#[derive(Debug, Default, PartialEq)]
pub struct PayTally {
    pub requests: u64,
    /// 200 answers with an order.
    pub orders: u64,
    /// Error answers by `<status>/<code>` (and `no_answer`).
    pub errors: BTreeMap<String, u64>,
    pub errors_5xx: u64,
    pub transport_errors: u64,
    /// Orders whose hold, buyer, quantity, amount or status is not the hold's.
    pub order_mismatches: u64,
    /// A sample of what went wrong.
    pub first_error: Option<String>,
}

/// Adds up checkout answers, checking each order against its hold.
pub fn tally(
    records: &[PayRecord],
    holds: &[HoldInfo],
    user_of: &dyn Fn(u32) -> String,
    price: u64,
) -> PayTally {
    let mut t = PayTally::default();
    for r in records {
        t.requests += 1;
        if t.first_error.is_none() {
            t.first_error.clone_from(&r.detail);
        }
        if let Some(order) = &r.order {
            t.orders += 1;
            if let Some(hold) = holds.get(r.hold as usize)
                && !order_matches(order, hold, user_of, price)
            {
                t.order_mismatches += 1;
            }
            continue;
        }
        match r.status {
            0 => t.transport_errors += 1,
            s if s >= 500 => t.errors_5xx += 1,
            _ => {}
        }
        *t.errors.entry(error_key(r)).or_default() += 1;
    }
    t
}

/// Whether an order is the one a single-unit hold should have made.
fn order_matches(
    order: &OrderSeen,
    hold: &HoldInfo,
    user_of: &dyn Fn(u32) -> String,
    price: u64,
) -> bool {
    order.hold_id == hold.id
        && order.buyer_id == user_of(hold.buyer)
        && order.quantity == 1
        && order.amount == price as i64
        && order.status == "paid"
}

/// The room's order export against the answers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ExportCheck {
    /// Orders in the export.
    pub orders: u64,
    /// Distinct order ids answered with a 200 (timed phase and repeats).
    pub orders_answered: u64,
    /// Answered order ids absent from the export.
    pub orders_lost: u64,
    /// Orders beyond one per hold (two order ids for one hold, from the answers or the
    /// export), plus exported orders of holds this run never reserved.
    pub duplicates: u64,
    /// Holds with more than one order id.
    pub holds_with_several_orders: u64,
    /// Exported orders of holds this run never reserved.
    pub unknown_holds: u64,
    /// Exported orders of this run's holds that no 200 answered (a checkout whose
    /// answer was lost or that failed after writing): not lost, not duplicated.
    pub unacknowledged: u64,
    /// Exported orders whose buyer, quantity, amount or status is not their hold's.
    pub mismatches: u64,
    /// Distinct holds with an order in the export.
    pub holds_with_orders: u64,
}

/// Checks the export. `answered` gives (hold index, order id) of every 200 answer.
pub fn check_export(
    answered: &[(u32, String)],
    holds: &[HoldInfo],
    export: &[OrderSeen],
    user_of: &dyn Fn(u32) -> String,
    price: u64,
) -> ExportCheck {
    let index: HashMap<&str, usize> = holds
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.as_str(), i))
        .collect();
    let mut ids_by_hold: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut answered_ids: HashSet<&str> = HashSet::new();
    let mut answered_holds: HashSet<&str> = HashSet::new();
    for (hold, id) in answered {
        let Some(h) = holds.get(*hold as usize) else {
            continue;
        };
        answered_ids.insert(id);
        answered_holds.insert(h.id.as_str());
        ids_by_hold.entry(h.id.as_str()).or_default().insert(id);
    }
    let exported: HashSet<&str> = export.iter().map(|o| o.id.as_str()).collect();
    let mut c = ExportCheck {
        orders: export.len() as u64,
        orders_answered: answered_ids.len() as u64,
        orders_lost: answered_ids
            .iter()
            .filter(|id| !exported.contains(*id))
            .count() as u64,
        ..Default::default()
    };
    let mut exported_holds: HashSet<&str> = HashSet::new();
    for o in export {
        exported_holds.insert(o.hold_id.as_str());
        match index.get(o.hold_id.as_str()) {
            None => c.unknown_holds += 1,
            Some(&i) => {
                ids_by_hold
                    .entry(o.hold_id.as_str())
                    .or_default()
                    .insert(o.id.as_str());
                if !order_matches(o, &holds[i], user_of, price) {
                    c.mismatches += 1;
                }
                if !answered_holds.contains(o.hold_id.as_str()) {
                    c.unacknowledged += 1;
                }
            }
        }
    }
    for ids in ids_by_hold.values() {
        if ids.len() > 1 {
            c.holds_with_several_orders += 1;
            c.duplicates += ids.len() as u64 - 1;
        }
    }
    c.duplicates += c.unknown_holds;
    c.holds_with_orders = exported_holds
        .iter()
        .filter(|h| index.contains_key(*h))
        .count() as u64;
    c
}

/// The untimed reservation phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReservePhase {
    /// Holds asked for.
    pub requested: u64,
    /// Holds given.
    pub holds: u64,
    /// Reservations that gave no hold after every attempt, by last code.
    pub failed: BTreeMap<String, u64>,
    /// Attempts retried after 429 or 503.
    pub retries: u64,
    pub duration_s: f64,
    pub holds_per_s: f64,
    /// From the end of the phase until the allocation list held every hold; null when
    /// it never did.
    pub holds_listed_after_ms: Option<u64>,
    /// From the end of the phase until the server and the machine were idle (the
    /// server writes holds to SQL behind its stock engine, and the allocation list
    /// comes from the engine); null when they were not within 60 s.
    pub idle_after_ms: Option<u64>,
}

/// The untimed repeats after the timed phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepeatPhase {
    pub requests: u64,
    pub same_key: u64,
    pub new_key: u64,
    /// Answered 200 with the hold's first order.
    pub same_order: u64,
    /// Answered 200 with another order id (also counted in `duplicates`).
    pub other_order: u64,
    /// Any other answer, by `<status>/<code>`.
    pub errors: BTreeMap<String, u64>,
}

/// The sale's counters after the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SaleCheck {
    pub stock: u64,
    pub remaining: u64,
    pub held: u64,
    pub sold: u64,
    /// `remaining + held + sold == stock`.
    pub invariant_ok: bool,
    /// `sold` equals the holds with an order in the export.
    pub sold_matches_orders: bool,
}

/// What the server's own `/metrics` say about the timed phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerView {
    pub cpu_s: Option<f64>,
    pub cpu_cores: Option<f64>,
    /// `harvest_http_request_seconds{route="/api/v1/holds/{id}/checkout"}` over the
    /// phase: requests, mean, and the upper bounds of the buckets holding p50 and p99.
    pub checkout_requests: Option<u64>,
    pub checkout_mean_ms: Option<f64>,
    pub checkout_p50_le_ms: Option<f64>,
    pub checkout_p99_le_ms: Option<f64>,
    /// `harvest_orders_total` over the phase, by status.
    pub orders_total: BTreeMap<String, u64>,
    /// `checks.journal_depth` of `/readyz` after the run (orders waiting for SQL).
    pub journal_depth_after: Option<u64>,
}

/// The O1 target, computed.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Verdict {
    /// Orders per second the database's target asks (null: database unknown).
    pub target_orders_per_s: Option<f64>,
    /// `orders_per_s / target_orders_per_s`.
    pub orders_per_s_ratio: Option<f64>,
    /// Null when the database, hence the target, is unknown.
    pub orders_per_s_ok: Option<bool>,
    pub orders_lost_ok: bool,
    pub duplicates_ok: bool,
    pub errors_5xx_ok: bool,
    /// Every hold was reserved, every checkout got an answer, no phase was cut.
    pub complete: bool,
    /// The orders match their holds, the export's too, repeats answered the first
    /// order, and the sale's counters agree with the export.
    pub consistent: bool,
    /// Rate, no order lost, no duplicate, no 5xx, on a complete run.
    pub o1_pass: bool,
}

/// The O1 figures (PERFORMANCE.md), then context.
#[derive(Debug, Default, Serialize)]
pub struct CheckoutSummary {
    pub orders: u64,
    pub orders_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    pub errors_5xx: u64,
    pub duplicates: u64,
    pub orders_lost: u64,
    pub database: Option<String>,
    pub client_cpu_s: f64,
    pub client_bound: bool,
    pub verdict: Verdict,
    // Context.
    /// `server` (from `/readyz` or `/metrics`), `argument` (`--database`) or null.
    pub database_source: Option<String>,
    /// `--database` when it differs from what the server says.
    pub database_argument_ignored: Option<String>,
    pub holds: u64,
    pub buyers: u64,
    pub per_user_limit: u64,
    pub concurrency: u64,
    pub price: u64,
    pub checkout_requests: u64,
    pub transport_errors: u64,
    pub order_mismatches: u64,
    pub max_ms: Option<f64>,
    pub checkout_s: f64,
    pub client_cpu_cores: f64,
    pub reserve: ReservePhase,
    pub repeats: RepeatPhase,
    pub export: ExportCheck,
    /// How long after the timed phase the export was last read (it is read again, up
    /// to 15 s, while answered orders are missing from it).
    pub export_read_after_ms: u64,
    pub sale: SaleCheck,
    pub server: ServerView,
    /// Machine CPU over the timed phase (/proc/stat) and the part neither server nor
    /// client used; the 1-minute load average just before it.
    pub machine_cpu_s: f64,
    pub other_cpu_s: f64,
    pub load_avg_1m_before: Option<f64>,
    /// `redis` when `/readyz` checks Redis, else `memory`.
    pub server_engine: Option<String>,
    /// A phase stopped at --duration-limit.
    pub truncated: bool,
    pub run_id: String,
    pub product_id: String,
    pub room_id: String,
    pub sale_id: String,
    /// A sample of what went wrong, when something did.
    pub first_error: Option<String>,
}

/// Computes the target from a summary's figures.
pub fn verdict(s: &CheckoutSummary) -> Verdict {
    let target = target_for(s.database.as_deref());
    let rate_ratio = target.and_then(|t| ratio(s.orders_per_s, t));
    let mut v = Verdict {
        target_orders_per_s: target,
        orders_per_s_ok: rate_ratio.map(|r| r >= 1.0),
        orders_per_s_ratio: round3(rate_ratio),
        orders_lost_ok: s.orders_lost == 0,
        duplicates_ok: s.duplicates == 0,
        errors_5xx_ok: s.errors_5xx == 0,
        complete: !s.truncated
            && s.transport_errors == 0
            && s.holds > 0
            && s.holds == s.reserve.requested
            && s.checkout_requests == s.holds,
        consistent: s.order_mismatches == 0
            && s.export.mismatches == 0
            && s.repeats.other_order == 0
            && s.repeats.errors.is_empty()
            && s.sale.invariant_ok
            && s.sale.sold_matches_orders,
        o1_pass: false,
    };
    v.o1_pass = v.orders_per_s_ok == Some(true)
        && v.orders_lost_ok
        && v.duplicates_ok
        && v.errors_5xx_ok
        && v.complete;
    v
}

impl Summary for CheckoutSummary {
    fn title(&self) -> &'static str {
        "harvest-loadtest checkout (O1)"
    }

    fn rows(&self) -> Vec<(&'static str, String, String)> {
        let pass = |ok: bool| if ok { "ok" } else { "FAIL" };
        let by_code = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(code, count)| format!("{code} {}", n(*count)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let v = &self.verdict;
        let opt = |x: Option<f64>| x.map_or_else(|| "-".into(), |x| format!("{x:.2}"));
        vec![
            (
                "orders",
                n(self.orders),
                format!(
                    "of {} holds ({} buyers, {} per buyer at most), {} in flight",
                    n(self.holds),
                    n(self.buyers),
                    self.per_user_limit,
                    self.concurrency
                ),
            ),
            (
                "orders_per_s",
                format!("{:.0}", self.orders_per_s),
                match (v.target_orders_per_s, v.orders_per_s_ok) {
                    (Some(t), Some(ok)) => format!(
                        "{}: target >= {t:.0} on {}, {:.1} s",
                        pass(ok),
                        self.database.as_deref().unwrap_or("?"),
                        self.checkout_s
                    ),
                    _ => format!(
                        "no target: database {} (pass --database)",
                        self.database.as_deref().unwrap_or("unknown")
                    ),
                },
            ),
            (
                "p50_ms",
                opt_ms(self.p50_ms),
                format!(
                    "server-side mean {} ms, p50 <= {} ms",
                    opt(self.server.checkout_mean_ms),
                    opt(self.server.checkout_p50_le_ms)
                ),
            ),
            (
                "p99_ms",
                opt_ms(self.p99_ms),
                format!(
                    "max {} ms; server-side p99 <= {} ms",
                    opt_ms(self.max_ms),
                    opt(self.server.checkout_p99_le_ms)
                ),
            ),
            (
                "errors",
                n(self.errors.values().sum()),
                by_code(&self.errors),
            ),
            (
                "errors_5xx",
                n(self.errors_5xx),
                pass(v.errors_5xx_ok).into(),
            ),
            (
                "duplicates",
                n(self.duplicates),
                format!(
                    "{}; {} holds with several orders, {} orders of unknown holds",
                    pass(v.duplicates_ok),
                    self.export.holds_with_several_orders,
                    self.export.unknown_holds
                ),
            ),
            (
                "orders_lost",
                n(self.orders_lost),
                format!(
                    "{}: {} answered, {} exported ({} unacknowledged), read {} ms after",
                    pass(v.orders_lost_ok),
                    n(self.export.orders_answered),
                    n(self.export.orders),
                    self.export.unacknowledged,
                    self.export_read_after_ms
                ),
            ),
            (
                "repeats",
                n(self.repeats.requests),
                format!(
                    "{} same order, {} other order, errors: {}",
                    n(self.repeats.same_order),
                    self.repeats.other_order,
                    if self.repeats.errors.is_empty() {
                        "none".into()
                    } else {
                        by_code(&self.repeats.errors)
                    }
                ),
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
                    "remaining+held+sold; invariant {}, sold matches orders {}",
                    pass(self.sale.invariant_ok),
                    pass(self.sale.sold_matches_orders)
                ),
            ),
            (
                "reserve",
                n(self.reserve.holds),
                format!(
                    "holds in {:.1} s ({:.0}/s), {} retries, listed after {} ms, idle after {} ms",
                    self.reserve.duration_s,
                    self.reserve.holds_per_s,
                    self.reserve.retries,
                    self.reserve
                        .holds_listed_after_ms
                        .map_or_else(|| "-".into(), |m| m.to_string()),
                    self.reserve
                        .idle_after_ms
                        .map_or_else(|| "-".into(), |m| m.to_string())
                ),
            ),
            (
                "server_cpu_s",
                opt(self.server.cpu_s),
                format!(
                    "{} cores; machine {:.2} s, other {:.2} s, load {} before, engine {}",
                    opt(self.server.cpu_cores),
                    self.machine_cpu_s,
                    self.other_cpu_s,
                    opt(self.load_avg_1m_before),
                    self.server_engine.as_deref().unwrap_or("?")
                ),
            ),
            (
                "database",
                self.database.clone().unwrap_or_else(|| "-".into()),
                format!(
                    "from {}",
                    self.database_source.as_deref().unwrap_or("nowhere")
                ),
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
                    "the client used > 90% of a core: the rate may be the client's".into()
                } else {
                    String::new()
                },
            ),
            (
                "verdict",
                format!("O1 {}", if v.o1_pass { "pass" } else { "fail" }),
                format!("complete {}; consistent {}", v.complete, v.consistent),
            ),
        ]
    }
}

/// Whether one window counts as idle: server and machine CPU, in cores.
pub fn is_idle(server_cores: f64, machine_cores: f64) -> bool {
    server_cores < IDLE_SERVER_CORES && machine_cores < IDLE_MACHINE_CORES
}

/// Waits, until `from + max` at most, for two idle windows in a row (server CPU from
/// `/metrics`, machine CPU from `/proc/stat`); the time since `from` when they ended.
async fn wait_idle(api: &Api, from: Instant, max: Duration) -> Option<u64> {
    let mut idle_windows = 0;
    while from.elapsed() < max {
        let server_before = api.server_sample().await.ok()?;
        let (machine_before, _) = common::machine_cpu_s();
        let started = Instant::now();
        tokio::time::sleep(IDLE_WINDOW).await;
        let server_after = api.server_sample().await.ok()?;
        let (machine_after, _) = common::machine_cpu_s();
        let window = started.elapsed().as_secs_f64();
        let server = (server_after.cpu_s - server_before.cpu_s) / window;
        let machine = (machine_after - machine_before) / window;
        idle_windows = if is_idle(server, machine) {
            idle_windows + 1
        } else {
            0
        };
        if idle_windows >= 2 {
            return Some(from.elapsed().as_millis() as u64);
        }
    }
    None
}

/// The room's order export.
async fn export(api: &Api, room_id: &str) -> anyhow::Result<Vec<OrderSeen>> {
    #[derive(Deserialize)]
    struct Export {
        items: Vec<OrderSeen>,
    }
    let value = api
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/rooms/{room_id}/orders?format=json"),
            None,
        )
        .await?;
    let export: Export =
        serde_json::from_value(value).context("the order export is not {items: [...]}")?;
    Ok(export.items)
}

/// Counters of `/metrics` series `name` by the value of `label`.
fn counters_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (metric, labels, v) in text.lines().filter_map(common::parse_sample) {
        if metric != name {
            continue;
        }
        let key = labels
            .into_iter()
            .find(|(k, _)| k == label)
            .map_or_else(String::new, |(_, v)| v);
        *out.entry(key).or_default() += v;
    }
    out
}

/// Runs the scenario.
pub async fn run(args: CheckoutArgs) -> anyhow::Result<()> {
    args.check()?;
    common::check_nofile(args.concurrency as u64 * 2)?;
    let target = Target::resolve(&args.url, args.allow_remote).await?;
    Api::new(&target, None)?.check_reachable().await?;
    let secret = args.jwt_secret.as_deref().context(
        "checkout needs --jwt-secret (or HARVEST_JWT_SECRET): the secret the server signs \
         tokens with, to mint the streamer's and the buyers' tokens",
    )?;
    let run_id = common::run_id();
    let limit = Duration::from_secs(args.duration_limit);
    let buyers = args.buyers();
    let per_user_limit = holds_per_buyer(args.orders, buyers);
    let minter = Minter::new(secret, Duration::from_secs(4 * args.duration_limit + 3600))?;
    let owner = Api::new(
        &target,
        Some(minter.token(
            &format!("lt-streamer-{run_id}"),
            "Load-test streamer",
            &["streamer"],
        )?),
    )?;

    // The database, for the target: the server's word first, else --database.
    let readyz = owner.readiness().await;
    let server_engine = owner.server_engine().await;
    let metrics_text = owner.metrics_text().await.ok();
    let from_server = database_from_server(readyz.as_ref(), metrics_text.as_deref());
    let from_arg = args.database.as_deref().map(normalize_database);
    let (database, database_source, database_argument_ignored) = match (from_server, from_arg) {
        (Some(s), arg) => {
            let ignored = arg.filter(|a| *a != s);
            if let Some(a) = &ignored {
                report::note(
                    None,
                    format!("the server says its database is {s}; --database {a} is ignored"),
                );
            }
            (Some(s), Some("server".to_owned()), ignored)
        }
        (None, Some(a)) => (Some(a), Some("argument".to_owned()), None),
        (None, None) => {
            report::note(
                None,
                "the server does not name its database and no --database was given: no target",
            );
            (None, None, None)
        }
    };

    // Setup: a product in the bag of a live room, and a sale of one unit per order.
    let setup = owner
        .setup_sale(
            &run_id,
            "checkout",
            "Checkout load test",
            &SaleSpec {
                price: args.price,
                stock: args.orders,
                per_user_limit,
                duration_s: 4 * args.duration_limit + 600,
                hold_ttl_s: args.hold_ttl_s,
            },
        )
        .await?;
    let user_prefix = format!("lt-buyer-{run_id}-");
    let user_of = |buyer: u32| format!("{user_prefix}{buyer}");
    report::note(
        None,
        format!(
            "sale {} in room {}: minting {} buyer tokens",
            setup.sale_id,
            setup.room_id,
            n(buyers)
        ),
    );
    let ctx = Arc::new(Buyers {
        base: target.base.clone(),
        sale_id: setup.sale_id.clone(),
        buyers,
        auth: common::mint_bearers(&minter, buyers, &user_of)?,
        key_prefix: format!("lt-{run_id}"),
    });
    let clients = http_clients(&target, args.source_ips, args.concurrency)?;

    // Untimed: reserve the holds (this also opens the pool's connections).
    let reserved = {
        let ctx = ctx.clone();
        run_phase(
            Some("reserve"),
            &clients,
            args.concurrency,
            args.orders as usize,
            limit,
            move |client, i, _start| {
                let ctx = ctx.clone();
                async move { vec![ctx.reserve(&client, i).await] }
            },
        )
        .await
    };
    let mut reserve_records = reserved.records;
    reserve_records.sort_by_key(|r| r.item);
    let mut reserve = ReservePhase {
        requested: args.orders,
        duration_s: round2(reserved.elapsed_s),
        ..Default::default()
    };
    let mut holds: Vec<HoldInfo> = Vec::with_capacity(args.orders as usize);
    let mut first_error = None;
    for r in &reserve_records {
        reserve.retries += r.retries;
        match (&r.hold_id, &r.failure) {
            (Some(id), _) => holds.push(HoldInfo {
                id: id.clone(),
                buyer: buyer_of(u64::from(r.item), buyers),
            }),
            (None, failure) => {
                let failure = failure.clone().unwrap_or_else(|| "unknown".into());
                if first_error.is_none() {
                    first_error = Some(format!("reservation: {failure}"));
                }
                let code = failure.split(':').next().unwrap_or_default().to_owned();
                *reserve.failed.entry(code).or_default() += 1;
            }
        }
    }
    reserve.holds = holds.len() as u64;
    reserve.holds_per_s = per_s(reserve.holds, reserved.elapsed_s);
    if holds.is_empty() {
        owner.end_sale_and_room(&setup).await;
        bail!(
            "no reservation gave a hold ({:?}); nothing to pay",
            reserve.failed
        );
    }
    if reserve.holds < args.orders {
        report::note(
            None,
            format!(
                "only {} of {} reservations gave a hold: {:?}",
                n(reserve.holds),
                n(args.orders),
                reserve.failed
            ),
        );
    }

    // Wait until the engine lists every hold, then until the server and the machine
    // are idle: the holds reach SQL behind the engine, and those writes should not
    // fall into the timed phase.
    let settle_from = Instant::now();
    let max_pages = reserve.holds / u64::from(crate::flash::ALLOCATION_PAGE) + 10;
    loop {
        match crate::flash::allocations(&owner, &setup.sale_id, max_pages).await {
            Ok(items) if items.len() as u64 >= reserve.holds => {
                reserve.holds_listed_after_ms = Some(settle_from.elapsed().as_millis() as u64);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                report::note(None, format!("cannot read the allocations: {e:#}"));
                break;
            }
        }
        if settle_from.elapsed() >= HOLDS_SETTLE {
            report::note(
                None,
                "the allocation list still lacks holds 60 s after the reservations; paying anyway",
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    reserve.idle_after_ms = wait_idle(&owner, settle_from, HOLDS_SETTLE).await;
    if reserve.idle_after_ms.is_none() {
        report::note(
            None,
            "the server or the machine stayed busy 60 s after the reservations; paying anyway",
        );
    }

    // Timed: pay every hold, --concurrency checkouts in flight.
    let holds = Arc::new(holds);
    let load_avg_1m_before = common::load_avg_1m();
    let metrics_before = owner.metrics_text().await.ok();
    let server_before = owner.server_sample().await.ok();
    let machine_before = common::machine_cpu_s();
    let paid = {
        let (ctx, holds) = (ctx.clone(), holds.clone());
        run_phase(
            Some("checkout"),
            &clients,
            args.concurrency,
            holds.len(),
            limit,
            move |client, i, _start| {
                let (ctx, holds) = (ctx.clone(), holds.clone());
                async move {
                    let h = &holds[i as usize];
                    let key = ctx.pay_key(i);
                    vec![ctx.checkout(&client, i, &h.id, h.buyer, &key).await]
                }
            },
        )
        .await
    };
    let machine_after = common::machine_cpu_s();
    let server_after = owner.server_sample().await.ok();
    let metrics_after = owner.metrics_text().await.ok();
    let pay_tally = tally(&paid.records, &holds, &user_of, args.price);
    let latency: Histogram = paid.latency();

    // Untimed: pay some holds again; the answer must be the first order.
    let first_order: HashMap<u32, String> = paid
        .records
        .iter()
        .filter_map(|r| r.order.as_ref().map(|o| (r.hold, o.id.clone())))
        .collect();
    let mut paid_holds: Vec<u32> = first_order.keys().copied().collect();
    paid_holds.sort_unstable();
    let plan = Arc::new(repeat_plan(&paid_holds, args.repeats));
    let mut repeats = RepeatPhase::default();
    let mut answered: Vec<(u32, String)> =
        first_order.iter().map(|(h, id)| (*h, id.clone())).collect();
    let mut repeat_truncated = false;
    if !plan.is_empty() {
        let (ctx, holds, plan2) = (ctx.clone(), holds.clone(), plan.clone());
        let outcome = run_phase(
            Some("repeats"),
            &clients,
            args.concurrency,
            plan.len(),
            limit,
            move |client, i, _start| {
                let (ctx, holds, plan) = (ctx.clone(), holds.clone(), plan2.clone());
                async move {
                    let (hold, same_key) = plan[i as usize];
                    let h = &holds[hold as usize];
                    let key = if same_key {
                        ctx.pay_key(hold)
                    } else {
                        format!("{}-repay-{hold}", ctx.key_prefix)
                    };
                    vec![ctx.checkout(&client, hold, &h.id, h.buyer, &key).await]
                }
            },
        )
        .await;
        repeat_truncated = outcome.truncated;
        repeats.requests = outcome.records.len() as u64;
        repeats.same_key = plan.iter().filter(|(_, same)| *same).count() as u64;
        repeats.new_key = plan.len() as u64 - repeats.same_key;
        for r in &outcome.records {
            match &r.order {
                Some(o) => {
                    if first_order.get(&r.hold) == Some(&o.id) {
                        repeats.same_order += 1;
                    } else {
                        repeats.other_order += 1;
                    }
                    answered.push((r.hold, o.id.clone()));
                }
                None => {
                    if first_error.is_none() {
                        first_error.clone_from(&r.detail);
                    }
                    *repeats.errors.entry(error_key(r)).or_default() += 1;
                }
            }
        }
    }

    // The export against the answers, read again while answered orders are missing.
    let read_from = Instant::now();
    let export_check = loop {
        let check = match export(&owner, &setup.room_id).await {
            Ok(items) => check_export(&answered, &holds, &items, &user_of, args.price),
            Err(e) => {
                report::note(None, format!("cannot read the order export: {e:#}"));
                break None;
            }
        };
        if check.orders_lost == 0 || read_from.elapsed() >= EXPORT_SETTLE {
            break Some(check);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let export_read_after_ms = read_from.elapsed().as_millis() as u64;
    let export_check = match export_check {
        Some(c) => c,
        None => {
            owner.end_sale_and_room(&setup).await;
            bail!("the order export could not be read: orders_lost is unknown");
        }
    };
    let final_sale: SaleState = owner
        .sale_state(&setup.sale_id)
        .await
        .context("reading the sale after the run")?;
    let journal_depth_after = owner
        .readiness()
        .await
        .and_then(|r| r.pointer("/checks/journal_depth").and_then(Value::as_u64));

    // Cleanup: end the sale and the room.
    owner.end_sale_and_room(&setup).await;

    let server_cpu_s = match (server_before, server_after) {
        (Some(b), Some(a)) => Some(round2((a.cpu_s - b.cpu_s).max(0.0))),
        _ => None,
    };
    let mut server = ServerView {
        cpu_s: server_cpu_s,
        cpu_cores: server_cpu_s.map(|c| round2(c / paid.elapsed_s.max(1e-9))),
        journal_depth_after,
        ..Default::default()
    };
    if let Some(after) = &metrics_after {
        let name = "harvest_http_request_seconds";
        let before = metrics_before
            .as_deref()
            .and_then(|t| HistogramSample::read(t, name, "route", CHECKOUT_ROUTE));
        if let Some(h) = HistogramSample::read(after, name, "route", CHECKOUT_ROUTE) {
            let d = h.since(before.as_ref());
            let to_ms = |s: f64| (s * 1e5).round() / 100.0;
            server.checkout_requests = Some(d.count as u64);
            server.checkout_mean_ms = d.mean().map(to_ms);
            server.checkout_p50_le_ms = d.quantile_bound(0.5).filter(|v| v.is_finite()).map(to_ms);
            server.checkout_p99_le_ms = d.quantile_bound(0.99).filter(|v| v.is_finite()).map(to_ms);
        }
        let before = metrics_before
            .as_deref()
            .map(|t| counters_by_label(t, "harvest_orders_total", "status"))
            .unwrap_or_default();
        for (status, v) in counters_by_label(after, "harvest_orders_total", "status") {
            let d = v - before.get(&status).copied().unwrap_or(0.0);
            if d > 0.0 {
                server.orders_total.insert(status, d as u64);
            }
        }
    }
    let machine_cpu_s = machine_after.0 - machine_before.0;
    let sale = SaleCheck {
        stock: final_sale.stock,
        remaining: final_sale.remaining,
        held: final_sale.held,
        sold: final_sale.sold,
        invariant_ok: final_sale.stock == args.orders
            && final_sale.remaining + final_sale.held + final_sale.sold == final_sale.stock,
        sold_matches_orders: final_sale.sold == export_check.holds_with_orders,
    };
    let first_error = first_error.or_else(|| pay_tally.first_error.clone());
    let mut summary = CheckoutSummary {
        orders: pay_tally.orders,
        orders_per_s: per_s(pay_tally.orders, paid.elapsed_s),
        p50_ms: latency.quantile(0.50).map(ms),
        p99_ms: latency.quantile(0.99).map(ms),
        errors: pay_tally.errors.clone(),
        errors_5xx: pay_tally.errors_5xx,
        duplicates: export_check.duplicates,
        orders_lost: export_check.orders_lost,
        database,
        client_cpu_s: round2(paid.client_cpu_s),
        client_bound: paid.client_cores() > CLIENT_BOUND_CORES,
        verdict: Verdict::default(),
        database_source,
        database_argument_ignored,
        holds: holds.len() as u64,
        buyers,
        per_user_limit,
        concurrency: args.concurrency as u64,
        price: args.price,
        checkout_requests: pay_tally.requests,
        transport_errors: pay_tally.transport_errors,
        order_mismatches: pay_tally.order_mismatches,
        max_ms: (latency.count() > 0).then(|| ms(latency.max())),
        checkout_s: round2(paid.elapsed_s),
        client_cpu_cores: round2(paid.client_cores()),
        reserve,
        repeats,
        export: export_check,
        export_read_after_ms,
        sale,
        server,
        machine_cpu_s: round2(machine_cpu_s),
        other_cpu_s: round2(
            (machine_cpu_s - server_cpu_s.unwrap_or(0.0) - paid.client_cpu_s).max(0.0),
        ),
        load_avg_1m_before,
        server_engine,
        truncated: reserved.truncated || paid.truncated || repeat_truncated,
        run_id,
        product_id: setup.product_id.clone(),
        room_id: setup.room_id.clone(),
        sale_id: setup.sale_id.clone(),
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

    /// The names the brief of O1 fixes.
    const O1_FIGURES: [&str; 12] = [
        "orders",
        "orders_per_s",
        "p50_ms",
        "p99_ms",
        "errors",
        "errors_5xx",
        "duplicates",
        "orders_lost",
        "database",
        "client_cpu_s",
        "client_bound",
        "verdict",
    ];

    fn user(buyer: u32) -> String {
        format!("u-{buyer}")
    }

    fn holds(n: u32) -> Vec<HoldInfo> {
        (0..n)
            .map(|i| HoldInfo {
                id: format!("h{i}"),
                buyer: i % 2,
            })
            .collect()
    }

    fn order(id: &str, hold: &str, buyer: u32) -> OrderSeen {
        OrderSeen {
            id: id.into(),
            hold_id: hold.into(),
            buyer_id: user(buyer),
            quantity: 1,
            amount: 990,
            status: "paid".into(),
            paid_at: None,
        }
    }

    fn paid(hold: u32, id: &str, buyer: u32) -> PayRecord {
        PayRecord {
            hold,
            status: 200,
            order: Some(order(id, &format!("h{hold}"), buyer)),
            latency_us: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn summary_has_every_o1_figure() {
        let mut summary = CheckoutSummary::default();
        summary.errors.insert("503/unavailable".into(), 2);
        let value = serde_json::to_value(&summary).unwrap();
        let object = value.as_object().unwrap();
        for name in O1_FIGURES {
            assert!(object.contains_key(name), "missing {name}");
        }
        assert_eq!(object["errors"], json!({"503/unavailable": 2}));
        assert!(object["verdict"]["o1_pass"].is_boolean());
        assert!(object["p99_ms"].is_null(), "no samples: null, not 0");
        assert!(object["database"].is_null());
    }

    #[test]
    fn buyers_take_turns_within_the_limit() {
        assert_eq!(holds_per_buyer(20_000, 20_000), 1);
        assert_eq!(holds_per_buyer(20_000, 3), 6667);
        assert_eq!(holds_per_buyer(10, 4), 3);
        let per_buyer = (0..10u64).fold(HashMap::<u32, u64>::new(), |mut m, i| {
            *m.entry(buyer_of(i, 4)).or_default() += 1;
            m
        });
        assert_eq!(per_buyer.len(), 4);
        assert!(per_buyer.values().all(|&c| c <= holds_per_buyer(10, 4)));
        assert_eq!(buyer_of(5, 1), 0);
    }

    #[test]
    fn repeats_are_spread_and_alternate_keys() {
        let paid: Vec<u32> = (0..100).collect();
        let plan = repeat_plan(&paid, 0.05);
        assert_eq!(plan.len(), 5);
        assert_eq!(
            plan.iter().map(|p| p.0).collect::<Vec<_>>(),
            [19, 39, 59, 79, 99]
        );
        assert_eq!(
            plan.iter().map(|p| p.1).collect::<Vec<_>>(),
            [true, false, true, false, true]
        );
        assert!(repeat_plan(&paid, 0.0).is_empty());
        assert_eq!(repeat_plan(&paid, 1.0).len(), 100);
        assert_eq!(repeat_plan(&[7, 9], 0.5), [(9, true)]);
    }

    #[test]
    fn database_names_and_targets() {
        assert_eq!(normalize_database("PostgreSQL"), "postgres");
        assert_eq!(normalize_database("pg"), "postgres");
        assert_eq!(normalize_database(" sqlite3 "), "sqlite");
        assert_eq!(normalize_database("mysql"), "mysql");
        assert_eq!(target_for(Some("postgres")), Some(5_000.0));
        assert_eq!(target_for(Some("sqlite")), Some(2_000.0));
        assert_eq!(target_for(Some("mysql")), None);
        assert_eq!(target_for(None), None);
        let readyz = json!({"status": "ok", "checks": {"sql": "ok", "database": "postgres"}});
        assert_eq!(
            database_from_server(Some(&readyz), None).as_deref(),
            Some("postgres")
        );
        let plain = json!({"status": "ok", "checks": {"sql": "ok"}});
        assert_eq!(database_from_server(Some(&plain), None), None);
        let metrics = "harvest_build_info{database=\"sqlite\"} 1\n";
        assert_eq!(
            database_from_server(Some(&plain), Some(metrics)).as_deref(),
            Some("sqlite")
        );
        assert_eq!(
            database_from_server(None, Some("process_cpu_seconds_total 1\n")),
            None
        );
    }

    #[test]
    fn idle_needs_a_quiet_server_and_machine() {
        assert!(is_idle(0.02, 0.1));
        assert!(!is_idle(0.2, 0.25), "server busy");
        assert!(
            !is_idle(0.0, 0.9),
            "the database or another process is busy"
        );
    }

    #[test]
    fn tally_counts_orders_and_errors_by_status_and_code() {
        let hs = holds(6);
        let records = [
            paid(0, "o0", 0),
            paid(1, "o1", 1),
            PayRecord {
                hold: 2,
                status: 503,
                code: Some("unavailable".into()),
                detail: Some("503: retry".into()),
                ..Default::default()
            },
            PayRecord {
                hold: 3,
                status: 409,
                code: Some("hold_expired".into()),
                ..Default::default()
            },
            PayRecord {
                hold: 4,
                detail: Some("timed out".into()),
                ..Default::default()
            },
            // An order of the wrong hold.
            PayRecord {
                hold: 5,
                status: 200,
                order: Some(order("o5", "h4", 1)),
                ..Default::default()
            },
        ];
        let t = tally(&records, &hs, &user, 990);
        assert_eq!((t.requests, t.orders), (6, 3));
        assert_eq!(
            t.errors,
            BTreeMap::from([
                ("409/hold_expired".into(), 1),
                ("503/unavailable".into(), 1),
                ("no_answer".into(), 1),
            ])
        );
        assert_eq!((t.errors_5xx, t.transport_errors), (1, 1));
        assert_eq!(t.order_mismatches, 1);
        assert_eq!(t.first_error.as_deref(), Some("503: retry"));
        let wrong_amount = PayRecord {
            order: Some(OrderSeen {
                amount: 1,
                ..order("o0", "h0", 0)
            }),
            ..paid(0, "o0", 0)
        };
        assert_eq!(tally(&[wrong_amount], &hs, &user, 990).order_mismatches, 1);
    }

    #[test]
    fn export_finds_lost_and_duplicated_orders_by_id() {
        let hs = holds(4);
        let answered = vec![
            (0, "o0".to_owned()),
            (1, "o1".to_owned()),
            (2, "o2".to_owned()),
        ];
        let good = [
            order("o0", "h0", 0),
            order("o1", "h1", 1),
            order("o2", "h2", 0),
        ];
        let c = check_export(&answered, &hs, &good, &user, 990);
        assert_eq!(
            c,
            ExportCheck {
                orders: 3,
                orders_answered: 3,
                holds_with_orders: 3,
                ..Default::default()
            }
        );

        // o1 missing; h2 exported under another id (o2 lost, and h2 has two ids); h3
        // paid without a 200 (unacknowledged); an order of a hold nobody reserved.
        let bad = [
            order("o0", "h0", 0),
            order("o2b", "h2", 0),
            order("o3", "h3", 1),
            order("ox", "hx", 9),
        ];
        let c = check_export(&answered, &hs, &bad, &user, 990);
        assert_eq!(c.orders_lost, 2, "o1 and o2");
        assert_eq!(c.holds_with_several_orders, 1);
        assert_eq!(c.unknown_holds, 1);
        assert_eq!(
            c.duplicates, 2,
            "h2's second id and the unknown hold's order"
        );
        assert_eq!(c.unacknowledged, 1);
        assert_eq!(c.holds_with_orders, 3);

        // The same hold twice in the export; a repeat answering another id.
        let twice = [order("o0", "h0", 0), order("o0b", "h0", 0)];
        let c = check_export(&[(0, "o0".to_owned())], &hs, &twice, &user, 990);
        assert_eq!((c.duplicates, c.orders_lost), (1, 0));
        let repeated = [
            (0, "o0".to_owned()),
            (0, "o0".to_owned()),
            (0, "o9".to_owned()),
        ];
        let c = check_export(&repeated, &hs, &good[..1], &user, 990);
        assert_eq!((c.orders_answered, c.orders_lost, c.duplicates), (2, 1, 1));

        // Ids are compared exactly.
        let case = [order("O0", "h0", 0)];
        let c = check_export(&[(0, "o0".to_owned())], &hs, &case, &user, 990);
        assert_eq!(c.orders_lost, 1);

        let refunded = [OrderSeen {
            status: "refunded".into(),
            ..order("o0", "h0", 0)
        }];
        let c = check_export(&[(0, "o0".to_owned())], &hs, &refunded, &user, 990);
        assert_eq!(c.mismatches, 1);
    }

    fn passing() -> CheckoutSummary {
        CheckoutSummary {
            orders: 20_000,
            orders_per_s: 6_000.0,
            database: Some("postgres".into()),
            holds: 20_000,
            checkout_requests: 20_000,
            reserve: ReservePhase {
                requested: 20_000,
                holds: 20_000,
                ..Default::default()
            },
            sale: SaleCheck {
                invariant_ok: true,
                sold_matches_orders: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn verdict_applies_the_o1_targets() {
        let v = verdict(&passing());
        assert!(v.o1_pass && v.complete && v.consistent, "{v:?}");
        assert_eq!(v.target_orders_per_s, Some(5_000.0));
        assert_eq!(v.orders_per_s_ratio, Some(1.2));

        let sqlite = CheckoutSummary {
            database: Some("sqlite".into()),
            orders_per_s: 2_000.0,
            ..passing()
        };
        assert!(verdict(&sqlite).o1_pass, "the bound is inclusive");
        let unknown = CheckoutSummary {
            database: None,
            ..passing()
        };
        let v = verdict(&unknown);
        assert_eq!((v.orders_per_s_ok, v.o1_pass), (None, false));

        for (summary, what) in [
            (
                CheckoutSummary {
                    orders_per_s: 4_999.0,
                    ..passing()
                },
                "rate",
            ),
            (
                CheckoutSummary {
                    orders_lost: 1,
                    ..passing()
                },
                "lost",
            ),
            (
                CheckoutSummary {
                    duplicates: 1,
                    ..passing()
                },
                "duplicate",
            ),
            (
                CheckoutSummary {
                    errors_5xx: 1,
                    ..passing()
                },
                "5xx",
            ),
            (
                CheckoutSummary {
                    truncated: true,
                    ..passing()
                },
                "truncated",
            ),
            (
                CheckoutSummary {
                    transport_errors: 1,
                    ..passing()
                },
                "no answer",
            ),
            (
                CheckoutSummary {
                    holds: 19_999,
                    ..passing()
                },
                "a reservation failed",
            ),
        ] {
            assert!(!verdict(&summary).o1_pass, "{what} must fail O1");
        }
        let mut odd = passing();
        odd.repeats.other_order = 1;
        let v = verdict(&odd);
        assert!(v.o1_pass && !v.consistent);
    }

    #[test]
    fn arguments_are_bounded() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: CheckoutArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["t", "--jwt-secret", "s"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        let defaults = parse(&[]);
        assert!(defaults.check().is_ok());
        assert_eq!(
            (defaults.orders, defaults.buyers(), defaults.concurrency),
            (20_000, 20_000, 256)
        );
        assert_eq!(defaults.hold_ttl_s, 3600);
        assert_eq!(parse(&["--orders", "100", "--buyers", "10"]).buyers(), 10);
        for bad in [
            &["--orders", "0"][..],
            &["--orders", "10", "--buyers", "11"],
            &["--buyers", "0"],
            &["--concurrency", "0"],
            &["--repeats", "1.5"],
            &["--hold-ttl-s", "3601"],
            &["--duration-limit", "0"],
        ] {
            assert!(parse(bad).check().is_err(), "{bad:?} accepted");
        }
    }
}
