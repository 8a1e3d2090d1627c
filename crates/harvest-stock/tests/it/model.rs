//! Property tests: random sequences of reserve / release / pay / expire / end checked
//! step by step against a small reference model (invariants 1–4 and 6 follow from
//! agreeing with it), and random concurrent interleavings checked against the
//! invariants directly. Cases come from `PROPTEST_CASES` (default 64).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use harvest_stock::{
    Hold, HoldStatus, MemoryEngine, Reject, ReserveOutcome, ReserveRequest, SaleCounts, SaleSpec,
    StockEngine, StockError,
};
use proptest::prelude::*;

use crate::harness::*;

const START: i64 = 10_000;
const END: i64 = START + 1_500;
const TTL: i64 = 200;

#[derive(Debug, Clone)]
enum Op {
    Reserve { user: u8, qty: u32, key: u8 },
    Release { pick: usize, intruder: bool },
    Pay { pick: usize },
    Advance { ms: i64 },
    Expire { max: usize },
    End,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..4u8, 1..4u32, 0..5u8).prop_map(|(user, qty, key)| Op::Reserve { user, qty, key }),
        3 => (any::<usize>(), proptest::bool::weighted(0.15))
            .prop_map(|(pick, intruder)| Op::Release { pick, intruder }),
        3 => any::<usize>().prop_map(|pick| Op::Pay { pick }),
        4 => (0..250i64).prop_map(|ms| Op::Advance { ms }),
        3 => (1..4usize).prop_map(|max| Op::Expire { max }),
        1 => Just(Op::End),
    ]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Comparable results.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Res {
    Held(Hold),
    Rejected(Reject),
    Holds(Vec<String>),
    Err(&'static str, String),
}

fn from_reserve(r: Result<ReserveOutcome, StockError>) -> Res {
    match r {
        Ok(ReserveOutcome::Held(h)) => Res::Held(h),
        Ok(ReserveOutcome::Rejected(r)) => Res::Rejected(r),
        Err(e) => from_err(e),
    }
}

fn from_hold(r: Result<Hold, StockError>) -> Res {
    match r {
        Ok(h) => Res::Held(h),
        Err(e) => from_err(e),
    }
}

fn from_err(e: StockError) -> Res {
    match e {
        StockError::LateHold { status, hold } => {
            Res::Err("late", format!("{status}:{}", hold.hold_id))
        }
        StockError::HoldNotFound(id) => Res::Err("not_found", id),
        StockError::HoldPaid(id) => Res::Err("hold_paid", id),
        StockError::HoldExpired(id) => Res::Err("hold_expired", id),
        StockError::HoldReleased(id) => Res::Err("hold_released", id),
        other => panic!("unexpected error {other:?}"),
    }
}

/// The reference model of one sale.
struct Model {
    sale_id: String,
    stock: u64,
    limit: u64,
    ended: bool,
    remaining: u64,
    held: u64,
    sold: u64,
    holds: Vec<Hold>,
    used: HashMap<String, u64>,
    idem: HashMap<(String, String), (String, Result<String, Reject>)>,
}

impl Model {
    fn reserve(&mut self, r: &ReserveRequest) -> Res {
        let key = (r.user_id.clone(), r.idempotency_key.clone());
        if let Some((fp, out)) = self.idem.get(&key) {
            if *fp != r.request_fingerprint {
                return Res::Rejected(Reject::IdempotencyKeyReused);
            }
            return match out {
                Ok(id) => {
                    let mut h = self
                        .holds
                        .iter()
                        .find(|h| &h.hold_id == id)
                        .cloned()
                        .unwrap();
                    h.status = HoldStatus::Held;
                    Res::Held(h)
                }
                Err(rej) => Res::Rejected(*rej),
            };
        }
        let q = u64::from(r.quantity);
        let used = self.used.get(&r.user_id).copied().unwrap_or(0);
        let rej = if r.now_ms < START {
            Reject::NotStarted
        } else if self.ended || r.now_ms >= END {
            Reject::SaleEnded
        } else if self.remaining == 0 {
            return Res::Rejected(Reject::SoldOut);
        } else if used + q > self.limit {
            Reject::LimitExceeded
        } else if self.remaining < q {
            Reject::InsufficientStock
        } else {
            self.remaining -= q;
            self.held += q;
            *self.used.entry(r.user_id.clone()).or_default() += q;
            let h = Hold {
                hold_id: r.hold_id.clone(),
                sale_id: self.sale_id.clone(),
                user_id: r.user_id.clone(),
                quantity: r.quantity,
                position: self.holds.len() as u64 + 1,
                created_at_ms: r.now_ms,
                expires_at_ms: r.now_ms + TTL,
                status: HoldStatus::Held,
            };
            self.holds.push(h.clone());
            self.idem
                .insert(key, (r.request_fingerprint.clone(), Ok(h.hold_id.clone())));
            return Res::Held(h);
        };
        self.idem
            .insert(key, (r.request_fingerprint.clone(), Err(rej)));
        Res::Rejected(rej)
    }

    fn give_back(&mut self, i: usize, status: HoldStatus) -> Hold {
        let h = &mut self.holds[i];
        h.status = status;
        let q = u64::from(h.quantity);
        self.remaining += q;
        self.held -= q;
        *self.used.get_mut(&h.user_id).unwrap() -= q;
        h.clone()
    }

    fn release(&mut self, id: &str, user: &str, now: i64) -> Res {
        let Some(i) = self
            .holds
            .iter()
            .position(|h| h.hold_id == id && h.user_id == user)
        else {
            return Res::Err("not_found", id.to_owned());
        };
        let h = &self.holds[i];
        match h.status {
            HoldStatus::Paid => Res::Err("hold_paid", id.to_owned()),
            HoldStatus::Released => Res::Err("hold_released", id.to_owned()),
            HoldStatus::Expired => Res::Err("hold_expired", id.to_owned()),
            HoldStatus::Held if now >= h.expires_at_ms => Res::Err("hold_expired", id.to_owned()),
            HoldStatus::Held => Res::Held(self.give_back(i, HoldStatus::Released)),
        }
    }

    fn pay(&mut self, id: &str, now: i64) -> Res {
        let Some(i) = self.holds.iter().position(|h| h.hold_id == id) else {
            return Res::Err("not_found", id.to_owned());
        };
        let h = &mut self.holds[i];
        match h.status {
            HoldStatus::Paid => Res::Held(h.clone()),
            HoldStatus::Released | HoldStatus::Expired => {
                Res::Err("late", format!("{}:{id}", h.status))
            }
            HoldStatus::Held if now >= h.expires_at_ms => Res::Err("late", format!("expired:{id}")),
            HoldStatus::Held => {
                h.status = HoldStatus::Paid;
                let q = u64::from(h.quantity);
                self.held -= q;
                self.sold += q;
                Res::Held(h.clone())
            }
        }
    }

    fn expire(&mut self, now: i64, max: usize) -> Res {
        let mut due: Vec<(i64, String, usize)> = self
            .holds
            .iter()
            .enumerate()
            .filter(|(_, h)| h.status == HoldStatus::Held && h.expires_at_ms <= now)
            .map(|(i, h)| (h.expires_at_ms, h.hold_id.clone(), i))
            .collect();
        due.sort();
        due.truncate(max);
        Res::Holds(
            due.into_iter()
                .map(|(_, _, i)| self.give_back(i, HoldStatus::Expired).hold_id)
                .collect(),
        )
    }

    fn counts(&self) -> SaleCounts {
        SaleCounts {
            stock: self.stock,
            remaining: self.remaining,
            held: self.held,
            sold: self.sold,
        }
    }
}

async fn run_against_model(e: Arc<dyn StockEngine>, stock: u64, limit: u32, ops: Vec<Op>) {
    let spec = SaleSpec {
        sale_id: unique("prop"),
        stock,
        per_user_limit: limit,
        hold_ttl: Duration::from_millis(TTL as u64),
        starts_at_ms: START,
        ends_at_ms: END,
    };
    e.create_sale(&spec).await.unwrap();
    let mut m = Model {
        sale_id: spec.sale_id.clone(),
        stock,
        limit: u64::from(limit),
        ended: false,
        remaining: stock,
        held: 0,
        sold: 0,
        holds: Vec::new(),
        used: HashMap::new(),
        idem: HashMap::new(),
    };
    let mut now = START - 60;
    for (n, op) in ops.into_iter().enumerate() {
        let pick_hold = |pick: usize, m: &Model| {
            if m.holds.is_empty() {
                ("missing".to_owned(), "u0".to_owned())
            } else {
                let h = &m.holds[pick % m.holds.len()];
                (h.hold_id.clone(), h.user_id.clone())
            }
        };
        let (got, want) = match &op {
            Op::Reserve { user, qty, key } => {
                let r = ReserveRequest {
                    sale_id: spec.sale_id.clone(),
                    user_id: format!("u{user}"),
                    quantity: *qty,
                    idempotency_key: format!("k{key}"),
                    request_fingerprint: format!("q{qty}"),
                    hold_id: format!("{}-h{n}", spec.sale_id),
                    now_ms: now,
                };
                (from_reserve(e.reserve(r.clone()).await), m.reserve(&r))
            }
            Op::Release { pick, intruder } => {
                let (id, owner) = pick_hold(*pick, &m);
                let user = if *intruder {
                    "intruder".to_owned()
                } else {
                    owner
                };
                (
                    from_hold(e.release(&id, &user, now).await),
                    m.release(&id, &user, now),
                )
            }
            Op::Pay { pick } => {
                let (id, _) = pick_hold(*pick, &m);
                (from_hold(e.confirm_paid(&id, now).await), m.pay(&id, now))
            }
            Op::Advance { ms } => {
                now += ms;
                continue;
            }
            Op::Expire { max } => {
                let got = e.expire_due(now, *max).await.unwrap();
                assert!(got.iter().all(|h| h.status == HoldStatus::Expired));
                (
                    Res::Holds(got.into_iter().map(|h| h.hold_id).collect()),
                    m.expire(now, *max),
                )
            }
            Op::End => {
                e.end_sale(&spec.sale_id, now).await.unwrap();
                m.ended = true;
                continue;
            }
        };
        assert_eq!(got, want, "step {n}: {op:?} at {now}");
        let c = e.counts(&spec.sale_id).await.unwrap();
        assert_eq!(c, m.counts(), "counts after step {n}: {op:?}");
        assert!(c.is_consistent());
        assert!(m.used.values().all(|&u| u <= m.limit));
    }
    let holds = all_holds(&*e, &spec.sale_id).await;
    assert_eq!(holds, m.holds, "allocation log");
}

/// Runs chunks of operations concurrently and checks the invariants after each chunk.
async fn run_concurrently(e: Arc<dyn StockEngine>, ops: Vec<Op>) {
    let spec = SaleSpec {
        sale_id: unique("conc"),
        stock: 8,
        per_user_limit: 3,
        hold_ttl: Duration::from_millis(TTL as u64),
        starts_at_ms: START,
        ends_at_ms: END + 100_000,
    };
    e.create_sale(&spec).await.unwrap();
    let mut now = START;
    let mut ended_by: HashMap<String, &'static str> = HashMap::new();
    let mut known: Vec<(String, String)> = Vec::new();
    for (c, chunk) in ops.chunks(6).enumerate() {
        let calls = chunk.iter().enumerate().map(|(i, op)| {
            let e = e.clone();
            let spec = spec.clone();
            let known = known.clone();
            let op = op.clone();
            async move {
                let pick = |p: usize| {
                    if known.is_empty() {
                        ("missing".to_owned(), "u0".to_owned())
                    } else {
                        known[p % known.len()].clone()
                    }
                };
                match op {
                    Op::Reserve { user, qty, key } => {
                        let r = ReserveRequest {
                            sale_id: spec.sale_id.clone(),
                            user_id: format!("u{user}"),
                            quantity: qty,
                            idempotency_key: format!("k{key}"),
                            request_fingerprint: format!("q{qty}"),
                            hold_id: format!("{}-h{c}-{i}", spec.sale_id),
                            now_ms: now,
                        };
                        match e.reserve(r).await.unwrap() {
                            ReserveOutcome::Held(h) => vec![("held", h.hold_id, h.user_id)],
                            ReserveOutcome::Rejected(_) => vec![],
                        }
                    }
                    Op::Release { pick: p, .. } => {
                        let (id, user) = pick(p);
                        match e.release(&id, &user, now).await {
                            Ok(h) => vec![("released", h.hold_id, h.user_id)],
                            Err(_) => vec![],
                        }
                    }
                    Op::Pay { pick: p } => {
                        let (id, _) = pick(p);
                        match e.confirm_paid(&id, now).await {
                            Ok(h) => vec![("paid", h.hold_id, h.user_id)],
                            Err(_) => vec![],
                        }
                    }
                    Op::Expire { max } => e
                        .expire_due(now, max)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|h| ("expired", h.hold_id, h.user_id))
                        .collect(),
                    Op::Advance { .. } | Op::End => vec![],
                }
            }
        });
        for events in join_all(calls).await {
            for (what, id, user) in events {
                match what {
                    "held" => {
                        if !known.iter().any(|(k, _)| *k == id) {
                            known.push((id, user));
                        }
                    }
                    "paid" if ended_by.get(&id) == Some(&"paid") => {}
                    _ => {
                        // A hold ends once: paid, released or expired.
                        let prev = ended_by.insert(id.clone(), what);
                        assert!(
                            prev.is_none(),
                            "hold {id} ended twice: {prev:?} then {what}"
                        );
                    }
                }
            }
        }
        now += chunk
            .iter()
            .map(|op| if let Op::Advance { ms } = op { *ms } else { 0 })
            .sum::<i64>();
        let counts = e.counts(&spec.sale_id).await.unwrap();
        assert!(counts.is_consistent(), "{counts:?}");
        let holds = all_holds(&*e, &spec.sale_id).await;
        let mut per_user: HashMap<&str, u64> = HashMap::new();
        let (mut held, mut sold) = (0, 0);
        let mut positions = HashSet::new();
        for h in &holds {
            assert!(positions.insert(h.position));
            let q = u64::from(h.quantity);
            match h.status {
                HoldStatus::Held => held += q,
                HoldStatus::Paid => sold += q,
                _ => continue,
            }
            *per_user.entry(&h.user_id).or_default() += q;
        }
        assert_eq!((counts.held, counts.sold), (held, sold));
        assert!(per_user.values().all(|&u| u <= 3));
        assert_eq!(positions.len(), holds.len());
        assert!(
            holds
                .iter()
                .enumerate()
                .all(|(i, h)| h.position == i as u64 + 1)
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn memory_engine_agrees_with_the_model(
        stock in 1..12u64,
        limit in 1..5u32,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        runtime().block_on(run_against_model(Arc::new(MemoryEngine::new()), stock, limit, ops));
    }

    #[test]
    fn redis_engine_agrees_with_the_model(
        stock in 1..12u64,
        limit in 1..5u32,
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        if let Some(url) = redis_url() {
            let _ = url;
            runtime().block_on(async {
                let e = redis_engine().unwrap();
                run_against_model(e, stock, limit, ops).await;
            });
        }
    }

    #[test]
    fn memory_engine_keeps_invariants_under_interleavings(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        runtime().block_on(run_concurrently(Arc::new(MemoryEngine::new()), ops));
    }

    #[test]
    fn redis_engine_keeps_invariants_under_interleavings(
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        if redis_url().is_some() {
            runtime().block_on(async {
                run_concurrently(redis_engine().unwrap(), ops).await;
            });
        }
    }
}
